"""Image files -> uint8 RGB tensors ``[3, H, W]``, decoded by Pillow (no torchvision).

Pillow is the one decoder of the image-file data sets (``imagenet``, ``imagefolder``,
``tinyimagenet``); it is imported only when one of them is read, and its absence is a one-line
error naming the extra that installs it. Every image becomes RGB the way
``torchvision.datasets.folder.default_loader`` makes it (``Image.open(path).convert("RGB")``:
grey and palette images are expanded, an alpha channel is dropped).

What can go wrong with a file, and what this module says (always one line naming the file):

- not an image at all (Pillow cannot identify it), or a header Pillow rejects: ``probe`` and
  ``decode`` both report it;
- a truncated file (the header is fine, the pixel data stops early): only ``decode`` finds it,
  because only decoding reads the pixel data (Pillow reports "image file is truncated").
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .base import DataError, one_line
from .transforms import fit_square

# File name endings read as images (torchvision's ImageFolder list, in lower case).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PILLOW_HINT = ('reading image files (--dataset imagenet, imagefolder, tinyimagenet) needs Pillow: '
               'pip install "mtkd[vision]" (or pip install pillow)')

PathLike = Union[str, Path]


def is_image_name(name: str) -> bool:
    """Whether a file name ends in one of ``IMG_EXTENSIONS`` (case-insensitive)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def pillow():
    """``PIL.Image``, or a one-line ``DataError`` naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(PILLOW_HINT) from None
    return Image


def _unreadable(path: PathLike, exc: BaseException) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(f"image file {path} not found")
    reason = one_line(exc) or "no detail"
    return DataError(f"cannot read image {path} ({type(exc).__name__}: {reason}); expected a complete "
                     f"image file ({', '.join(e.lstrip('.') for e in IMG_EXTENSIONS[:3])}, ...)")


def probe(path: PathLike) -> Tuple[int, int]:
    """``(width, height)`` from the file's header (the pixels are not decoded)."""
    Image = pillow()
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise _unreadable(path, exc) from None


def decode(path: PathLike) -> Tensor:
    """The image at ``path`` as a uint8 tensor ``[3, H, W]`` (RGB, contiguous)."""
    Image = pillow()
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")          # decodes every pixel: a truncated file fails here
    except Exception as exc:  # see probe
        raise _unreadable(path, exc) from None
    pixels = np.array(rgb, dtype=np.uint8)   # [H, W, 3], a writable copy
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def decode_threads(num_workers: int) -> int:
    """Decoding threads for ``--num_workers`` (Pillow releases the GIL while it decodes)."""
    return max(1, int(num_workers))


def decode_square(samples: Sequence[Tuple[str, int]], size: int, threads: int = 1) -> Tensor:
    """Every image of ``(path, label)`` samples decoded and made ``size x size``
    (``transforms.fit_square``: Resize of the shorter side + CenterCrop; an image already of that
    size is kept as it is): uint8 ``[N, 3, size, size]`` in the order of ``samples``."""
    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)

    def one(i: int) -> None:
        out[i] = fit_square(decode(samples[i][0]), size)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(one, range(len(samples))):   # re-raises the first error, in order
            pass
    return out


def probe_all(samples: Sequence[Tuple[str, int]], threads: int = 1) -> None:
    """Read every file's header: a file Pillow cannot identify is a one-line error naming it."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(lambda s: probe(s[0]), samples):
            pass


def byte_size(num_bytes: int) -> str:
    """``12.3 MB`` below 100 MB, else ``1.23 GB``."""
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes < 10 ** 8 else f"{num_bytes / 1e9:.2f} GB"
