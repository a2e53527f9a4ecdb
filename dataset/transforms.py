"""torchvision's geometric transforms for image files, written with torch on uint8 tensors.

The image-file pipelines (``dataset.streaming``, and the resizing of ``dataset.imagefolder`` /
``dataset.tinyimagenet`` images to one size) need ``Resize``, ``CenterCrop``,
``RandomResizedCrop`` and ``RandomHorizontalFlip`` exactly as torchvision defines them
(``torchvision/transforms/transforms.py`` and ``functional.py``: the definitions below were
checked against them), without importing torchvision. Images are uint8 ``[..., C, H, W]``
(one image or a batch of same-sized images, on any device) and stay uint8.

- ``Resize(size)`` with an int resizes the **shorter** side to ``size`` and the longer one to
  ``int(size * long / short)`` (truncated), keeping the orientation; an image already of the
  output size is returned as it is.
- Resampling is bilinear with antialiasing, on float32 copies of the pixels, rounded to the
  nearest integer and clamped to 0..255: ``F.interpolate(x.float(), size, mode="bilinear",
  align_corners=False, antialias=True)``, which is what torchvision's tensor ``resize`` does
  (its PIL path uses Pillow's own filter, which may differ by a grey level).
- ``CenterCrop(h, w)``: top ``int(round((H - h) / 2))``, left ``int(round((W - w) / 2))`` (Python's
  round, half to even); an image smaller than the crop is first zero-padded, by
  ``(crop - size) // 2`` before and ``(crop - size + 1) // 2`` after.
- ``RandomResizedCrop.get_params`` (scale (0.08, 1), ratio (3/4, 4/3)): up to 10 tries of an area
  fraction ``s ~ U(scale)`` and an aspect ratio ``r = exp(U(log ratio))`` (log-uniform), giving
  ``w = round(sqrt(s A r))``, ``h = round(sqrt(s A / r))``; the first box with
  ``0 < w <= W`` and ``0 < h <= H`` is placed at ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``. If all
  tries fail, the fallback is the largest centred box whose aspect ratio lies within ``ratio``
  (the whole image when its own ratio does).
- ``RandomHorizontalFlip(0.5)``: mirror when ``rand() < 0.5``.

Random numbers come from a ``torch.Generator`` passed in, drawn with the same calls and in the
same order as torchvision draws them from the global generator (for a try: ``uniform_`` for the
scale, ``uniform_`` for the log ratio, then -- if the box fits -- ``randint`` for the top and the
left; then ``rand(1)`` for the flip), so a generator seeded with ``s`` gives the crops
torchvision gives after ``torch.manual_seed(s)`` (tests/test_dataset_transforms.py checks this
against torchvision itself where it is installed).

Per-image views of the streaming pipeline are registered in ``IMAGE_VIEWS``:
``fn(image uint8 [C, H, W], size, generator) -> uint8 [C, size, size]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataError

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
TRIES = 10
FLIP_P = 0.5


@dataclass(frozen=True)
class Box:
    """A crop: rows ``top .. top+height-1``, columns ``left .. left+width-1``."""
    top: int
    left: int
    height: int
    width: int


# -- resizing ---------------------------------------------------------------------------------
def shorter_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """Output ``(height, width)`` of ``Resize(size)``: shorter side ``size``, longer side
    ``int(size * long / short)``."""
    if size < 1 or height < 1 or width < 1:
        raise DataError(f"cannot resize a {height}x{width} image to {size} px")
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear, antialiased resampling of uint8 ``[..., C, H, W]`` to ``height x width``."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    lead = images.shape[:-3]
    x = images.reshape((-1,) + tuple(images.shape[-3:])).to(torch.float32)
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y.reshape(tuple(lead) + tuple(y.shape[-3:]))


def resize_shorter(images: Tensor, size: int) -> Tensor:
    """torchvision's ``Resize(size)`` (an int): the shorter side becomes ``size``."""
    return resize(images, *shorter_side_size(images.shape[-2], images.shape[-1], size))


# -- cropping ---------------------------------------------------------------------------------
def crop(images: Tensor, box: Box) -> Tensor:
    """The pixels of ``box`` (which must lie inside the image)."""
    h, w = images.shape[-2:]
    if box.top < 0 or box.left < 0 or box.top + box.height > h or box.left + box.width > w \
            or box.height < 1 or box.width < 1:
        raise DataError(f"crop {box} does not lie inside a {h}x{w} image")
    return images[..., box.top:box.top + box.height, box.left:box.left + box.width]


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Box:
    """torchvision's centre-crop position for an image at least as large as the crop."""
    return Box(int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w)


