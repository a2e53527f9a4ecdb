"""What every data set reports and how data sets are found: ``DataSpec``, ``DataError``,
``DataOptions``, the registry, and two small helpers (seed mixing, stratified hold-out).

A data set is a builder ``fn(options: DataOptions) -> source`` registered under a ``--dataset``
name together with a spec function, so that ``get_spec`` can answer "how many classes, what
mean/std" without loading (or downloading) the data where it can. A builder returns either a
``TensorData`` (the whole data set as uint8 tensors, kept on the training device and augmented
there: CIFAR, digits, synthetic, tinyimagenet, a small imagefolder) or another source with a
``make_loaders`` method (``dataset.streaming.StreamingData``: image files decoded by workers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor


class DataError(ValueError):
    """Bad data input (unknown name, missing folder/file, corrupt file, bad flag value).

    The message is always a single line that names the flag or file and what was expected, so a
    script can print it as ``error: <message>`` and exit."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Collapse any whitespace run (newlines included) into one space."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class DataSpec:
    """What a model and a training script need to know about a data set.

    ``mean``/``std`` are per channel, in [0, 1] pixel units: loaders serve ``(x/255 - mean)/std``.
    ``num_train``/``num_test`` are the sizes of the official splits (for a loaded data set: what
    was actually read); a ``--val_split`` hold-out is taken out of ``num_train``.
    """
    name: str
    num_classes: int
    image_size: int
    channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_train: int
    num_test: int


@dataclass
class DataOptions:
    """Everything about *which data* and *where*, independent of how it is batched.

    Field names equal the command-line destinations of ``add_data_arguments`` so that
    ``loaders_from_args`` can copy them over; ``url``/``md5`` override the official archive (tests
    use a local file:// or http://127.0.0.1 URL). ``split_seed`` and ``synthetic_seed`` are *data*
    seeds, deliberately not the training seed: teachers and students trained with different
    seeds must see the same validation hold-out and the same synthetic images.
    """
    data_folder: str = "./data"
    download: bool = True
    synthetic_train: int = 50000
    synthetic_test: int = 10000
    synthetic_classes: int = 100
    synthetic_size: int = 32
    synthetic_seed: int = 0
    val_split: int = 0
    split_seed: int = 0
    num_workers: int = 8
    drop_last: bool = False
    verify: bool = True
    img_size: Optional[int] = None
    url: Optional[str] = None
    md5: Optional[str] = None


