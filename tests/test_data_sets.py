"""The offline data sets (digits, synthetic) and the registry's errors. The image-file data sets
(imagenet, imagefolder, tinyimagenet) are tested on real JPEG and PNG files in
tests/test_dataset_*.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dataset
from dataset import DataError, build_loaders, get_spec
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


def test_digits_at_another_img_size_is_the_same_presentation_enlarged_less(digits):
    """--img_size 16: nearest x2 instead of x4 (the same pixels, so the same mean/std); a size that
    is not a whole multiple of 8 is one line naming the flag."""
    small = dataset.DATASETS["digits"].build(dataset.DataOptions(img_size=16))
    assert small.train_images.shape == (1442, 3, 16, 16) and small.spec.image_size == 16
    assert get_spec("digits", img_size=16) == small.spec
    assert torch.equal(small.train_images, digits.train_images[:, :, ::2, ::2])
    assert torch.equal(small.test_labels, digits.test_labels)
    assert small.spec.mean == digits.spec.mean and small.spec.std == digits.spec.std
    with pytest.raises(DataError, match=r"^--img_size 20: digits are 8x8 images enlarged by a whole factor; "
                                        r"expected a multiple of 8 \(8, 16, 24, 32, \.\.\.\)$"):
        build_loaders("digits", batch_size=4, device="cpu", seed=0, img_size=20)


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
                                        r"cifar10, cifar100, digits, imagefolder, imagenet, synthetic, "
                                        r"tinyimagenet") as e:
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
