"""``scripts/fetch_teachers.py mdistiller``: published teachers in one command (issue 27 item 4).

The official archive cannot be downloaded here; the tests build small tars in its layout
(``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``, RepDistiller-format checkpoints of tiny
100-class resnet8/resnet14, with a numpy accuracy and argparse options inside as RepDistiller-era
files have) and serve them from an http.server on 127.0.0.1 through ``--url``."""
import argparse
import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from local_server import ArchiveServer
from models import model_dict
from models.checkpoint import CheckpointError, load_model, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_teachers.py"
MEMBER = "cifar_teachers/{}_vanilla/ckpt_epoch_240.pth"


def load_script():
    spec = importlib.util.spec_from_file_location("fetch_teachers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)          # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


fetch_teachers = load_script()


def checkpoint_bytes(arch="resnet8", num_classes=100, seed=0, legacy=False):
    torch.manual_seed(seed)
    model = model_dict[arch](num_classes=num_classes)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": np.float64(71.25),
                "opt": argparse.Namespace(model=arch, learning_rate=np.float32(0.05))}, buf,
               _use_new_zipfile_serialization=not legacy)
    return buf.getvalue(), model.state_dict()


def make_tar(members):
    """A tar from ``[(name, bytes | ("dir",) | ("symlink", target))]``, in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data == ("dir",):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple) and data[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def teacher_files():
    return {arch: checkpoint_bytes(arch, seed=i) for i, arch in enumerate(("resnet8", "resnet14"))}


@pytest.fixture
def good_tar(teacher_files):
    return make_tar([("cifar_teachers", ("dir",))] +
                    [(MEMBER.format(arch), data) for arch, (data, _) in teacher_files.items()])


@pytest.fixture
def server():
    s = ArchiveServer(name="cifar_teachers.tar")
    yield s
    s.close()


def listing(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run(capsys, *argv):
    code = fetch_teachers.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def the_error(err: str) -> str:
    """The one error line; any other line is the downloader's progress ("mdistiller teachers: ...")."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("fetch_teachers.py: error: "), err
    assert all(line.startswith("mdistiller teachers: ") for line in lines[:-1]), err
    return lines[-1]


# ------------------------------------------------------------------------------- the happy path
def test_downloads_checks_extracts_and_records_in_mdistillers_layout(tmp_path, monkeypatch, server, good_tar,
                                                                   teacher_files, capsys):
    monkeypatch.chdir(tmp_path)                   # defaults: ./download_ckpts and ./save
    server.payload = good_tar
    code, out, err = run(capsys, "mdistiller", "--url", server.url)
    assert code == 0, err
    assert listing(tmp_path / "download_ckpts") == [
        "cifar_teachers", "cifar_teachers/resnet14_vanilla", "cifar_teachers/resnet14_vanilla/ckpt_epoch_240.pth",
        "cifar_teachers/resnet8_vanilla", "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth"]
    assert "no checksum on record" in err and "--teachers cifar100-resnet14-vanilla" in err
    manifest = json.loads((tmp_path / "save" / "manifest.json").read_text())["teachers"]
    assert sorted(manifest) == ["cifar100-resnet14-vanilla", "cifar100-resnet8-vanilla"]
    entry = manifest["cifar100-resnet8-vanilla"]
    assert (entry["model"], entry["dataset"], entry["trial"], entry["num_classes"], entry["best_acc"]) == \
        ("resnet8", "cifar100", "vanilla", 100, 71.25)
    assert entry["origin"] == "mdistiller" and entry["url"] == server.url

    # train_student.py --teachers NAME finds it through setting.py; --path_t PATH by its folder name
    import setting
    path = setting.checked_teacher_path("cifar100-resnet8-vanilla", "save")
    assert Path(path) == (tmp_path / "download_ckpts" / MEMBER.format("resnet8")).resolve()
    assert setting.teacher_model_name("cifar100", "save") == ["cifar100-resnet14-vanilla", "cifar100-resnet8-vanilla"]
    for arch, (_, state) in teacher_files.items():
        model = load_model(f"download_ckpts/{MEMBER.format(arch)}")         # architecture from the folder
        assert model.arch == arch
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), key

    # again: the folder is there, nothing is downloaded, the teachers are recorded again
    hits = server.hits
    code, out, err = run(capsys, "mdistiller", "--url", server.url, "--save_dir", "elsewhere")
    assert code == 0 and server.hits == hits and "already there" in err
    assert sorted(json.loads((tmp_path / "elsewhere" / "manifest.json").read_text())["teachers"]) == sorted(manifest)


