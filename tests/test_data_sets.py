"""The offline data sets (digits, synthetic), the registry's errors, and the ImageNet folder path
(its missing-torchvision error, and its loader logic behind a torchvision-free fake backend)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import dataset
from dataset import DataError, build_loaders, get_spec
from dataset import imagenet as imagenet_mod
from dataset.digits import DIGITS_MEAN, DIGITS_STD


# -- digits ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return dataset.DATASETS["digits"].build(dataset.DataOptions())


def test_digits_shapes_split_and_presentation(digits):
    from sklearn.datasets import load_digits
    d = load_digits()
    assert digits.train_images.shape == (1442, 3, 32, 32) and digits.test_images.shape == (355, 3, 32, 32)
    assert digits.train_images.dtype == torch.uint8 and digits.spec.num_classes == 10
    assert (digits.spec.num_train, digits.spec.num_test) == (1442, 355)
    assert get_spec("digits") == digits.spec
    # the documented split: per class, positions 4, 9, 14, ... are test images
    test_pos = np.concatenate([np.flatnonzero(d.target == c)[4::5] for c in range(10)])
    test_pos.sort()
    train_pos = np.setdiff1d(np.arange(len(d.target)), test_pos)
    assert digits.test_labels.tolist() == d.target[test_pos].tolist()
    assert digits.train_labels.tolist() == d.target[train_pos].tolist()
    # 0..16 -> 0..255, nearest x4, three equal channels
    img = digits.test_images[7].numpy()
    assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
    expected = np.rint(d.images[test_pos[7]] * 255 / 16 + 1e-9).astype(np.uint8)
    assert np.array_equal(img[0], np.kron(expected, np.ones((4, 4), dtype=np.uint8)))
    assert digits.train_images.max() == 255 and digits.train_images.min() == 0


def test_digits_mean_std_constants(digits):
    x = digits.train_images.double() / 255
    assert abs(x.mean().item() - DIGITS_MEAN) < 1e-6
    assert abs(x.std(unbiased=False).item() - DIGITS_STD) < 1e-6
    assert digits.spec.mean == (DIGITS_MEAN,) * 3 and digits.spec.std == (DIGITS_STD,) * 3


def test_digits_loaders():
    loaders = build_loaders("digits", batch_size=128, device="cpu", seed=0)
    assert len(loaders.train) == 12 and len(loaders.test) == 3 and loaders.val is None
    x, y = next(iter(loaders.train))
    assert x.shape == (128, 3, 32, 32) and int(y.max()) <= 9


# -- synthetic ------------------------------------------------------------------------------------
def synth(**kw):
    return dataset.DATASETS["synthetic"].build(dataset.make_options(**kw))


def test_synthetic_sizes_classes_determinism():
    a = synth(synthetic_train=120, synthetic_test=30, synthetic_classes=7, synthetic_size=16)
    assert a.train_images.shape == (120, 3, 16, 16) and a.test_images.shape == (30, 3, 16, 16)
    assert a.spec.num_classes == 7 and set(a.train_labels.tolist()) == set(range(7))
    assert sorted(np.bincount(a.train_labels.numpy()).tolist()) == [17] * 6 + [18]   # balanced
    b = synth(synthetic_train=120, synthetic_test=30, synthetic_classes=7, synthetic_size=16)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    c = synth(synthetic_train=120, synthetic_test=99, synthetic_classes=7, synthetic_size=16)
    assert torch.equal(a.train_images, c.train_images)          # test size leaves train alone
    d = synth(synthetic_train=120, synthetic_test=30, synthetic_classes=7, synthetic_size=16,
              synthetic_seed=1)
    assert not torch.equal(a.train_images, d.train_images)


def test_synthetic_is_learnable_and_near_its_nominal_statistics():
    data = synth(synthetic_train=2000, synthetic_test=500, synthetic_classes=10)
    x = data.train_images.double() / 255
    assert abs(x.mean().item() - data.spec.mean[0]) < 0.03
    assert abs(x.std().item() - data.spec.std[0]) < 0.03
    # nearest class mean (from training images) classifies the test images well
    flat = (data.train_images.double() / 255).flatten(1)
    means = torch.stack([flat[data.train_labels == c].mean(0) for c in range(10)])
    pred = torch.cdist((data.test_images.double() / 255).flatten(1), means).argmin(1)
    assert (pred == data.test_labels).double().mean() > 0.9


@pytest.mark.parametrize("flag, value", [("synthetic_train", 0), ("synthetic_classes", 1),
                                         ("synthetic_size", 4), ("synthetic_test", "ten")])
def test_synthetic_bad_sizes(flag, value):
    with pytest.raises(DataError, match=f"--{flag} must be an integer"):
        get_spec("synthetic", **{flag: value})


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_data_set_is_a_one_line_error():
    with pytest.raises(DataError, match=r"unknown data set 'mnist' \(--dataset\); expected one of: "
                                        r"cifar10, cifar100, digits, imagenet, synthetic") as e:
        build_loaders("mnist", batch_size=8, device="cpu", seed=0)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown data set"):
        get_spec("mnist")


def test_unknown_option_and_bad_seed():
    with pytest.raises(TypeError, match="unknown data option"):
        build_loaders("digits", batch_size=8, device="cpu", seed=0, data_dir="x")
    with pytest.raises(DataError, match=r"seed must be an integer >= 0, got -1"):
        build_loaders("digits", batch_size=8, device="cpu", seed=-1)
    with pytest.raises(DataError, match=r"batch_size must be an integer >= 1, got 0"):
        build_loaders("digits", batch_size=0, device="cpu", seed=0)


def test_registering_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        dataset.register_dataset("digits", spec=dataset.get_spec("digits"))(lambda o: None)


# -- ImageNet folders -----------------------------------------------------------------------------
def make_folders(root, classes=("n01", "n02", "n03"), per_class=(4, 3, 5), val=(2, 2, 1)):
    for split, counts in (("train", per_class), ("val", val)):
        for c, (name, n) in enumerate(zip(classes, counts)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                # an 8x8 image whose pixels encode (class, index); ".JPEG" name, npy content
                with open(d / f"{name}_{i}.JPEG", "wb") as f:
                    np.save(f, np.full((3, 8, 8), 10 * c + i, dtype=np.uint8))
            (d / "notes.txt").write_text("not an image")
    return root


def test_imagenet_spec_counts_folders(tmp_path):
    make_folders(tmp_path)
    spec = get_spec("imagenet", data_folder=str(tmp_path))
    assert (spec.num_classes, spec.num_train, spec.num_test, spec.image_size) == (3, 12, 5, 224)


def test_imagenet_without_torchvision_names_the_extra(tmp_path, monkeypatch):
    make_folders(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)          # import torchvision fails
    with pytest.raises(DataError, match=r'pip install "mtkd\[vision\]"') as e:
        build_loaders("imagenet", data_folder=str(tmp_path), batch_size=4, device="cpu", seed=0)
    assert "\n" not in str(e.value)


def test_imagenet_missing_folders(tmp_path):
    with pytest.raises(DataError, match=f"--data_folder {tmp_path / 'x'} not found"):
        build_loaders("imagenet", data_folder=str(tmp_path / "x"), batch_size=4, device="cpu", seed=0)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=f"ImageNet folder {tmp_path / 'val'} not found"):
        build_loaders("imagenet", data_folder=str(tmp_path), batch_size=4, device="cpu", seed=0)


def test_imagenet_class_folders_must_agree(tmp_path):
    make_folders(tmp_path)
    (tmp_path / "val" / "n09").mkdir()
    (tmp_path / "val" / "n09" / "a.JPEG").write_bytes(b"")
    with pytest.raises(DataError, match="must have the same class folders.*n09"):
        get_spec("imagenet", data_folder=str(tmp_path))


class FakeVision:
    """Stands in for torchvision: loads the .npy 'JPEGs', 'standard' = random flip drawn from the
    global torch RNG (as torchvision's transforms do), 'none' = identity."""

    def load(self, path):
        return torch.from_numpy(np.load(path))

    def transform(self, view):
        if view == "none":
            return lambda img: img.clone()
        if view == "standard":
            return lambda img: img.flip(-1) if torch.rand(1).item() < 0.5 else img.clone()
        raise DataError(f"view {view!r} is not available")


def test_imagenet_loader_contract_with_a_fake_backend(tmp_path, monkeypatch):
    make_folders(tmp_path)
    monkeypatch.setattr(imagenet_mod, "vision_backend", FakeVision)
    kw = dict(data_folder=str(tmp_path), batch_size=5, device="cpu", seed=0, with_index=True,
              num_workers=0)
    loaders = build_loaders("imagenet", val_split=1, **kw)
    train, test, val = loaders.train, loaders.test, loaders.val
    assert (train.num_samples, val.num_samples, test.num_samples) == (9, 3, 5)
    assert len(train) == 2 and len(test) == 1
    assert not set(train.source_indices.tolist()) & set(val.source_indices.tolist())
    spec = loaders.spec
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    train.set_epoch(4)
    first = list(train)
    for x, y, idx in first:
        pixels = torch.round((x * std + mean) * 255)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(y, train.labels[idx])
        assert torch.equal(pixels[:, 0, 0, 0].long() // 10, y)       # the right image was decoded
    assert sorted(torch.cat([b[2] for b in first]).tolist()) == list(range(9))
    train.set_epoch(4)
    again = list(train)
    assert all(torch.equal(a, b) for u, v in zip(first, again) for a, b in zip(u, v))
    xs, ys = zip(*test)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2]                 # in order, all of them


def test_imagenet_augmentation_does_not_depend_on_workers(tmp_path, monkeypatch):
    make_folders(tmp_path, per_class=(6, 6, 6))
    monkeypatch.setattr(imagenet_mod, "vision_backend", FakeVision)
    batches = []
    for workers in (0, 2):
        train = build_loaders("imagenet", data_folder=str(tmp_path), batch_size=4, device="cpu",
                              seed=3, num_workers=workers).train
        train.set_epoch(1)
        batches.append(list(train))
    for (x0, y0), (x2, y2) in zip(*batches):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
