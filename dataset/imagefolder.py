"""``imagefolder``: your own images in class folders, ``--data_folder DIR``.

Layout: ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>``; ``val/`` is the test split
(as for ``imagenet``), and ``--val_split N`` holds N images per class out of ``train/`` as a
validation set. Classes are the sorted folder names (torchvision's ``ImageFolder`` rule); the
layout is checked before any image is decoded (``dataset.folders``: empty class folders, files
that are not images, class folders that differ between train/ and val/, files where class folders
belong) and every image is then read (see below) before training starts, so a bad file is a
one-line error naming it.

Image size ``S``: ``--img_size``, or else the most common shorter side among ``SIZE_PROBES``
images spread evenly over the sorted training list (ties go to the smaller side), capped at
``MAX_DEFAULT_SIZE`` (224: a folder of photographs trains at ImageNet's size).

Two pipelines, chosen from the size of the decoded data:

- **device-resident** when ``S <= RESIDENT_MAX_SIZE`` (128) and all images of both splits, decoded
  at ``S x S`` as uint8, take at most ``RESIDENT_MAX_BYTES`` (2 GiB; e.g. 100,000 images at 64 px
  are 1.2 GB): every image is decoded once (Pillow, ``--num_workers`` threads), made ``S x S`` by
  Resize(S) of its shorter side + CenterCrop(S) (nothing changes for an image already ``S x S``),
  and the set is held on the training device like CIFAR and augmented there in batches (the
  'standard' view: 4-pixel zero-padded random crop + flip at size S). Mean/std are those of the
  training images (all of train/, a ``--val_split`` hold-out included; population std over every
  pixel of a channel, computed in exact integer arithmetic, rounded to 4 decimals; 1 for a channel
  that never varies).
- **streaming** otherwise: every file's header is read up front (an unreadable file is refused
  before training; a truncated one is found only when decoded, and stops the epoch with a one-line
  error naming it), then worker processes decode and apply RandomResizedCrop(S) + flip, or
  Resize(S * 256 // 224) + CenterCrop(S) for evaluation (``dataset.streaming``), normalised with
  ImageNet's mean/std.

The loaders' ``note`` is one line saying which pipeline was chosen and why.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .base import DataError, DataOptions, DataSpec, TensorData, data_folder, register_dataset
from .decode import byte_size, decode_square, decode_threads, pillow, probe, probe_all
from .folders import FolderLayout, scan_layout
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, streaming_note
from .streaming import StreamingData

RESIDENT_MAX_BYTES = 2 * 1024 ** 3
RESIDENT_MAX_SIZE = 128
SIZE_PROBES = 64
MAX_DEFAULT_SIZE = 224
STAT_DECIMALS = 4


def probe_positions(n: int, k: int = SIZE_PROBES) -> List[int]:
    """``min(n, k)`` positions spread evenly over ``0..n-1`` (the first is 0)."""
    m = min(n, k)
    return [i * n // m for i in range(m)]


def default_img_size(sizes: Sequence[Tuple[int, int]]) -> int:
    """The most common shorter side of ``(width, height)`` pairs (ties: the smaller side), capped
    at ``MAX_DEFAULT_SIZE``."""
    counts = Counter(min(w, h) for w, h in sizes)
    side = min(counts, key=lambda s: (-counts[s], s))
    return min(side, MAX_DEFAULT_SIZE)


def decoded_bytes(num_images: int, size: int, channels: int = 3) -> int:
    return num_images * channels * size * size


def is_resident(num_images: int, size: int) -> bool:
    """The rule of the module docstring: small images whose decoded set fits in 2 GiB."""
    return size <= RESIDENT_MAX_SIZE and decoded_bytes(num_images, size) <= RESIDENT_MAX_BYTES


def pixel_stats(images: Tensor, chunk: int = 256) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``[N, C, H, W]`` in [0, 1] units, from exact
    integer sums (the same on every machine), rounded to ``STAT_DECIMALS``; a channel without any
    variation (std 0, which would divide by zero) gets std 1."""
    n, c = images.shape[0], images.shape[1]
    s1 = torch.zeros(c, dtype=torch.int64)
    s2 = torch.zeros(c, dtype=torch.int64)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].to(torch.int64)
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean, std = [], []
    for a, b in zip(s1.tolist(), s2.tolist()):
        mean.append(round(a / (count * 255), STAT_DECIMALS))
        std.append(round((count * b - a * a) ** 0.5 / (count * 255), STAT_DECIMALS) or 1.0)
    return tuple(mean), tuple(std)