def center_crop(images: Tensor, crop_h: int, crop_w: Optional[int] = None) -> Tensor:
    """torchvision's ``CenterCrop((crop_h, crop_w))``, zero-padding an image smaller than it."""
    crop_w = crop_h if crop_w is None else crop_w
    h, w = images.shape[-2:]
    if crop_h > h or crop_w > w:
        pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
        images = F.pad(images, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = images.shape[-2:]
    return crop(images, center_crop_box(h, w, crop_h, crop_w))


def fit_square(images: Tensor, size: int) -> Tensor:
    """``Resize(size)`` then ``CenterCrop(size)``: any image becomes ``size x size`` (an image
    already of that size is returned unchanged)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return center_crop(resize_shorter(images, size), size)


# -- RandomResizedCrop ------------------------------------------------------------------------
def rrc_try(area_fraction: float, aspect: float, height: int, width: int) -> Optional[Tuple[int, int]]:
    """One try of RandomResizedCrop: the box size ``(h, w)`` for a drawn area fraction and aspect
    ratio, or None when it does not fit the image."""
    target = height * width * area_fraction
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    return (h, w) if 0 < w <= width and 0 < h <= height else None


def rrc_fallback(height: int, width: int, ratio: Sequence[float] = RATIO) -> Box:
    """The box RandomResizedCrop takes when every try failed: the whole image, cut to the nearest
    aspect ratio in ``ratio``, centred (top and left rounded down)."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def random_resized_crop_box(height: int, width: int, generator: torch.Generator,
                            scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO,
                            tries: int = TRIES) -> Box:
    """``RandomResizedCrop.get_params`` for a ``height x width`` image, drawing from ``generator``
    (see the module docstring for the order of the draws)."""
    log_lo, log_hi = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
    for _ in range(tries):
        fraction = torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)).item()
        size = rrc_try(fraction, aspect, height, width)
        if size is not None:
            h, w = size
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return Box(top, left, h, w)
    return rrc_fallback(height, width, ratio)


def random_resized_crop(image: Tensor, size: int, generator: torch.Generator,
                        scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO) -> Tensor:
    """torchvision's ``RandomResizedCrop(size)``: a random box, resized to ``size x size``."""
    box = random_resized_crop_box(image.shape[-2], image.shape[-1], generator, scale, ratio)
    return resize(crop(image, box), size, size)


def hflip(images: Tensor) -> Tensor:
    return images.flip(-1)


def random_hflip(image: Tensor, generator: torch.Generator, p: float = FLIP_P) -> Tensor:
    """torchvision's ``RandomHorizontalFlip(p)``: mirrored when ``rand(1) < p``."""
    return hflip(image) if bool(torch.rand(1, generator=generator) < p) else image


def eval_resize_size(size: int) -> int:
    """The shorter side an evaluation image is resized to before its centre ``size`` crop:
    ``size * 256 // 224`` (ImageNet's Resize(256) + CenterCrop(224); 73 for 64 px)."""
    return size * 256 // 224


# -- per-image views (the streaming pipeline) -------------------------------------------------
ImageView = Callable[[Tensor, int, torch.Generator], Tensor]
IMAGE_VIEWS: Dict[str, ImageView] = {}


def register_image_view(name: str):
    """Register a per-image view ``fn(uint8 [C, H, W], size, generator) -> uint8 [C, size, size]``."""
    def wrap(fn: ImageView) -> ImageView:
        if name in IMAGE_VIEWS:
            raise ValueError(f"image view {name!r} is registered twice")
        IMAGE_VIEWS[name] = fn
        return fn
    return wrap


def get_image_view(name: str) -> ImageView:
    if name not in IMAGE_VIEWS:
        raise DataError(f"view {name!r} is not available for image files streamed from a folder; "
                        f"expected one of: {', '.join(sorted(IMAGE_VIEWS))}")
    return IMAGE_VIEWS[name]


@register_image_view("standard")
def standard_view(image: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """ImageNet training: RandomResizedCrop(size) + RandomHorizontalFlip()."""
    return random_hflip(random_resized_crop(image, size, generator), generator)


@register_image_view("none")
def eval_view(image: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """ImageNet evaluation: Resize(size * 256 // 224) + CenterCrop(size) (no random draw)."""
    return center_crop(resize_shorter(image, eval_resize_size(size)), size)