def test_dest_and_save_dir_flags_and_an_archive_already_in_dest(tmp_path, server, good_tar, capsys):
    dest = tmp_path / "ckpts"
    dest.mkdir()
    (dest / "cifar_teachers.tar").write_bytes(good_tar)          # downloaded by hand, as mdistiller's README says
    code, _, err = run(capsys, "mdistiller", "--url", server.url, "--dest", str(dest), "--save_dir", str(tmp_path / "s"))
    assert code == 0, err
    assert server.hits == 0 and (dest / MEMBER.format("resnet14")).is_file()
    entry = json.loads((tmp_path / "s" / "manifest.json").read_text())["teachers"]["cifar100-resnet14-vanilla"]
    assert (tmp_path / "s" / entry["path"]).resolve() == (dest / MEMBER.format("resnet14")).resolve()


@pytest.mark.slow
def test_train_student_distils_from_a_fetched_teacher(tmp_path, monkeypatch, server, good_tar, capsys):
    import train_student
    monkeypatch.chdir(tmp_path)
    server.payload = good_tar
    assert run(capsys, "mdistiller", "--url", server.url)[0] == 0
    code = train_student.main(["--dataset", "synthetic", "--synthetic_classes", "100", "--synthetic_train", "100",
                               "--synthetic_test", "50", "--teachers", "cifar100-resnet8-vanilla", "--model_s",
                               "resnet8", "--epochs", "1", "--batch_size", "50", "--device", "cpu", "--quiet"])
    assert code == 0
    assert len(os.listdir(tmp_path / "save" / "students")) == 1


# ------------------------------------------------------------------- what must leave nothing behind
@pytest.mark.parametrize("mode, needle", [("truncate", "network failure"), ("missing", "HTTP 404")])
def test_failed_downloads_leave_nothing(tmp_path, server, good_tar, mode, needle, capsys):
    server.payload, server.mode = good_tar, mode
    code, _, err = run(capsys, "mdistiller", "--url", server.url, "--dest", str(tmp_path / "d"),
                       "--save_dir", str(tmp_path / "s"))
    assert code == 1 and needle in the_error(err) and "127.0.0.1" in the_error(err), err
    assert listing(tmp_path) == []


def bad_archives(teacher_files):
    good = teacher_files["resnet8"][0]
    ten_classes = checkpoint_bytes("resnet8", num_classes=10)[0]
    return {
        "not a tar": (b"<html>this is not an archive</html>" * 50, "cannot extract"),
        "parent escape": (make_tar([(MEMBER.format("resnet8"), good), ("cifar_teachers/../../evil.pth", good)]),
                          "unsafe member"),
        "absolute path": (make_tar([(MEMBER.format("resnet8"), good), ("/tmp/evil_zoo_teacher.pth", good)]),
                          "unsafe member"),
        "link": (make_tar([(MEMBER.format("resnet8"), good),
                           ("cifar_teachers/resnet14_vanilla/ckpt_epoch_240.pth", ("symlink", "/etc/passwd"))]),
                 "unsafe member"),
        "other folder": (make_tar([("teachers/resnet8_vanilla/ckpt_epoch_240.pth", good)]), "has no cifar_teachers/"),
        "stray file": (make_tar([(MEMBER.format("resnet8"), good), ("cifar_teachers/README.txt", b"hi")]),
                       "unexpected file cifar_teachers/README.txt"),
        "unknown arch": (make_tar([("cifar_teachers/resnet9000_vanilla/ckpt_epoch_240.pth", good)]),
                         "'resnet9000' is not a model of the zoo"),
        "wrong arch": (make_tar([(MEMBER.format("resnet14"), good)]), "does not fit architecture 'resnet14'"),
        "ten classes": (make_tar([(MEMBER.format("resnet8"), ten_classes)]), "has 10 classes, expected 100"),
        "garbage": (make_tar([(MEMBER.format("resnet8"), b"\x80\x02garbage" * 10)]),
                    "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth is"),
        "empty": (make_tar([("cifar_teachers", ("dir",))]), "no teacher checkpoints"),
    }