def _plan(options: DataOptions) -> Tuple[FolderLayout, int, str]:
    """The checked layout, the image size, and how ``S`` was chosen (for the note)."""
    layout = scan_layout(Path(data_folder(options)), what="--dataset imagefolder")
    if options.img_size is not None:
        return layout, options.img_size, f"--img_size {options.img_size}"
    pillow()
    picks = probe_positions(len(layout.train))
    size = default_img_size([probe(layout.train[i][0]) for i in picks])
    return layout, size, f"{size} px: the most common shorter side of {len(picks)} sampled images" \
                         + (f", capped at {MAX_DEFAULT_SIZE}" if size == MAX_DEFAULT_SIZE else "")


PIPELINES = ("auto", "resident", "streaming")


def load_imagefolder(options: DataOptions, *, probe_files: bool = True, pipeline: str = "auto"):
    """The folder as ``TensorData`` (device-resident) or ``StreamingData``, by the rule above.
    ``probe_files=False`` skips reading every header of a streamed folder (for its spec alone);
    ``pipeline`` 'resident' or 'streaming' overrides the rule (benchmarks compare both on one folder)."""
    if pipeline not in PIPELINES:
        raise DataError(f"pipeline {pipeline!r}: expected one of {', '.join(PIPELINES)}")
    pillow()
    layout, size, size_why = _plan(options)
    total = len(layout.train) + len(layout.test)
    need = decoded_bytes(total, size)
    threads = decode_threads(options.num_workers)
    resident = is_resident(total, size) if pipeline == "auto" else pipeline == "resident"
    if not resident:
        if probe_files:
            probe_all(layout.train + layout.test, threads)
        limit = f"{RESIDENT_MAX_BYTES / 2 ** 30:.0f} GiB"
        why = ("streaming asked for" if pipeline == "streaming" else
               f"images of {size} px are above the {RESIDENT_MAX_SIZE} px of the device-resident path"
               if size > RESIDENT_MAX_SIZE else
               f"{byte_size(need)} decoded would exceed the {limit} device-resident limit")
        spec = DataSpec("imagefolder", len(layout.classes), size, 3, IMAGENET_MEAN, IMAGENET_STD,
                        len(layout.train), len(layout.test))
        note = streaming_note("imagefolder", layout, size, f"{why}; image size {size_why}",
                              "ImageNet mean/std", options.num_workers)
        return StreamingData(spec, layout.classes, layout.train, layout.test, note)
    xtr = decode_square(layout.train, size, threads)
    xte = decode_square(layout.test, size, threads)
    mean, std = pixel_stats(xtr)
    spec = DataSpec("imagefolder", len(layout.classes), size, 3, mean, std, len(layout.train),
                    len(layout.test))
    labels = [torch.tensor([label for _, label in split], dtype=torch.int64)
              for split in (layout.train, layout.test)]
    why = "device-resident asked for" if pipeline == "resident" else \
        f"within the device-resident limit of {RESIDENT_MAX_BYTES / 2 ** 30:.0f} GiB for images up to " \
        f"{RESIDENT_MAX_SIZE} px"
    note = (f"data: imagefolder {layout.root}: {len(layout.classes)} classes, {len(layout.train)} train / "
            f"{len(layout.test)} test images at {size}x{size} (image size {size_why}), decoded once and held "
            f"on the training device as uint8 ({byte_size(need)}, {why}); 4-pixel padded random crop + flip; "
            f"mean {mean} / std {std} of the training images")
    return TensorData(spec, xtr, labels[0], xte, labels[1], layout.classes, note)


def imagefolder_spec(options: DataOptions) -> DataSpec:
    """The spec: a listing and a few headers for a streamed folder; a folder held on the device is
    decoded (its mean/std come from its pixels)."""
    return load_imagefolder(options, probe_files=False).spec


@register_dataset("imagefolder", spec=imagefolder_spec, img_size=True)
def build_imagefolder(options: DataOptions):
    """Your own DIR/train/<class>/ and DIR/val/<class>/ images (device-resident when small)."""
    return load_imagefolder(options)
