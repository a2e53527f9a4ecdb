"""--dataset imagefolder: your own class folders of real PNG/JPEG files; the device-resident path
for small images, the streaming path for large ones, the image-size rule, the one-line errors."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import dataset
from dataset import DataError, DeviceLoader, add_data_arguments, build_loaders, get_spec, loaders_from_args
from dataset import imagefolder as imf
from dataset.decode import decode
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dataset.streaming import StreamingLoader
from dataset.transforms import fit_square
from image_files import class_folders, constant, picture, write_image

pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTS = {"cat": (5, 2), "dog": (4, 2), "emu": (3, 1)}


def build(root, **kw):
    args = dict(data_folder=str(root), batch_size=4, device="cpu", seed=0, num_workers=0)
    args.update(kw)
    return build_loaders("imagefolder", **args)


# -- the rules, hand-computed ----------------------------------------------------------------------
def test_probe_positions_spread_evenly():
    assert imf.probe_positions(10, 4) == [0, 2, 5, 7]
    assert imf.probe_positions(3, 64) == [0, 1, 2]
    assert imf.probe_positions(1000, 64)[:3] == [0, 15, 31] and len(imf.probe_positions(1000, 64)) == 64


def test_default_size_is_the_most_common_shorter_side_capped_at_224():
    assert imf.default_img_size([(32, 32)] * 3 + [(64, 48)]) == 32
    assert imf.default_img_size([(40, 30), (30, 50), (64, 64)]) == 30          # shorter sides 30, 30, 64
    assert imf.default_img_size([(64, 64), (32, 32)]) == 32                     # a tie: the smaller
    assert imf.default_img_size([(500, 375)] * 5) == 224


def test_resident_threshold():
    assert imf.is_resident(50_000, 64)                              # 0.6 GB
    assert imf.is_resident(110_000, 64)                             # Tiny-ImageNet's 1.35 GB
    assert not imf.is_resident(200_000, 64)                         # 2.46 GB > 2 GiB
    assert not imf.is_resident(100, 160)                            # too large an image
    assert imf.decoded_bytes(10, 32) == 10 * 3 * 32 * 32


def test_pixel_stats_hand_computed():
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[0, 0] = 255                                                   # channel 0: half 255, half 0
    x[:, 1] = 51                                                    # channel 1: constant 0.2
    x[1, 2] = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8)  # channel 2: a quarter at 255
    mean, std = imf.pixel_stats(x, chunk=1)
    assert mean == (0.5, 0.2, 0.25)
    assert std == (0.5, 1.0, 0.433)                                 # constant channel: std 1; sqrt(3)/4


# -- the device-resident path ----------------------------------------------------------------------
def test_small_folder_is_decoded_once_and_held_on_the_device(tmp_path):
    class_folders(tmp_path, COUNTS, size=(20, 24), marked=False)     # 20 x 24 PNGs: shorter side 20
    loaders = build(tmp_path, with_index=True)
    train, test = loaders.train, loaders.test
    assert isinstance(train, DeviceLoader) and isinstance(test, DeviceLoader)
    spec = loaders.spec
    assert (spec.name, spec.num_classes, spec.image_size, spec.num_train, spec.num_test) == \
        ("imagefolder", 3, 20, 12, 5)
    assert "decoded once and held on the training device as uint8" in loaders.note
    assert "20 px: the most common shorter side of 12 sampled images" in loaders.note
    assert "\n" not in loaders.note
    # the stored images: each file centre-cropped to 20 x 20 (Resize(20) leaves a 20 x 24 image as it is)
    data = dataset.DATASETS["imagefolder"].build(dataset.make_options(data_folder=str(tmp_path)))
    files = sorted((tmp_path / "train").glob("*/*.png"))
    assert [p.parent.name for p in files] == ["cat"] * 5 + ["dog"] * 4 + ["emu"] * 3
    for i, path in enumerate(files):
        assert torch.equal(data.train_images[i], decode(path)[:, :, 2:22])
    assert data.train_labels.tolist() == [0] * 5 + [1] * 4 + [2] * 3
    assert data.class_names == ("cat", "dog", "emu")
    # mean/std of the training images, independently
    pixels = np.stack([decode(p)[:, :, 2:22].numpy() for p in files]).astype(np.float64) / 255
    assert np.allclose(spec.mean, pixels.mean(axis=(0, 2, 3)), atol=6e-5)
    assert np.allclose(spec.std, pixels.std(axis=(0, 2, 3)), atol=6e-5)
    assert spec == get_spec("imagefolder", data_folder=str(tmp_path))
    # batches: 4-pixel padded crop + flip at 20 px, normalised with those statistics
    x, y, idx = next(iter(train))
    assert x.shape == (4, 3, 20, 20) and torch.equal(y, train.labels[idx])
    xs, ys = zip(*[(b[0], b[1]) for b in test])
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2]
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.equal(torch.round((torch.cat(xs) * std + mean) * 255).to(torch.uint8), data.test_images)


def test_mixed_sizes_are_resized_to_the_chosen_size(tmp_path):
    for i, (h, w) in enumerate([(32, 32), (32, 32), (40, 60), (32, 32)]):
        write_image(tmp_path / "train" / "a" / f"{i}.png", picture(h, w, seed=i))
    write_image(tmp_path / "val" / "a" / "v.JPEG", picture(64, 48))
    data = dataset.DATASETS["imagefolder"].build(dataset.make_options(data_folder=str(tmp_path)))
    assert data.spec.image_size == 32 and data.train_images.shape == (4, 3, 32, 32)
    assert torch.equal(data.train_images[2], fit_square(decode(tmp_path / "train" / "a" / "2.png"), 32))
    assert torch.equal(data.test_images[0], fit_square(decode(tmp_path / "val" / "a" / "v.JPEG"), 32))
    sized = dataset.DATASETS["imagefolder"].build(dataset.make_options(data_folder=str(tmp_path), img_size=16))
    assert sized.train_images.shape == (4, 3, 16, 16) and "--img_size 16" in sized.note


def test_val_split_holds_images_out_of_train(tmp_path):
    class_folders(tmp_path, COUNTS, marked=False)
    loaders = build(tmp_path, val_split=1)
    assert (loaders.train.num_samples, loaders.val.num_samples) == (9, 3)
    assert not set(loaders.train.source_indices.tolist()) & set(loaders.val.source_indices.tolist())


def test_flags_reach_the_folder(tmp_path):
    class_folders(tmp_path, COUNTS, marked=False)
    parser = add_data_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "imagefolder", "--data_folder", str(tmp_path), "--img_size", "12",
                              "--num_workers", "2"])
    loaders = loaders_from_args(args, batch_size=5, device="cpu", seed=1)
    assert loaders.spec.image_size == 12 and next(iter(loaders.train))[0].shape == (5, 3, 12, 12)


# -- the streaming path ----------------------------------------------------------------------------
def test_large_images_stream_with_imagenet_views_and_statistics(tmp_path):
    class_folders(tmp_path, {"a": (2, 1), "b": (2, 1)}, size=(40, 40), ext=".JPEG", marked=False)
    loaders = build(tmp_path, img_size=130, batch_size=3)
    assert isinstance(loaders.train, StreamingLoader) and isinstance(loaders.test, StreamingLoader)
    assert loaders.spec.image_size == 130
    assert (loaders.spec.mean, loaders.spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert "images of 130 px are above the 128 px of the device-resident path" in loaders.note
    assert "RandomResizedCrop 130 + flip, evaluation Resize 148 + CenterCrop 130" in loaders.note
    x, y = next(iter(loaders.train))
    assert x.shape == (3, 3, 130, 130)


def test_a_folder_too_large_to_hold_streams(tmp_path, monkeypatch):
    class_folders(tmp_path, {"a": (3, 1), "b": (2, 1)}, size=(16, 16), marked=False)
    monkeypatch.setattr(imf, "RESIDENT_MAX_BYTES", 7 * 3 * 16 * 16 - 1)     # one byte short of the 7 images
    loaders = build(tmp_path)
    assert isinstance(loaders.train, StreamingLoader)
    assert "0.0 MB decoded would exceed the" in loaders.note and "16 px: the most common" in loaders.note
    monkeypatch.setattr(imf, "RESIDENT_MAX_BYTES", 7 * 3 * 16 * 16)
    assert isinstance(build(tmp_path).train, DeviceLoader)


def test_streaming_reads_every_header_before_training(tmp_path):
    class_folders(tmp_path, {"a": (2, 1), "b": (2, 1)}, size=(16, 16), marked=False)
    (tmp_path / "val" / "b" / "b_0.png").write_bytes(b"garbage, not a PNG")
    with pytest.raises(DataError, match=r"cannot read image .*val/b/b_0\.png \(UnidentifiedImageError") as e:
        build(tmp_path, img_size=140)
    assert "\n" not in str(e.value)


# -- one-line errors before any training -------------------------------------------------------
def test_unreadable_and_truncated_images_are_named(tmp_path):
    class_folders(tmp_path, COUNTS, ext=".JPEG", marked=False)
    bad = tmp_path / "train" / "dog" / "dog_2.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*train/dog/dog_2\.JPEG \(OSError: (?i:.*truncated)") as e:
        build(tmp_path)
    assert "\n" not in str(e.value)
    bad.write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot read image .*dog_2\.JPEG"):
        build(tmp_path)


@pytest.mark.parametrize("defect, pattern", [
    ("empty_class", r"class folder .*train/emu has no images; expected files ending in .jpg"),
    ("non_image", r"train/cat/readme\.md is not an image file by its name"),
    ("classes_differ", r"val and .*train must have the same class folders; they differ in 2 "
                       r"\(only in train/: emu; only in val/: fox\)"),
    ("flat", r"train holds image files next to its class folders \(x\.png\); expected only one folder per class"),
    ("no_val", r"d/val not found; expected <--data_folder>/val/<class>/<image> for --dataset imagefolder "
               r"\(val/ is the test split\)"),
    ("no_folder", r"--data_folder .*/nowhere not found; expected .*/nowhere/train/<class>/<image> and "),
    ("no_classes", r"train has no class folders; expected .*train/<class>/<image>"),
])
def test_layout_errors_are_one_line(tmp_path, defect, pattern):
    root = tmp_path / "d"
    class_folders(root, COUNTS)
    if defect == "empty_class":
        for f in (root / "train" / "emu").iterdir():
            f.unlink()
    elif defect == "non_image":
        (root / "train" / "cat" / "readme.md").write_text("x")
    elif defect == "classes_differ":
        (root / "val" / "emu").rename(root / "val" / "fox")
    elif defect == "flat":
        write_image(root / "train" / "x.png", constant(4, 4, (1, 2, 3)))
    elif defect == "no_val":
        for f in (root / "val").rglob("*.png"):
            f.unlink()
        for d in (root / "val").iterdir():
            d.rmdir()
        (root / "val").rmdir()
    elif defect == "no_folder":
        root = tmp_path / "nowhere"
    elif defect == "no_classes":
        for d in sorted((root / "train").rglob("*"), reverse=True):
            d.unlink() if d.is_file() else d.rmdir()
    with pytest.raises(DataError, match=pattern) as e:
        build(root)
    assert "\n" not in str(e.value)