@pytest.mark.parametrize("case", ["not a tar", "parent escape", "absolute path", "link", "other folder", "stray file",
                                  "unknown arch", "wrong arch", "ten classes", "garbage", "empty"])
def test_bad_archives_are_one_line_and_write_nothing(tmp_path, server, teacher_files, case, capsys):
    payload, needle = bad_archives(teacher_files)[case]
    server.payload = payload
    work = tmp_path / "work"
    work.mkdir()
    code, _, err = run(capsys, "mdistiller", "--url", server.url, "--dest", str(work / "d"),
                       "--save_dir", str(work / "s"))
    assert code == 1 and needle in the_error(err) and server.url in the_error(err), err
    assert listing(tmp_path) == ["work"]
    assert not Path("/tmp/evil_zoo_teacher.pth").exists()


def test_a_damaged_folder_in_place_is_refused_not_overwritten(tmp_path, server, good_tar, capsys):
    dest = tmp_path / "d"
    (dest / "cifar_teachers" / "resnet8_vanilla").mkdir(parents=True)
    (dest / MEMBER.format("resnet8")).write_bytes(b"half a file")
    code, _, err = run(capsys, "mdistiller", "--url", server.url, "--dest", str(dest), "--save_dir", str(tmp_path / "s"))
    assert code == 1 and "delete it to download again" in the_error(err), err
    assert server.hits == 0 and not (tmp_path / "s").exists()
    assert (dest / MEMBER.format("resnet8")).read_bytes() == b"half a file"


# --------------------------------------------------------------------------------- bad command lines
def test_an_unknown_source_is_a_one_line_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        fetch_teachers.main(["torchvision"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "invalid choice: 'torchvision'" in err, err


@pytest.mark.parametrize("flag", ["--dest", "--save_dir"])
def test_unwritable_folders_name_their_flag(tmp_path, server, good_tar, flag, capsys):
    server.payload = good_tar
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    folders = {"--dest": str(tmp_path / "d"), "--save_dir": str(tmp_path / "s"), flag: str(blocker / "sub")}
    code, _, err = run(capsys, "mdistiller", "--url", server.url, *[x for kv in folders.items() for x in kv])
    assert code == 1 and f"{flag} {blocker / 'sub'}" in the_error(err), err
    assert server.hits == 0 and listing(tmp_path) == ["a_file"]
    with pytest.raises(SystemExit) as exc:                    # an existing file as the folder itself
        fetch_teachers.main(["mdistiller", flag, str(blocker)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"argument {flag}" in err and "is a file" in err, err


def test_the_official_source_and_its_missing_checksum_are_stated():
    source = fetch_teachers.SOURCES["mdistiller"]
    assert source.url == "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
    assert fetch_teachers.ARCHIVE_MD5 is None and source.md5 is None
    assert source.member("resnet32x4") == "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
    assert fetch_teachers.build_parser().parse_args(["mdistiller"]).save_dir == "./save"


# ----------------------------------------------- RepDistiller-era checkpoints: numpy scalars inside
@pytest.mark.parametrize("numpy1", [False, True])
def test_checkpoints_with_numpy_scalars_load_weights_only(tmp_path, numpy1):
    """Such files store ``accuracy`` as a numpy float (and options with numpy values); written by
    numpy 1 they name ``numpy.core.multiarray.scalar``, by numpy 2 ``numpy._core...``."""
    data, state = checkpoint_bytes("resnet8", legacy=True)
    if numpy1:
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\nscalar" in data
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    path.write_bytes(data)
    sd, meta = read_state_dict(path)
    assert meta["accuracy"] == 71.25 and meta["epoch"] == 240
    assert load_model(path).arch == "resnet8" and all(torch.equal(sd[k], v) for k, v in state.items())


def test_a_booby_trapped_checkpoint_is_still_refused(tmp_path):
    class Trap:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)
    path = tmp_path / "resnet8_best.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict(), "x": Trap()}, path)
    with pytest.raises(CheckpointError, match="weights-only load refuses"):
        read_state_dict(path)
    assert not (tmp_path / "ran").exists()
