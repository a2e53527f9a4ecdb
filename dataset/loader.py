"""Loaders: what the training loop iterates over.

Interface (shared by the device-resident loader here and the ImageNet folder loader):

- iterating yields ``(images, labels)``, or ``(images, labels, index)`` with ``with_index=True``;
  ``images`` is float32, normalised, on the loader's device (a tuple of tensors, one per view,
  when several ``views`` were asked for); ``labels`` int64; ``index`` int64 = the sample's
  position ``0..num_samples-1`` in the set this loader serves (what contrastive memory banks key on);
- ``len(loader)``: batches per epoch (on each rank); ``num_samples``: size of the served set;
  ``batch_size``; ``spec``; ``labels``: a CPU LongTensor with the label of every served position;
  ``source_indices``: CPU LongTensor, position -> index in the data set's original split (so a
  test can check that a ``--val_split`` hold-out never reaches the training loader);
- ``set_epoch(epoch)``: the order and the augmentation of an epoch depend only on
  ``(seed, epoch)`` (and the rank), through ``torch.Generator``\\ s seeded from them when iteration
  starts. Iterating again after ``set_epoch(e)`` replays epoch e exactly, which is what makes a
  resumed run bit-identical. Like ``DistributedSampler``, the epoch does not advance by itself:
  call ``set_epoch`` every epoch, or every epoch repeats epoch 0's order.

Distributed (``rank``/``world_size``), two ways of sharding (``shard``):

- ``"samples"`` (training): every rank draws the same permutation of the served set and takes
  every ``world_size``-th element of it starting at ``rank`` (``DistributedSampler``'s rule), so
  shards are disjoint. Batch counts must be equal on all ranks or collective ops hang: with
  ``drop_last`` the permutation's tail is cut to a multiple of ``world_size`` and incomplete
  batches are dropped; without it the permutation is padded by repeating its head (a few samples
  are seen twice per epoch) and the last batch may be smaller.
- ``"batches"`` (evaluation): the unsharded loader's batches are dealt out whole, batch ``k`` to
  rank ``k % world_size``; nothing is padded or repeated, so the ranks' batches together are
  exactly the single-process loader's batches (each sample once, with the same batch
  neighbours), and a rank may serve one batch fewer than another, or none.
  ``batch_numbers()`` says which of the ``total_batches`` this rank serves, in order: what
  ``helper.evaluate`` needs to add the ranks' sums up in the single-process order.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .augment import get_augmentation
from .base import DataError, DataSpec, mix_seed

STREAM_SHUFFLE, STREAM_AUGMENT = 1, 2
SHARDS = ("samples", "batches")


def as_views(views: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    views = (views,) if isinstance(views, str) else tuple(views)
    if not views or not all(isinstance(v, str) for v in views):
        raise DataError(f"views must be a non-empty sequence of augmentation names, got {views!r}")
    return views


def total_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches of the unsharded loader."""
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


def dealt_batches(num_samples: int, batch_size: int, *, rank: int, world_size: int,
                  drop_last: bool) -> range:
    """The numbers of the unsharded loader's batches that ``rank`` serves when whole batches are
    dealt out (``shard="batches"``): ``rank, rank + world_size, ...``."""
    return range(rank, total_batches(num_samples, batch_size, drop_last), world_size)


