"""``imagenet``: ImageNet-style folders, decoded by a conventional ``DataLoader`` with workers.

Layout: ``<data_folder>/train/<class>/*.JPEG`` and ``<data_folder>/val/<class>/*.JPEG`` (the
``val`` folder is the test split; ``--val_split`` holds images out of ``train``). Class indices are
the sorted class-folder names, as ``torchvision.datasets.ImageFolder`` assigns them, and ``val``
must have the same class folders.

Why not device-resident: 1.28 M JPEGs do not fit on a GPU as pixels and need decoding, which is
CPU work, so this keeps the usual design -- worker processes decode and apply RandomResizedCrop(224)
+ horizontal flip (training) or Resize(256) + CenterCrop(224) (evaluation) -- and only changes two
things so it honours the same loader contract as the device pipeline:

- workers return **uint8** tensors; conversion to float and normalisation happen on the device
  after the (pinned, non-blocking) copy, which moves 4x fewer bytes;
- each sample's augmentation is seeded from a number drawn from the loader's ``(seed, epoch,
  rank)`` generator, inside ``torch.random.fork_rng``, so an epoch replays identically whatever
  the number of workers and without disturbing the training process's random state.

torchvision and pillow are imported only here, only when the loaders are built; without them the
error says which extra to install.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .base import DataError, DataOptions, DataSpec, data_folder, register_dataset, \
    stratified_holdout
from .loader import BaseLoader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = (("train", "train"), ("test", "val"))  # (role, folder name)
VISION_HINT = 'the ImageNet folder pipeline needs torchvision and pillow: pip install "mtkd[vision]"'


class VisionBackend:
    """Image decoding and per-view transforms from torchvision (uint8 CHW output)."""

    def __init__(self):
        try:
            import torchvision.transforms as T
            from torchvision.datasets.folder import default_loader
        except ImportError:
            raise DataError(VISION_HINT) from None
        self.load = default_loader
        self._views = {
            "standard": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(),
                                   T.PILToTensor()]),
            "none": T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()]),
        }

    def transform(self, view: str):
        if view not in self._views:
            raise DataError(f"view {view!r} is not available for the ImageNet folder pipeline; "
                            f"expected one of: {', '.join(sorted(self._views))}")
        return self._views[view]


def vision_backend():
    """The decoding backend (a seam: tests substitute a torchvision-free fake)."""
    return VisionBackend()


def scan_split(root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names and (path, label) samples of one ``<class>/<image>`` folder, sorted."""
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} not found; expected <--data_folder>/"
                        f"{root.name}/<class>/*.JPEG")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/*.JPEG")
    samples = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, _, files in os.walk(root / name, followlinks=True):
            found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise DataError(f"class folder {root / name} has no images; expected files ending in "
                            f"{', '.join(IMG_EXTENSIONS)}")
        samples += [(p, label) for p in sorted(found)]
    return classes, samples


@dataclass
class FolderData:
    spec: DataSpec
    classes: Tuple[str, ...]
    train_samples: List[Tuple[str, int]]
    test_samples: List[Tuple[str, int]]

    def make_loaders(self, *, options: DataOptions, batch_size: int, test_batch_size: int, device,
                     seed: int, with_index: bool, views, rank: int, world_size: int):
        from .build import Loaders
        if not isinstance(options.num_workers, int) or options.num_workers < 0:
            raise DataError(f"--num_workers must be an integer >= 0, got {options.num_workers!r}")
        backend = vision_backend()
        labels = [label for _, label in self.train_samples]
        keep, held = stratified_holdout(labels, options.val_split, options.split_seed)
        common = dict(backend=backend, spec=self.spec, device=device, seed=seed,
                      num_workers=options.num_workers)
        train = FolderLoader(self.train_samples, source_indices=torch.as_tensor(keep),
                             batch_size=batch_size, shuffle=True, views=views, with_index=with_index,
                             drop_last=options.drop_last, rank=rank, world_size=world_size,
                             role="training", **common)
        test = FolderLoader(self.test_samples, batch_size=test_batch_size, shuffle=False,
                            views=("none",), role="test", **common)
        val = FolderLoader(self.train_samples, source_indices=torch.as_tensor(held),
                           batch_size=test_batch_size, shuffle=False, views=("none",),
                           role="validation", **common) if len(held) else None
        return Loaders(train, test, val, self.spec)


def _scan(options: DataOptions):
    folder = Path(data_folder(options))
    if not folder.is_dir():
        raise DataError(f"--data_folder {folder} not found; expected ImageNet folders "
                        f"{folder}/train/<class>/ and {folder}/val/<class>/")
    for _, d in SPLITS:
        if not (folder / d).is_dir():
            raise DataError(f"ImageNet folder {folder / d} not found; expected <--data_folder>/"
                            f"{d}/<class>/*.JPEG")
    (classes, train), (val_classes, test) = (scan_split(folder / d) for _, d in SPLITS)
    if val_classes != classes:
        diff = sorted(set(classes) ^ set(val_classes))
        raise DataError(f"{folder}/val and {folder}/train must have the same class folders; they "
                        f"differ in {len(diff)}: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}")
    spec = DataSpec("imagenet", len(classes), 224, 3, IMAGENET_MEAN, IMAGENET_STD, len(train),
                    len(test))
    return FolderData(spec, tuple(classes), train, test)


def imagenet_spec(options: DataOptions) -> DataSpec:
    return _scan(options).spec


@register_dataset("imagenet", spec=imagenet_spec)
def build_imagenet(options: DataOptions) -> FolderData:
    """ImageNet-style train/ and val/ class folders (needs the [vision] extra)."""
    return _scan(options)


class _FolderDataset(torch.utils.data.Dataset):
    """Item ``(source index, position, seed)`` -> (uint8 views, label, position)."""

    def __init__(self, samples, backend, views: Sequence[str]):
        self.samples = samples
        self.backend = backend
        self.transforms = [backend.transform(v) for v in views]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        src, pos, seed = item
        path, label = self.samples[src]
        image = self.backend.load(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = tuple(t(image) for t in self.transforms)
        return views, label, pos


class _EpochBatches:
    """Batch sampler reading the loader's current epoch each time a pass starts (so persistent
    workers can be kept across epochs). It holds the loader weakly: with a strong reference the
    loader -> DataLoader -> iterator -> sampler -> loader cycle is freed only by the cyclic garbage
    collector, and freeing a 2-worker loader that way was measured to take 10 s (torch joins each
    worker with a 5 s timeout) instead of 0.1 s."""

    def __init__(self, loader: "FolderLoader"):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> "FolderLoader":
        return self._loader()

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        ld = self.loader
        pos = ld.positions()
        seeds = torch.randint(0, 2 ** 62, (len(pos),), generator=ld.augment_generator())
        src = ld.source_indices[pos]
        b = ld.batch_size
        for i in range(len(ld)):
            sl = slice(i * b, (i + 1) * b)
            yield list(zip(src[sl].tolist(), pos[sl].tolist(), seeds[sl].tolist()))


class FolderLoader(BaseLoader):
    """The loader contract over image files decoded by ``DataLoader`` workers."""

    def __init__(self, samples: List[Tuple[str, int]], *, backend, spec: DataSpec, batch_size: int,
                 device, seed: int = 0, shuffle: bool = True, views=("standard",),
                 with_index: bool = False, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0,
                 source_indices: Optional[Tensor] = None, role: str = "training"):
        all_labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        if source_indices is None:
            source_indices = torch.arange(len(samples))
        source_indices = torch.as_tensor(source_indices, dtype=torch.int64)
        super().__init__(spec, all_labels[source_indices], source_indices, batch_size=batch_size,
                         device=device, seed=seed, shuffle=shuffle, views=views,
                         with_index=with_index, drop_last=drop_last, rank=rank,
                         world_size=world_size, role=role)
        self.num_workers = num_workers
        self._dataset = _FolderDataset(samples, backend, self.views)
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, -1, 1, 1)
        self._loader = None

    def _data_loader(self):
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self._dataset, batch_sampler=_EpochBatches(self), num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0)
        return self._loader

    def __iter__(self):
        blocking = self.device.type != "cuda"
        for views, labels, pos in self._data_loader():
            out = tuple(((v.to(self.device, non_blocking=not blocking).float() / 255) - self._mean)
                        / self._std for v in views)
            images = out[0] if len(out) == 1 else out
            labels = labels.to(self.device, non_blocking=not blocking)
            if self.with_index:
                yield images, labels, pos.to(self.device, non_blocking=not blocking)
            else:
                yield images, labels
