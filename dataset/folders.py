"""Class folders of image files: ``<split>/<class>/<image>``, checked before anything is decoded.

The layout of ``--dataset imagenet`` and ``--dataset imagefolder``: ``<root>/train/<class>/...``
and ``<root>/val/<class>/...`` (``val`` is the test split). Class indices are the sorted class
folder names, as ``torchvision.datasets.ImageFolder`` assigns them; a class folder may hold
sub-folders (they are walked, links followed, as ImageFolder does), and samples are listed in
sorted path order. Names starting with '.' (``.DS_Store``, editors' and macOS's side files) are
ignored. Everything else is checked from the directory listing alone, each defect a one-line
``DataError`` naming the path and what was expected:

- a missing split folder, or a file where a folder was expected;
- a split folder with no class folders, or with files lying next to its class folders (e.g.
  ImageNet's flat ``val/`` before its images are sorted into class folders);
- an empty class folder;
- a file that is not an image by its name (``decode.IMG_EXTENSIONS``);
- class folders that differ between ``train`` and ``val``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .base import DataError
from .decode import IMG_EXTENSIONS, is_image_name

Sample = Tuple[str, int]  # (path, label)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_split(root: Path) -> Tuple[List[str], List[Sample]]:
    """Class names and ``(path, label)`` samples of one ``<class>/<image>`` folder."""
    if not root.exists():
        raise DataError(f"{root} not found; expected a folder of class folders {root}/<class>/<image>")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected class folders {root}/<class>/<image>")
    entries = sorted((e for e in os.scandir(root) if _visible(e.name)), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if not e.is_dir()]
    if loose:
        what = "image files" if any(is_image_name(n) for n in loose) else "files"
        raise DataError(f"{root} holds {what} next to its class folders ({', '.join(loose[:3])}"
                        f"{' ...' if len(loose) > 3 else ''}); expected only one folder per class: "
                        f"{root}/<class>/<image>")
    if not classes:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image>")
    samples: List[Sample] = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, files in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for f in files:
                if not _visible(f):
                    continue
                path = os.path.join(dirpath, f)
                if not is_image_name(f):
                    raise DataError(f"{path} is not an image file by its name; expected only images "
                                    f"({', '.join(IMG_EXTENSIONS)}) in class folder {root / name}")
                found.append(path)
        if not found:
            raise DataError(f"class folder {root / name} has no images; expected files ending in "
                            f"{', '.join(IMG_EXTENSIONS)}")
        samples += [(p, label) for p in sorted(found)]
    return classes, samples


@dataclass(frozen=True)
class FolderLayout:
    """A checked ``train``/``val`` layout: classes and the samples of both splits."""
    root: Path
    classes: Tuple[str, ...]
    train: Tuple[Sample, ...]
    test: Tuple[Sample, ...]


def scan_layout(root: Path, *, what: str, splits: Sequence[str] = ("train", "val")) -> FolderLayout:
    """Check and list ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (``what`` names the
    data set in messages)."""
    if not root.is_dir():
        raise DataError(f"--data_folder {root} not found; expected {root}/train/<class>/<image> and "
                        f"{root}/val/<class>/<image> for {what} (val/ is the test split)")
    for d in splits:
        if not (root / d).is_dir():
            raise DataError(f"{root / d} not found; expected <--data_folder>/{d}/<class>/<image> for {what} "
                            f"(val/ is the test split)")
    train_dir, test_dir = (root / d for d in splits)
    (classes, train), (test_classes, test) = scan_split(train_dir), scan_split(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        parts = [f"only in {d.name}/: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                 for d, names in ((train_dir, only_train), (test_dir, only_test)) if names]
        raise DataError(f"{test_dir} and {train_dir} must have the same class folders; they differ in "
                        f"{len(only_train) + len(only_test)} ({'; '.join(parts)})")
    return FolderLayout(root, tuple(classes), tuple(train), tuple(test))
