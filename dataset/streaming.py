"""Streaming image files through ``DataLoader`` worker processes (data too large to hold decoded).

Worker processes decode (``dataset.decode``, Pillow) and apply a per-image view
(``dataset.transforms.IMAGE_VIEWS``: RandomResizedCrop + flip for training, Resize + CenterCrop
for evaluation); the loader honours the same contract as the device-resident one
(``dataset.loader``), with two differences from a textbook DataLoader pipeline:

- workers return **uint8** tensors; conversion to float (``augment.to_unit``) and normalisation
  happen on the device after the (pinned, non-blocking) copy, which moves 4x fewer bytes;
- each sample's augmentation draws from its own ``torch.Generator``, seeded with a number drawn
  for it from the loader's ``(seed, epoch, rank)`` generator, so an epoch replays identically
  whatever the number of workers, and the training process's random state is never touched.

A file that turns out unreadable while streaming (a truncated JPEG: only decoding finds that)
stops the epoch with a one-line ``DataError`` naming the file, raised in the training process
(the worker hands the message back instead of a traceback).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .augment import to_unit
from .base import DataError, DataOptions, DataSpec, stratified_holdout
from .decode import decode
from .loader import BaseLoader
from .transforms import get_image_view

Sample = Tuple[str, int]


@dataclass
class StreamingData:
    """Image files served by worker processes: what a data set builder returns for this path."""
    spec: DataSpec
    classes: Tuple[str, ...]
    train_samples: Sequence[Sample]
    test_samples: Sequence[Sample]
    note: str = ""

    def make_loaders(self, *, options: DataOptions, batch_size: int, test_batch_size: int, device,
                     seed: int, with_index: bool, views, rank: int, world_size: int):
        from .build import Loaders
        if not isinstance(options.num_workers, int) or isinstance(options.num_workers, bool) \
                or options.num_workers < 0:
            raise DataError(f"--num_workers must be an integer >= 0, got {options.num_workers!r}")
        labels = [label for _, label in self.train_samples]
        keep, held = stratified_holdout(labels, options.val_split, options.split_seed)
        common = dict(spec=self.spec, device=device, seed=seed, num_workers=options.num_workers)
        train = StreamingLoader(self.train_samples, source_indices=torch.as_tensor(keep),
                                batch_size=batch_size, shuffle=True, views=views, with_index=with_index,
                                drop_last=options.drop_last, rank=rank, world_size=world_size,
                                role="training", **common)
        shards = dict(rank=rank, world_size=world_size, shard="batches")   # evaluation: whole batches
        test = StreamingLoader(self.test_samples, batch_size=test_batch_size, shuffle=False,
                               views=("none",), role="test", **common, **shards)
        val = StreamingLoader(self.train_samples, source_indices=torch.as_tensor(held),
                              batch_size=test_batch_size, shuffle=False, views=("none",),
                              role="validation", **common, **shards) if len(held) else None
        return Loaders(train, test, val, self.spec, self.note)


class _ImageFiles(torch.utils.data.Dataset):
    """Item ``(source index, position, seed)`` -> (uint8 views, label, position, error message)."""

    def __init__(self, samples: Sequence[Sample], views: Sequence[str], size: int):
        self.samples = samples
        self.view_fns = [get_image_view(v) for v in views]
        self.size = size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        src, pos, seed = item
        path, label = self.samples[src]
        try:
            image = decode(path)
        except DataError as exc:       # handed to the training process, which raises it
            blank = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
            return tuple(blank for _ in self.view_fns), label, pos, str(exc)
        g = torch.Generator().manual_seed(seed)
        return tuple(fn(image, self.size, g).contiguous() for fn in self.view_fns), label, pos, ""


class _EpochBatches:
    """Batch sampler reading the loader's current epoch each time a pass starts (so persistent
    workers can be kept across epochs). It holds the loader weakly: with a strong reference the
    loader -> DataLoader -> iterator -> sampler -> loader cycle is freed only by the cyclic garbage
    collector, and freeing a 2-worker loader that way was measured to take 10 s (torch joins each
    worker with a 5 s timeout) instead of 0.1 s."""

    def __init__(self, loader: "StreamingLoader"):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> "StreamingLoader":
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


class StreamingLoader(BaseLoader):
    """The loader contract over image files decoded by ``DataLoader`` workers; batches are
    ``spec.image_size`` square."""

    def __init__(self, samples: Sequence[Sample], *, spec: DataSpec, batch_size: int, device,
                 seed: int = 0, shuffle: bool = True, views=("standard",), with_index: bool = False,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 source_indices: Optional[Tensor] = None, role: str = "training",
                 shard: str = "samples"):
        all_labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        if source_indices is None:
            source_indices = torch.arange(len(samples))
        source_indices = torch.as_tensor(source_indices, dtype=torch.int64)
        super().__init__(spec, all_labels[source_indices], source_indices, batch_size=batch_size,
                         device=device, seed=seed, shuffle=shuffle, views=views,
                         with_index=with_index, drop_last=drop_last, rank=rank,
                         world_size=world_size, role=role, shard=shard)
        self.num_workers = num_workers
        self._dataset = _ImageFiles(samples, self.views, spec.image_size)
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, -1, 1, 1)
        self._loader = None

    def _data_loader(self):
        if self._loader is None:
            # its own generator: a DataLoader without one draws its workers' base seed from the
            # global generator each epoch, which would change the training process's random state
            self._loader = torch.utils.data.DataLoader(
                self._dataset, batch_sampler=_EpochBatches(self), num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(self.seed))
        return self._loader

    def __iter__(self):
        blocking = self.device.type != "cuda"
        failed = ""
        for views, labels, pos, errors in self._data_loader():
            failed = next((e for e in errors if e), "")
            if failed:
                break
            out = tuple((to_unit(v.to(self.device, non_blocking=not blocking)) - self._mean) / self._std
                        for v in views)
            images = out[0] if len(out) == 1 else out
            labels = labels.to(self.device, non_blocking=not blocking)
            if self.with_index:
                yield images, labels, pos.to(self.device, non_blocking=not blocking)
            else:
                yield images, labels
        if failed:
            self._loader = None      # frees the DataLoader now, which stops its (persistent) workers
            raise DataError(failed)