def epoch_positions(num_samples: int, *, shuffle: bool, seed: int, epoch: int, rank: int,
                    world_size: int, drop_last: bool, shard: str = "samples",
                    batch_size: int = 1) -> Tensor:
    """The positions (CPU int64) that ``rank`` serves in ``epoch``, in order (``batch_size``
    matters for ``shard="batches"`` only)."""
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, STREAM_SHUFFLE))
        order = torch.randperm(num_samples, generator=g)
    else:
        order = torch.arange(num_samples)
    if world_size > 1 and shard == "batches":
        b = batch_size
        parts = [order[k * b:(k + 1) * b] for k in dealt_batches(num_samples, b, rank=rank,
                                                                   world_size=world_size,
                                                                   drop_last=drop_last)]
        return torch.cat(parts) if parts else order[:0]
    if world_size > 1:
        if drop_last:
            order = order[: (num_samples // world_size) * world_size]
        else:
            total = math.ceil(num_samples / world_size) * world_size
            if total > num_samples:
                reps = math.ceil(total / num_samples)
                order = torch.cat([order, order.repeat(reps)[: total - num_samples]])
        order = order[rank::world_size]
    return order


class BaseLoader:
    """Bookkeeping shared by all loaders: sizes, sharding, epochs, validation of arguments."""

    def __init__(self, spec: DataSpec, labels: Tensor, source_indices: Tensor, *, batch_size: int,
                 device, seed: int, shuffle: bool, views, with_index: bool, drop_last: bool,
                 rank: int, world_size: int, role: str, shard: str = "samples"):
        if shard not in SHARDS:
            raise DataError(f"shard must be one of {', '.join(SHARDS)}, got {shard!r}")
        for flag, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                 ("rank", rank, 0), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DataError(f"{flag} must be an integer >= {low}, got {value!r}")
        if rank >= world_size:
            raise DataError(f"rank must lie in 0..{world_size - 1} (world_size {world_size}), "
                            f"got {rank}")
        self.spec = spec
        self.role = role
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.views = as_views(views)
        self.with_index = bool(with_index)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size, self.shard = rank, world_size, shard
        self.source_indices = source_indices.to("cpu", torch.int64)
        self.labels = labels.to("cpu", torch.int64)
        self.num_samples = len(self.source_indices)
        self.epoch = 0
        if self.num_samples == 0:
            raise DataError(f"the {spec.name} {role} set is empty")
        if self.total_batches == 0 or (len(self) == 0 and not self.deals_batches):
            raise DataError(f"--batch_size {batch_size} is larger than the {self.samples_per_epoch} "
                            f"{role} samples per rank of {spec.name} with --drop_last; expected at "
                            f"most {self.samples_per_epoch}")

    @property
    def deals_batches(self) -> bool:
        """Whether this loader is one rank's share of whole batches (``shard="batches"``)."""
        return self.world_size > 1 and self.shard == "batches"

    @property
    def total_batches(self) -> int:
        """Batches per epoch of all ranks together when whole batches are dealt out; else
        ``len(self)``."""
        if self.deals_batches:
            return total_batches(self.num_samples, self.batch_size, self.drop_last)
        return len(self)

    def batch_numbers(self) -> range:
        """Which of the ``total_batches`` this rank's batches are, in the order it serves them."""
        if self.deals_batches:
            return dealt_batches(self.num_samples, self.batch_size, rank=self.rank,
                                 world_size=self.world_size, drop_last=self.drop_last)
        return range(len(self))

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank serves per epoch (padding included, dropped tail excluded)."""
        if self.world_size == 1:
            return self.num_samples
        if self.deals_batches:
            b, n = self.batch_size, self.num_samples
            return sum(min(b, n - k * b) for k in self.batch_numbers())
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        if self.deals_batches:
            return len(self.batch_numbers())
        n = self.samples_per_epoch
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise DataError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def positions(self) -> Tensor:
        """This rank's positions for the current epoch, cut to ``len(self)`` batches."""
        pos = epoch_positions(self.num_samples, shuffle=self.shuffle, seed=self.seed,
                              epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                              drop_last=self.drop_last, shard=self.shard, batch_size=self.batch_size)
        return pos[: len(self) * self.batch_size] if self.drop_last else pos

    def augment_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, STREAM_AUGMENT,
                                                      self.rank))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.spec.name} {self.role}: {self.num_samples} samples, "
                f"batch {self.batch_size}, {len(self)} batches, views {self.views}, "
                f"device {self.device})")


class DeviceLoader(BaseLoader):
    """Serves a uint8 tensor data set that lives on the training device, augmenting on the device.

    ``images``/``labels`` are the whole split (shared, not copied, between a training and a
    validation loader); ``source_indices`` selects the served subset (default: all). Per batch:
    one ``index_select`` of uint8 images, one batched augmentation per view, one normalisation --
    no Python loop over images, no worker processes, no host-to-device copies.
    """

    def __init__(self, images: Tensor, labels: Tensor, spec: DataSpec, *, batch_size: int, device,
                 seed: int = 0, shuffle: bool = True, views=("standard",), with_index: bool = False,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 source_indices: Optional[Tensor] = None, role: str = "training",
                 shard: str = "samples"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                            f"{tuple(images.shape)}")
        if source_indices is None:
            source_indices = torch.arange(images.shape[0])
        source_indices = torch.as_tensor(source_indices, dtype=torch.int64)
        super().__init__(spec, labels.cpu()[source_indices], source_indices, batch_size=batch_size,
                         device=device, seed=seed, shuffle=shuffle, views=views,
                         with_index=with_index, drop_last=drop_last, rank=rank,
                         world_size=world_size, role=role, shard=shard)
        self._augment = [get_augmentation(v) for v in self.views]
        self._images = images.to(self.device)
        self._all_labels = labels.to(self.device, torch.int64)
        self._source = self.source_indices.to(self.device)
        c = images.shape[1]
        if len(spec.mean) != c or len(spec.std) != c:
            raise DataError(f"{spec.name}: mean/std need {c} values, got {spec.mean}/{spec.std}")
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)

    def normalise(self, x: Tensor) -> Tensor:
        """[0,1] floats -> ``(x - mean) / std``."""
        return (x - self._mean) / self._std

    def __iter__(self):
        pos = self.positions().to(self.device)
        gen = self.augment_generator()
        b = self.batch_size
        for i in range(len(self)):
            p = pos[i * b:(i + 1) * b]
            src = self._source[p]
            raw = self._images.index_select(0, src)
            labels = self._all_labels[src]
            views = tuple(self.normalise(fn(raw, gen)) for fn in self._augment)
            images = views[0] if len(views) == 1 else views
            yield (images, labels, p) if self.with_index else (images, labels)