@dataclass
class TensorData:
    """A whole data set in memory: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""
    spec: DataSpec
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: Tuple[str, ...] = ()
    note: str = ""          # the one line a run prints about this data (empty: a generic line)

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != self.spec.channels:
                raise DataError(f"{self.spec.name} {split} images must be uint8 [N, "
                                f"{self.spec.channels}, H, W], got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.spec.name} {split} labels must be int64 [{x.shape[0]}], "
                                f"got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.spec.num_classes):
                raise DataError(f"{self.spec.name} {split} labels must lie in "
                                f"0..{self.spec.num_classes - 1}, got {int(y.min())}..{int(y.max())}")


# -- registry -------------------------------------------------------------------------------------
SpecFn = Callable[[DataOptions], DataSpec]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    build: Callable[[DataOptions], object]
    spec: SpecFn
    description: str = ""
    img_size: bool = False      # whether --img_size applies (else the data set has a fixed size)


DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, spec: Union[DataSpec, SpecFn], description: str = "",
                     img_size: bool = False):
    """Register ``build(options) -> TensorData | other source`` under ``--dataset name``.

    ``spec`` is the data set's ``DataSpec`` or a function of the options returning it (for data
    sets whose class count depends on flags or on a folder); it should not need the data itself
    (an image folder held on the device computes its mean/std from its pixels, so its spec decodes
    it). ``img_size``: the data set honours ``--img_size`` (``options.img_size``); for the others
    an ``--img_size`` other than their own size is an error.
    Adding a data set is this one decorator: ``--dataset`` choices are read from the registry."""
    def wrap(fn):
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is registered twice")
        spec_fn = spec if callable(spec) else (lambda options, _s=spec: _s)
        DATASETS[name] = DatasetEntry(name, fn, spec_fn, description or (fn.__doc__ or "").strip()
                                      .split("\n")[0], img_size)
        return fn
    return wrap


def dataset_names() -> Sequence[str]:
    return sorted(DATASETS)


def get_entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (--dataset); expected one of: "
                        f"{', '.join(dataset_names())}")
    return DATASETS[name]


def get_spec(name: str, options: Optional[DataOptions] = None, **overrides) -> DataSpec:
    """The ``DataSpec`` of data set ``name``, as far as possible without loading it: no file is
    read for CIFAR, digits and synthetic data; the folder data sets list their files (and
    ``imagefolder`` reads image headers, and decodes a folder it would hold on the device, whose
    mean/std come from its pixels).

    Note that for CIFAR this is the official spec (50,000/10,000 images); a loaded data set (e.g.
    ``Loaders.spec``) reports what it actually read."""
    entry = get_entry(name)
    options = make_options(options, **overrides)
    check_img_size(entry, options)
    return entry.spec(options)


def check_img_size(entry: DatasetEntry, options: DataOptions) -> None:
    """``--img_size`` must be a positive integer, and equal the fixed size of a data set that
    does not honour it."""
    size = options.img_size
    if size is None:
        return
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise DataError(f"--img_size must be an integer >= 1, got {size!r}")
    if not entry.img_size:
        native = entry.spec(make_options(options, img_size=None)).image_size
        if size != native:
            takers = ", ".join(n for n in dataset_names() if DATASETS[n].img_size)
            raise DataError(f"--img_size {size}: --dataset {entry.name} has a fixed image size ({native} px)"
                            f"; --img_size applies to {takers}"
                            + (" (synthetic data: --synthetic_size)" if entry.name == "synthetic" else ""))


def make_options(options: Optional[DataOptions] = None, **overrides) -> DataOptions:
    base = options if options is not None else DataOptions()
    unknown = sorted(set(overrides) - set(DataOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown data option(s) {', '.join(unknown)}; expected some of: "
                        f"{', '.join(DataOptions.__dataclass_fields__)}")
    values = {**base.__dict__, **{k: v for k, v in overrides.items()}}
    return DataOptions(**values)


def data_folder(options: DataOptions) -> str:
    return os.path.expanduser(str(options.data_folder))


# -- helpers ---------------------------------------------------------------------------------------
def mix_seed(*parts: int) -> int:
    """A 63-bit torch seed from integers (e.g. seed, epoch, stream, rank).

    numpy's ``SeedSequence`` hashes its entropy with a fixed, documented algorithm, so nearby
    inputs (seed 1 epoch 2 vs. seed 2 epoch 1) give unrelated streams and the value never changes
    between versions."""
    for p in parts:
        if int(p) < 0:
            raise DataError(f"seeds and epochs must be non-negative integers, got {p}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def stratified_holdout(labels: np.ndarray, per_class: int, seed: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..N-1`` into (kept, held_out), holding out ``per_class`` of each class.

    Rule (stable forever: ``RandomState`` streams are frozen by numpy): one
    ``np.random.RandomState(seed)``; for each class c in increasing order that has samples, the
    positions of class c in increasing order are permuted with ``permutation`` and the first
    ``per_class`` of them are held out. Both outputs are sorted. Every class must keep at least
    one sample."""
    labels = np.asarray(labels)
    per_class = int(per_class)
    if per_class < 0:
        raise DataError(f"--val_split must be >= 0 images per class, got {per_class}")
    if per_class == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rs = np.random.RandomState(int(seed))
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise DataError(f"--val_split {per_class} leaves no training image for class {int(c)} "
                            f"(it has {len(idx)}); expected fewer images per class than that")
        held.append(idx[rs.permutation(len(idx))[:per_class]])
    held_out = np.sort(np.concatenate(held))
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out
