"""helper/manifest.py (and setting.py, which reads it): bad entries are one line and never break
``import setting``; a full disk keeps the manifest; a name belongs to one run folder (another
folder's teacher under that name is refused before it trains; --tag gives it its own name); and a
finished teacher that trains on is out of the manifest until it finishes, then recorded with its
true epochs."""
import errno
import json
import os
import subprocess
import sys

import pytest

import setting
import train_teacher
from helper.manifest import ManifestError, add_teacher, manifest_path, read_manifest, remove_teacher
from helper.task import ClassifierTask

from builders import SESSION_TEACHER, copy_session_teacher, session_teacher_folder
from conftest import Interrupt, dies_at_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("entry, needle", [
    ({"model": "resnet8", "dataset": "digits"}, "has no 'path'"),
    ({"path": None, "model": "resnet8", "dataset": "digits"}, "has 'path' None"),
    ({"path": 7, "model": "resnet8", "dataset": "digits"}, "has 'path' 7"),
    ("just a string", "is a str"),
])
def test_bad_manifest_entries_are_one_line_and_import_setting_still_works(tmp_path, entry, needle):
    with open(manifest_path(str(tmp_path)), "w") as f:
        json.dump({"teachers": {"digits-resnet8-0": entry}}, f)
    with pytest.raises(ManifestError, match=needle) as e:
        setting.available_teachers(str(tmp_path))
    assert "digits-resnet8-0" in str(e.value) and "\n" not in str(e.value)
    out = subprocess.run([sys.executable, "-c", "import setting; print(setting.teacher_model_path_dict)"],
                         cwd=ROOT, env=dict(os.environ, MTKD_SAVE_DIR=str(tmp_path)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "{}"
    assert "digits-resnet8-0" in out.stderr and "Traceback" not in out.stderr


def test_manual_teacher_without_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(setting, "MANUAL_TEACHERS", {"cifar100-resnet32x4-0": {"model": "resnet32x4"}})
    with pytest.raises(ManifestError, match=r"setting.py MANUAL_TEACHERS: entry 'cifar100-resnet32x4-0' has no 'path'"):
        setting.available_teachers(str(tmp_path))


def test_corrupt_manifest_stops_train_teacher_before_training(tmp_path, capsys):
    with open(manifest_path(str(tmp_path)), "w") as f:
        f.write('{"teachers": {"x": ')
    code = train_teacher.main(["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--trials", "2",
                               "--save_dir", str(tmp_path)])
    err = one_line_error(capsys)
    assert code == 2 and "manifest.json" in err and "before training" in err
    assert not (tmp_path / "teachers").exists()


def test_full_disk_while_writing_the_manifest_leaves_it_intact_and_no_temporary(tmp_path, monkeypatch):
    path = manifest_path(str(tmp_path))
    add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=str(tmp_path / "a.pth"), best_acc=1.0)
    before = open(path).read()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        add_teacher(path, model="resnet8", dataset="digits", trial=1, checkpoint=str(tmp_path / "b.pth"), best_acc=2.0)
    assert e.value.filename == path and e.value.errno == errno.ENOSPC      # named: the manifest, not a temporary
    assert open(path).read() == before
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "manifest.json.lock"]


def test_a_name_is_replaced_only_by_its_own_folders_teacher(tmp_path):
    path = manifest_path(str(tmp_path))
    first, second = (str(tmp_path / "teachers" / n / "resnet8_best.pth") for n in ("first", "second"))
    assert add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=first, best_acc=1.0) == \
        "digits-resnet8-0"
    add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=first, best_acc=2.0)   # resumed: ok
    with pytest.raises(ManifestError, match=r"entry 'digits-resnet8-0' already names the teacher in \S+first; "
                                            r"the teacher of \S+second would replace it") as e:
        add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=second, best_acc=3.0)
    assert "\n" not in str(e.value) and read_manifest(path)["digits-resnet8-0"]["best_acc"] == 2.0
    assert add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=second, best_acc=3.0,
                       tag="s5") == "digits-resnet8-0-s5"
    assert not remove_teacher(path, "digits-resnet8-0", os.path.dirname(second))      # not that folder's
    assert remove_teacher(path, "digits-resnet8-0", os.path.dirname(first))
    assert sorted(read_manifest(path)) == ["digits-resnet8-0-s5"]


def test_another_seed_under_a_recorded_name_is_refused_before_training_and_tag_keeps_both(
        digits_teachers, tmp_path, capsys):
    """Trial 0 is recorded; trial 0 with --seed 5 would take its name: refused before anything is
    created, naming --tag; with --tag it trains and is recorded beside it."""
    save = str(tmp_path / "save")
    folder = copy_session_teacher(digits_teachers, save)
    add_teacher(manifest_path(save), model="resnet8", dataset="digits", trial="0",
                checkpoint=os.path.join(folder, "resnet8_best.pth"), best_acc=90.0)
    argv = ["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--batch_size", "256", "--quiet",
            "--seed", "5", "--save_dir", save]
    assert train_teacher.main(argv) == 2
    err = one_line_error(capsys)
    assert "entry 'digits-resnet8-0' already names the teacher in" in err and "--tag NAME" in err
    assert os.listdir(os.path.join(save, "teachers")) == [os.path.basename(folder)]     # nothing created
    assert train_teacher.main(argv + ["--tag", "s5"]) == 0
    teachers = read_manifest(manifest_path(save))
    assert sorted(teachers) == ["digits-resnet8-0", "digits-resnet8-0-s5"]
    assert teachers["digits-resnet8-0-s5"]["path"].split(os.sep)[1].endswith("_trial_0_batch_size~256_seed~5_s5")
    assert teachers["digits-resnet8-0-s5"]["tag"] == "s5" and teachers["digits-resnet8-0"]["best_acc"] == 90.0


def test_a_teacher_trained_on_is_out_of_the_manifest_until_it_finishes(digits_teachers, tmp_path):
    save = str(tmp_path / "save")
    folder = copy_session_teacher(digits_teachers, save)
    assert train_teacher.main([*SESSION_TEACHER, "--save_dir", save, "--resume"]) == 0    # finished: recorded
    (name,) = read_manifest(manifest_path(save))
    assert read_manifest(manifest_path(save))[name]["last_epoch"] == 8
    argv = [*SESSION_TEACHER, "--save_dir", save, "--resume", "--epochs", "9"]
    with dies_at_step(ClassifierTask, epoch=9, step=3), pytest.raises(Interrupt):
        train_teacher.main(argv)                                     # killed while training epoch 9
    assert read_manifest(manifest_path(save)) == {}                  # its figures would be those of 8 epochs
    assert not os.path.exists(os.path.join(folder, "summary.json"))
    assert train_teacher.main(argv) == 0
    entry = read_manifest(manifest_path(save))[name]
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    assert entry["epochs"] == entry["last_epoch"] == summary["last_epoch"] == 9
    assert entry["last_acc"] == summary["last_acc"] and entry["best_epoch"] == summary["best_epoch"]
    assert os.path.basename(folder) == session_teacher_folder()
