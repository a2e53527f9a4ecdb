"""``digits``: the embedded offline default -- scikit-learn's ``load_digits()`` as CIFAR-shaped data.

scikit-learn ships these 1,797 real 8x8 handwritten digits (10 classes, 0..16 grey levels) inside
the package, so every install can train and test end to end with no network and no data folder.

Presentation (fixed; changing it would change every number measured on it):

- grey level ``v`` in 0..16 -> uint8 ``(255*v + 8) // 16`` (round half up, integer arithmetic);
- 8x8 -> 32x32 by **nearest-neighbour x4** (each pixel becomes a 4x4 block). Chosen over bilinear
  because it is exact integer copying (identical on every platform and library version, no
  interpolation convention to pin down), keeps the pixel histogram (so the train mean/std equal
  those of the 8x8 images), and makes the standard 4-pixel crop a shift of exactly one original
  pixel;
- the grey image is replicated to 3 channels so CIFAR models apply unchanged.

``--img_size`` takes another whole multiple of 8 (8, 16, 24, ...): the same presentation with
nearest-neighbour x(size/8). The pixel histogram, so the mean/std, is the same at every size; the
4-pixel crop of the standard augmentation then shifts by 32/size original pixels. The test suite
trains at 16 px (a quarter of the pixels of 32, the same digits).

Split (fixed forever, no random generator involved): within each class, take its samples in the
order of ``load_digits()``; the ones at positions 4, 9, 14, ... (position % 5 == 4) form the test
set, the rest the training set. That is a stratified ~80/20 split: 1,442 train / 355 test images.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .base import DataError, DataOptions, DataSpec, TensorData, register_dataset

# Mean and (population) std of all training-split pixels in [0,1] units; identical for the three
# channels. tests/test_data_sets.py recomputes them.
DIGITS_MEAN = 0.305183
DIGITS_STD = 0.375994
DIGITS_SIZE = 32
DIGITS_SPEC = DataSpec("digits", 10, DIGITS_SIZE, 3, (DIGITS_MEAN,) * 3, (DIGITS_STD,) * 3, 1442, 355)


def digits_size(options: DataOptions) -> int:
    """``--img_size`` (default 32): a whole multiple of the digits' own 8 pixels."""
    size = options.img_size or DIGITS_SIZE
    if size % 8:
        raise DataError(f"--img_size {size}: digits are 8x8 images enlarged by a whole factor; expected a "
                        f"multiple of 8 (8, 16, 24, 32, ...)")
    return size


def digits_spec(options: DataOptions) -> DataSpec:
    return dataclasses.replace(DIGITS_SPEC, image_size=digits_size(options))


def digits_split(target: np.ndarray):
    """(train positions, test positions) of the fixed split described in the module docstring."""
    test = np.zeros(len(target), dtype=bool)
    for c in np.unique(target):
        idx = np.flatnonzero(target == c)
        test[idx[4::5]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def digits_images(raw: np.ndarray, size: int = DIGITS_SIZE) -> np.ndarray:
    """float 0..16 ``[N, 8, 8]`` -> uint8 ``[N, 3, size, size]`` (scale, nearest x(size/8), 3 channels)."""
    v = np.rint(raw).astype(np.int64)
    if v.min() < 0 or v.max() > 16:
        raise DataError(f"digits grey levels must lie in 0..16, got {v.min()}..{v.max()}")
    u8 = ((255 * v + 8) // 16).astype(np.uint8)
    k = size // 8
    big = u8.repeat(k, axis=1).repeat(k, axis=2)
    return np.ascontiguousarray(np.broadcast_to(big[:, None], (len(big), 3, size, size)))


def load_digits_data(size: int = DIGITS_SIZE) -> TensorData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") \
            from None
    d = load_digits()
    images, target = digits_images(d.images, size), np.asarray(d.target, dtype=np.int64)
    tr, te = digits_split(target)
    spec = dataclasses.replace(DIGITS_SPEC, image_size=size)
    return TensorData(spec, torch.from_numpy(images[tr]), torch.from_numpy(target[tr]),
                      torch.from_numpy(images[te]), torch.from_numpy(target[te]),
                      tuple(str(n) for n in d.target_names))


@register_dataset("digits", spec=digits_spec, img_size=True)
def build_digits(options: DataOptions) -> TensorData:
    """scikit-learn's 8x8 digits as 3x32x32 images (offline, 1,442 train / 355 test).

    ``--img_size`` serves them at another multiple of 8."""
    return load_digits_data(digits_size(options))
