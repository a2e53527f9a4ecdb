"""Batched augmentations for device-resident data: ``fn(images, generator) -> float in [0, 1]``.

``images`` is a uint8 batch ``[B, C, H, W]`` on the training device; ``generator`` is the loader's
per-epoch ``torch.Generator`` (on the CPU: the few per-sample random parameters are drawn there and
moved to the device, so a seed gives the same crops on CPU and CUDA). The function returns
float32 in [0, 1]; the loader then normalises with the data set's mean/std. Adding a view (e.g.
MLKD's 'strong') is one ``@register_augmentation('name')`` function in this file or anywhere else.

'standard' is RepDistiller's CIFAR training augmentation, ``RandomCrop(32, padding=4)`` followed
by ``RandomHorizontalFlip()``, done for the whole batch with one gather instead of a per-image
loop: the batch is zero-padded by 4 pixels in uint8 (torchvision pads the PIL image with 0 before
``ToTensor``/``Normalize``, so padded pixels are black, not the mean), then for each sample a
top/left offset, each uniform on 0..8 (81 equally likely positions, as ``RandomCrop.get_params``
draws them), and a flip with probability 1/2 are drawn; an index grid built from those picks the
output pixels out of the padded batch.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataError

AugmentFn = Callable[[Tensor, torch.Generator], Tensor]
AUGMENTATIONS: Dict[str, AugmentFn] = {}
CROP_PADDING = 4


def register_augmentation(name: str):
    """Register a batched augmentation ``fn(uint8 [B,C,H,W], generator) -> float [0,1]``."""
    def wrap(fn: AugmentFn) -> AugmentFn:
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation {name!r} is registered twice")
        AUGMENTATIONS[name] = fn
        return fn
    return wrap


def augmentation_names():
    return sorted(AUGMENTATIONS)


def get_augmentation(name: str) -> AugmentFn:
    if name not in AUGMENTATIONS:
        raise DataError(f"unknown view/augmentation {name!r}; expected one of: "
                        f"{', '.join(augmentation_names())}")
    return AUGMENTATIONS[name]


def to_unit(images: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1] (``x / 255``, as ``ToTensor`` does)."""
    return images.to(torch.float32).div_(255)


def crop_flip_params(batch: int, generator: torch.Generator, pad: int = CROP_PADDING
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-sample (top, left, flip): offsets uniform on 0..2*pad, flip a fair coin.

    Drawn in this order from ``generator``: all tops, all lefts, all flips."""
    dev = generator.device
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=dev)
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (batch,), generator=generator, device=dev).bool()
    return top, left, flip


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int = CROP_PADDING
              ) -> Tensor:
    """Zero-pad by ``pad``, crop ``H x W`` at (top, left) of the padded image, then mirror the
    samples with ``flip``: ``out[b, :, y, x] = padded[b, :, top+y, left+x']`` with ``x' = x`` or
    ``W-1-x``. uint8 in, uint8 out; one gather for the whole batch."""
    b, c, h, w = images.shape
    dev = images.device
    top, left, flip = top.to(dev), left.to(dev), flip.to(dev)
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros, still uint8
    wp = w + 2 * pad
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    rows = top[:, None] + ys                                        # [B, H]
    cols = left[:, None] + torch.where(flip[:, None], (w - 1) - xs, xs)  # [B, W]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


@register_augmentation("none")
def no_augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
    """Evaluation view: the image itself."""
    return to_unit(images)


@register_augmentation("standard")
def standard_augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
    """RepDistiller's CIFAR training view: 4-pixel zero-padded random crop + horizontal flip."""
    top, left, flip = crop_flip_params(images.shape[0], generator)
    # one host-to-device copy for the three parameter vectors instead of three
    top, left, flip = torch.stack([top, left, flip.long()]).to(images.device)
    return to_unit(crop_flip(images, top, left, flip.bool()))
