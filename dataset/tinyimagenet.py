"""``tinyimagenet``: Tiny-ImageNet-200 (Stanford CS231n), 200 classes of 64x64 images.

The official layout, ``<data_folder>/tiny-imagenet-200/`` (or ``--data_folder`` pointing at that
folder itself, recognised by its ``wnids.txt``)::

    wnids.txt                      the 200 WordNet ids, one per line
    train/<wnid>/images/*.JPEG     500 per class; train/<wnid>/<wnid>_boxes.txt is not used
    val/images/*.JPEG              10,000 images: the test split
    val/val_annotations.txt        tab-separated: file name, wnid, bounding box (x0 y0 x1 y1)
    test/images/*.JPEG             unlabelled: not used

Class index = position of the wnid in the sorted list, which is both torchvision ``ImageFolder``'s
rule on ``train/`` (its sorted folder names) and what spot-adaptive KD's loader does (it sorts
``wnids.txt``; zju-vipa/spot-adaptive-pytorch, ``dataset/tiny_imagenet.py``); the train folders
must be exactly the wnids. Training images are listed class by class in sorted file order, test
images in sorted file order (as that loader lists them).

Missing, it is downloaded from ``TINY_URL`` and checked against ``TINY_MD5`` -- the MD5 quoted
for the official archive by spot-adaptive KD's loader (above) and by Avalanche's Tiny-ImageNet
benchmark, among others -- through ``dataset.download`` (atomic: a failed download leaves the
data folder as it was; members outside the folder are refused). ``--no-download``: the folder is
read as it is, and a missing one is an error.

Pixels: every image is decoded once (Pillow, ``--num_workers`` threads) and the set is held on the
training device as uint8 like CIFAR: 110,000 x 3 x 64 x 64 bytes = 1.35 GB, fine on a GPU (and in
the RAM of a CPU run). ``--img_size S`` resizes every image once at load time (Resize + CenterCrop,
``dataset.transforms.fit_square``). Augmentation: the 'standard' view, a 4-pixel zero-padded random
crop + horizontal flip at 64 px, the CIFAR recipe most Tiny-ImageNet KD papers use. (Spot-adaptive
KD's own loader flips only -- its RandomCrop(64, padding=4) is commented out -- and normalises with
CIFAR-10's constants.) Mean/std: the values commonly quoted for Tiny-ImageNet's training set,
(0.4802, 0.4481, 0.3975) / (0.2302, 0.2265, 0.2262).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .base import DataError, DataOptions, DataSpec, TensorData, data_folder, register_dataset
from .decode import IMG_EXTENSIONS, byte_size, decode_square, decode_threads, is_image_name, pillow
from .download import ensure_extracted
from .folders import Sample

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_DIR = "tiny-imagenet-200"
TINY_REQUIRED = ("wnids.txt", "val/val_annotations.txt")
TINY_SIZE = 64
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)
TINY_OFFICIAL = (200, 100000, 10000)   # classes, train images, test (val) images


def _images_in(folder: Path, what: str) -> List[str]:
    """Sorted image file names of ``folder``; any other (visible) file is an error."""
    if not folder.is_dir():
        raise DataError(f"Tiny-ImageNet folder {folder} not found; expected {what}")
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    bad = [n for n in names if not is_image_name(n) or not (folder / n).is_file()]
    if bad:
        raise DataError(f"{folder / bad[0]} is not an image file; expected only images "
                        f"({', '.join(IMG_EXTENSIONS)}) in {folder}")
    if not names:
        raise DataError(f"{folder} has no images; expected {what}")
    return names


def read_wnids(root: Path) -> List[str]:
    path = root / "wnids.txt"
    try:
        wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; expected one WordNet id per line") from None
    if not wnids:
        raise DataError(f"{path} lists no classes; expected one WordNet id per line")
    twice = sorted({w for w in wnids if wnids.count(w) > 1})
    if twice:
        raise DataError(f"{path} lists {', '.join(twice[:3])} more than once; expected each class once")
    return sorted(wnids)


def read_val_annotations(root: Path, classes: Dict[str, int]) -> Dict[str, int]:
    """``val/val_annotations.txt`` -> {file name: label}."""
    path = root / "val" / "val_annotations.txt"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; expected lines 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1"
                        f"<TAB>y1'") from None
    labels: Dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or fields[1].strip() not in classes:
            got = "an unknown wnid " + repr(fields[1].strip()) if len(fields) >= 2 else repr(line[:60])
            raise DataError(f"{path} line {number}: {got}; expected 'file<TAB>wnid<TAB>box' with a wnid "
                            f"of wnids.txt")
        name = fields[0].strip()
        if name in labels:
            raise DataError(f"{path} line {number}: {name} is annotated twice; expected one line per image")
        labels[name] = classes[fields[1].strip()]
    return labels


def tiny_layout(root: Path) -> Tuple[Tuple[str, ...], List[Sample], List[Sample]]:
    """Classes (sorted wnids), training and test samples of a Tiny-ImageNet folder."""
    wnids = read_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"Tiny-ImageNet folder {train_dir} not found; expected train/<wnid>/images/*.JPEG")
    folders = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    if folders != wnids:
        only_dirs = sorted(set(folders) - set(wnids))
        only_ids = sorted(set(wnids) - set(folders))
        parts = ([f"folders not in wnids.txt: {', '.join(only_dirs[:5])}"] if only_dirs else []) + \
                ([f"wnids without a folder: {', '.join(only_ids[:5])}"] if only_ids else [])
        raise DataError(f"{train_dir} must hold one folder per wnid of {root / 'wnids.txt'}; "
                        f"{'; '.join(parts)}")
    train: List[Sample] = []
    for w in wnids:
        folder = train_dir / w / "images"
        train += [(str(folder / n), index[w]) for n in _images_in(folder, f"train/{w}/images/*.JPEG")]
    val_dir = root / "val" / "images"
    names = _images_in(val_dir, "val/images/*.JPEG")
    labels = read_val_annotations(root, index)
    missing = [n for n in names if n not in labels]
    if missing:
        raise DataError(f"{val_dir / missing[0]} has no line in {root / 'val' / 'val_annotations.txt'}; "
                        f"expected every validation image annotated with its wnid")
    absent = sorted(set(labels) - set(names))
    if absent:
        raise DataError(f"{root / 'val' / 'val_annotations.txt'} annotates {absent[0]}, which is not in "
                        f"{val_dir}; expected the annotated images there")
    test = [(str(val_dir / n), labels[n]) for n in names]
    return tuple(wnids), train, test


def tiny_root(options: DataOptions) -> Path:
    """The Tiny-ImageNet folder: ``--data_folder`` itself if it holds ``wnids.txt``, else
    ``<data_folder>/tiny-imagenet-200`` (downloaded and extracted when missing, if allowed)."""
    folder = Path(data_folder(options))
    if (folder / "wnids.txt").is_file():
        return folder
    return ensure_extracted(str(folder), TINY_DIR, TINY_REQUIRED, url=options.url or TINY_URL,
                            md5=(options.md5 or TINY_MD5).lower(), download=options.download,
                            what="Tiny-ImageNet", archive_name="tiny-imagenet-200.zip")


def tiny_spec(options: DataOptions) -> DataSpec:
    """From the folder's listing when it is there (nothing decoded), else the official sizes."""
    folder = Path(data_folder(options))
    size = options.img_size or TINY_SIZE
    for root in (folder, folder / TINY_DIR):
        if (root / "wnids.txt").is_file():
            classes, train, test = tiny_layout(root)
            return DataSpec("tinyimagenet", len(classes), size, 3, TINY_MEAN, TINY_STD, len(train), len(test))
    return DataSpec("tinyimagenet", TINY_OFFICIAL[0], size, 3, TINY_MEAN, TINY_STD, *TINY_OFFICIAL[1:])


@register_dataset("tinyimagenet", spec=tiny_spec, img_size=True)
def build_tinyimagenet(options: DataOptions) -> TensorData:
    """Tiny-ImageNet-200 (64x64, 200 classes; downloaded and MD5-checked if missing)."""
    pillow()
    root = tiny_root(options)
    classes, train, test = tiny_layout(root)
    size = options.img_size or TINY_SIZE
    threads = decode_threads(options.num_workers)
    xtr, xte = decode_square(train, size, threads), decode_square(test, size, threads)
    spec = DataSpec("tinyimagenet", len(classes), size, 3, TINY_MEAN, TINY_STD, len(train), len(test))
    ytr = torch.tensor([label for _, label in train], dtype=torch.int64)
    yte = torch.tensor([label for _, label in test], dtype=torch.int64)
    note = (f"data: tinyimagenet {root}: {len(classes)} classes, {len(train)} train / {len(test)} test images "
            f"at {size}x{size}, decoded once and held on the training device as uint8 "
            f"({byte_size(xtr.numel() + xte.numel())}); 4-pixel padded random crop + flip; Tiny-ImageNet mean/std")
    return TensorData(spec, xtr, ytr, xte, yte, classes, note)
