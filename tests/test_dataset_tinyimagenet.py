"""--dataset tinyimagenet: a small folder in exactly the official Tiny-ImageNet-200 layout, written
with Pillow, read from disk and downloaded (a zip served on 127.0.0.1), and both training scripts
end to end on it."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch

import dataset
from dataset import DataError, DeviceLoader, build_loaders, get_spec
from dataset.decode import decode
from dataset.tinyimagenet import TINY_MD5, TINY_MEAN, TINY_STD, TINY_URL
from dataset.transforms import fit_square
from image_files import picture, write_image
from local_server import ArchiveServer

pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

WNIDS = ("n03000134", "n01443537", "n02085620")         # wnids.txt order is not the class order


def make_tiny(parent: Path, wnids=WNIDS, train_per_class=3, val_per_class=2, size=64) -> Path:
    """``parent/tiny-imagenet-200`` in the official layout; returns that folder."""
    root = parent / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    for c, w in enumerate(wnids):
        boxes = []
        for i in range(train_per_class):
            name = f"{w}_{i}.JPEG"
            write_image(root / "train" / w / "images" / name, picture(size, size, seed=10 * c + i))
            boxes.append(f"{name}\t0\t0\t{size - 1}\t{size - 1}\n")
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines, k = [], 0
    for i in range(val_per_class):
        for c, w in enumerate(wnids):
            name = f"val_{k}.JPEG"
            write_image(root / "val" / "images" / name, picture(size, size, seed=500 + k))
            lines.append(f"{name}\t{w}\t1\t2\t{size - 3}\t{size - 4}\n")
            k += 1
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    write_image(root / "test" / "images" / "test_0.JPEG", picture(size, size, seed=999))
    return root


def build(folder, **kw):
    args = dict(data_folder=str(folder), batch_size=4, device="cpu", seed=0, num_workers=0, download=False)
    args.update(kw)
    return build_loaders("tinyimagenet", **args)


def test_reads_the_official_layout(tmp_path):
    root = make_tiny(tmp_path)
    data = dataset.DATASETS["tinyimagenet"].build(dataset.make_options(data_folder=str(tmp_path), download=False))
    assert data.class_names == tuple(sorted(WNIDS))                   # class index = sorted wnids
    s = data.spec
    assert (s.name, s.num_classes, s.image_size, s.num_train, s.num_test) == ("tinyimagenet", 3, 64, 9, 6)
    assert (s.mean, s.std) == (TINY_MEAN, TINY_STD)
    assert data.train_images.shape == (9, 3, 64, 64) and data.train_images.dtype == torch.uint8
    order = sorted(WNIDS)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    first = root / "train" / order[0] / "images" / f"{order[0]}_0.JPEG"
    assert torch.equal(data.train_images[0], decode(first))           # 64 x 64: stored as decoded
    # val: sorted file names (val_0, val_1, ... val_5), labels from val_annotations.txt
    assert data.test_labels.tolist() == [order.index(WNIDS[k % 3]) for k in range(6)]
    assert torch.equal(data.test_images[4], decode(root / "val" / "images" / "val_4.JPEG"))
    assert "held on the training device as uint8" in data.note and "4-pixel padded random crop + flip" in data.note
    assert get_spec("tinyimagenet", data_folder=str(tmp_path)) == s   # the listing alone, nothing decoded


def test_loaders_and_the_folder_itself_as_data_folder(tmp_path):
    root = make_tiny(tmp_path)
    loaders = build(root, with_index=True)                           # --data_folder .../tiny-imagenet-200
    assert isinstance(loaders.train, DeviceLoader) and loaders.spec.num_classes == 3
    x, y, idx = next(iter(loaders.train))
    assert x.shape == (4, 3, 64, 64) and torch.equal(y, loaders.train.labels[idx])
    assert sum(len(b[1]) for b in loaders.test) == 6


def test_img_size_resizes_once_at_load(tmp_path):
    root = make_tiny(tmp_path)
    data = dataset.DATASETS["tinyimagenet"].build(dataset.make_options(data_folder=str(root), img_size=32))
    assert data.spec.image_size == 32 and data.train_images.shape == (9, 3, 32, 32)
    order = sorted(WNIDS)
    img = decode(root / "train" / order[1] / "images" / f"{order[1]}_2.JPEG")
    assert torch.equal(data.train_images[5], fit_square(img, 32))


def test_official_spec_without_the_folder(tmp_path):
    spec = get_spec("tinyimagenet", data_folder=str(tmp_path / "none"))
    assert (spec.num_classes, spec.num_train, spec.num_test, spec.image_size) == (200, 100000, 10000, 64)


@pytest.mark.parametrize("defect, pattern", [
    ("extra_folder", r"train must hold one folder per wnid of .*wnids\.txt; folders not in wnids\.txt: n09"),
    ("missing_folder", r"wnids without a folder: n01443537"),
    ("unknown_wnid", r"val_annotations\.txt line 2: an unknown wnid 'n77'"),
    ("unannotated", r"val/images/val_9\.JPEG has no line in .*val_annotations\.txt"),
    ("annotated_missing", r"val_annotations\.txt annotates val_0\.JPEG, which is not in"),
    ("empty_class", r"train/n02085620/images has no images"),
    ("non_image", r"train/n01443537/images/notes\.txt is not an image file"),
    ("twice", r"wnids\.txt lists n01443537 more than once"),
])
def test_layout_errors_are_one_line(tmp_path, defect, pattern):
    root = make_tiny(tmp_path)
    if defect == "extra_folder":
        (root / "train" / "n09").mkdir()
    elif defect == "missing_folder":
        import shutil
        shutil.rmtree(root / "train" / "n01443537")
    elif defect == "unknown_wnid":
        lines = (root / "val" / "val_annotations.txt").read_text().splitlines(True)
        lines[1] = lines[1].replace(WNIDS[1], "n77")
        (root / "val" / "val_annotations.txt").write_text("".join(lines))
    elif defect == "unannotated":
        write_image(root / "val" / "images" / "val_9.JPEG", picture(64, 64))
    elif defect == "annotated_missing":
        (root / "val" / "images" / "val_0.JPEG").unlink()
    elif defect == "empty_class":
        for f in (root / "train" / "n02085620" / "images").iterdir():
            f.unlink()
    elif defect == "non_image":
        (root / "train" / "n01443537" / "images" / "notes.txt").write_text("x")
    elif defect == "twice":
        (root / "wnids.txt").write_text("\n".join(WNIDS + (WNIDS[1],)))
    with pytest.raises(DataError, match=pattern) as e:
        build(tmp_path)
    assert "\n" not in str(e.value)


def test_a_corrupt_image_is_named_before_training(tmp_path):
    root = make_tiny(tmp_path)
    victim = root / "val" / "images" / "val_3.JPEG"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot read image .*val_3\.JPEG"):
        build(tmp_path)


# -- download ------------------------------------------------------------------------------------
def zip_folder(src_parent: Path, archive: Path) -> str:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((src_parent / "tiny-imagenet-200").rglob("*")):
            zf.write(path, path.relative_to(src_parent).as_posix())
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def tiny_server(tmp_path):
    make_tiny(tmp_path / "src")
    archive = tmp_path / "tiny-imagenet-200.zip"
    md5 = zip_folder(tmp_path / "src", archive)
    server = ArchiveServer(archive.read_bytes(), "tiny-imagenet-200.zip")
    server.url = server.url.rsplit("/", 1)[0] + "/tiny-imagenet-200.zip"
    server.md5 = md5
    yield server
    server.close()


def test_the_official_archive_and_checksum():
    assert TINY_URL == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert TINY_MD5 == "90528d7ca1a48142e341f4ef8d21d0de"


def test_download_over_http_extracts_once(tmp_path, tiny_server, capsys):
    data_dir = tmp_path / "data"
    loaders = build(data_dir, url=tiny_server.url, md5=tiny_server.md5, download=True)
    assert tiny_server.hits == 1 and loaders.spec.num_classes == 3 and loaders.train.num_samples == 9
    assert sorted(os.listdir(data_dir)) == ["tiny-imagenet-200"]       # no archive or temporary left
    assert (data_dir / "tiny-imagenet-200" / "train" / WNIDS[0] / f"{WNIDS[0]}_boxes.txt").is_file()
    assert "md5 " + tiny_server.md5 + " verified" in capsys.readouterr().err
    build(data_dir, url=tiny_server.url, md5=tiny_server.md5, download=True)
    assert tiny_server.hits == 1                                     # read as it is the second time


def test_failed_downloads_leave_the_data_folder_as_it_was(tmp_path, tiny_server):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError, match=r"checksum mismatch .*expected md5 0{32}"):
        build(data_dir, url=tiny_server.url, md5="0" * 32, download=True)
    assert os.listdir(data_dir) == []
    tiny_server.mode = "truncate"
    with pytest.raises(DataError, match=r"network failure .*127\.0\.0\.1"):
        build(data_dir, url=tiny_server.url, md5=tiny_server.md5, download=True)
    assert os.listdir(data_dir) == []


def test_no_download_reads_only_what_is_there(tmp_path):
    with pytest.raises(DataError, match=r"Tiny-ImageNet not found: .*tiny-imagenet-200 does not exist and downloading "
                                        r"is disabled \(--no-download\)") as e:
        build(tmp_path / "empty")
    assert "\n" not in str(e.value) and not (tmp_path / "empty").exists()


# -- the training scripts, end to end --------------------------------------------------------------
@pytest.mark.slow
def test_train_teacher_and_student_on_tiny_imagenet(tmp_path):
    import train_student
    import train_teacher
    make_tiny(tmp_path / "data", train_per_class=4, val_per_class=2, size=64)
    save = str(tmp_path / "save")
    common = ["--dataset", "tinyimagenet", "--data_folder", str(tmp_path / "data"), "--no-download",
              "--epochs", "1", "--batch_size", "6", "--num_workers", "0", "--save_dir", save, "--quiet"]
    assert train_teacher.main(common + ["--model", "resnet8"]) == 0
    teachers = os.listdir(os.path.join(save, "teachers"))
    assert len(teachers) == 1 and teachers[0].startswith("resnet8_tinyimagenet_lr_0.05_decay_0.0005_trial_0")
    ckpt = torch.load(os.path.join(save, "teachers", teachers[0], "resnet8_last.pth"), map_location="cpu",
                      weights_only=True)
    assert ckpt["dataset"] == "tinyimagenet" and ckpt["model"]["fc.weight"].shape[0] == 3
    assert train_student.main(common + ["--model_s", "resnet8", "--teacher_num", "1", "--distill", "kd"]) == 0
    students = os.listdir(os.path.join(save, "students"))
    assert len(students) == 1 and students[0].startswith("S~resnet8_tinyimagenet_kd_")
