"""From flags to loaders: ``add_data_arguments``, ``build_loaders``, ``loaders_from_args``.

``build_loaders`` returns ``Loaders(train, test, val, spec)``. The training loader shuffles and
augments (``views``); the test and validation loaders serve every sample once, in order, with the
'none' view. In a distributed run the training loader is sharded by samples (each rank a strided
share of each epoch's permutation), the test and validation loaders by whole batches
(``dataset.loader``, ``shard="batches"``): each rank evaluates its share of the single-process
loader's batches, every image exactly once (no ``DistributedSampler``-style padding, which would
count a few test images twice), and ``helper.evaluate`` adds the ranks' sums up.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import DataOptions, DataSpec, TensorData, check_img_size, dataset_names, get_entry, \
    get_spec, make_options, stratified_holdout
from .decode import byte_size
from .loader import BaseLoader, DeviceLoader


@dataclass
class Loaders:
    """The loaders of a run, the data's spec, and ``note``: one line saying what was read and how
    it is served (e.g. an image folder's device-resident or streaming pipeline), for the script to
    print."""
    train: BaseLoader
    test: BaseLoader
    val: Optional[BaseLoader]
    spec: DataSpec
    note: str = ""


# The DataOptions fields that are command-line flags (add_data_arguments defines exactly these;
# tests/test_dataset_build.py checks it). url, md5 and the data seeds are for programs only.
FLAG_OPTIONS = ("data_folder", "download", "verify", "synthetic_train", "synthetic_test",
                "synthetic_classes", "synthetic_size", "val_split", "num_workers", "drop_last",
                "img_size")


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the data flags (choices of ``--dataset`` come from the registry). Numbers use the
    project's argparse types, so a bad value is argparse's one-line error naming the flag."""
    # imported here, not at the top: ``import dataset`` (the ground floor) must not pull in every
    # loss; only the scripts, which have distiller_zoo loaded anyway, build this parser
    from distiller_zoo.argtypes import non_negative_int, positive_int
    d = DataOptions()
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="cifar100", choices=list(dataset_names()),
                   help="data set (default: %(default)s)")
    g.add_argument("--data_folder", default=d.data_folder,
                   help="where data sets live / are downloaded to; for imagenet and imagefolder the "
                        "folder holding train/ and val/ (default: %(default)s)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; a missing data set is an error")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="CIFAR: accept files that are not the official ones (your own data in CIFAR's "
                        "format); they are still read without running any code")
    g.add_argument("--img_size", type=positive_int, default=d.img_size, metavar="N",
                   help="image side in pixels for imagefolder, tinyimagenet, imagenet and digits (default: from "
                        "the data: imagefolder's most common shorter side up to 224, 64 for tinyimagenet, "
                        "224 for imagenet, 32 for digits (a multiple of 8))")
    g.add_argument("--synthetic_train", type=positive_int, default=d.synthetic_train,
                   help="synthetic: training images (default: %(default)s)")
    g.add_argument("--synthetic_test", type=positive_int, default=d.synthetic_test,
                   help="synthetic: test images (default: %(default)s)")
    g.add_argument("--synthetic_classes", type=positive_int, default=d.synthetic_classes,
                   help="synthetic: classes, at least 2 (default: %(default)s)")
    g.add_argument("--synthetic_size", type=positive_int, default=d.synthetic_size,
                   help="synthetic: image side in pixels, at least 8 (default: %(default)s)")
    g.add_argument("--val_split", type=non_negative_int, default=d.val_split,
                   help="hold out this many training images per class as a validation set "
                        "(default: %(default)s)")
    g.add_argument("--num_workers", type=non_negative_int, default=d.num_workers,
                   help="decoding worker processes of streamed image folders, and decoding threads "
                        "of image folders read onto the device (default: %(default)s)")
    g.add_argument("--drop_last", action="store_true",
                   help="drop the last incomplete training batch of each epoch")
    return parser


def build_loaders(name: str, *, batch_size: int, device, seed: int, with_index: bool = False,
                  views: Sequence[str] = ("standard",), rank: int = 0, world_size: int = 1,
                  test_batch_size: Optional[int] = None, options: Optional[DataOptions] = None,
                  **option_overrides) -> Loaders:
    """Build the training, test and (with ``val_split > 0``) validation loaders of ``name``.

    Data options (``data_folder``, ``download``, ``val_split``, ``drop_last``, ``synthetic_*``,
    ``num_workers``, ``url``/``md5`` ...) come from ``options`` and/or keyword overrides; see
    ``DataOptions``. ``seed`` drives shuffling and augmentation (with the epoch), not the data:
    the validation hold-out and synthetic images use the data seeds in ``DataOptions``.
    ``test_batch_size`` defaults to ``batch_size`` (evaluation results do not depend on it)."""
    entry = get_entry(name)
    opts = make_options(options, **option_overrides)
    check_img_size(entry, opts)
    test_batch_size = batch_size if test_batch_size is None else test_batch_size
    source = entry.build(opts)
    kw = dict(batch_size=batch_size, test_batch_size=test_batch_size, device=device, seed=seed,
              with_index=with_index, views=views, rank=rank, world_size=world_size)
    if isinstance(source, TensorData):
        return tensor_loaders(source, options=opts, **kw)
    return source.make_loaders(options=opts, **kw)


def tensor_loaders(data: TensorData, *, options: DataOptions, batch_size: int, test_batch_size: int,
                   device, seed: int, with_index: bool, views, rank: int, world_size: int) -> Loaders:
    """Device-resident loaders over an in-memory data set (copied to ``device`` once)."""
    device = torch.device(device)
    keep, held = stratified_holdout(data.train_labels.numpy(), options.val_split, options.split_seed)
    xtr, ytr = data.train_images.to(device), data.train_labels.to(device)
    xte, yte = data.test_images.to(device), data.test_labels.to(device)
    train = DeviceLoader(xtr, ytr, data.spec, batch_size=batch_size, device=device, seed=seed,
                         shuffle=True, views=views, with_index=with_index,
                         drop_last=options.drop_last, rank=rank, world_size=world_size,
                         source_indices=torch.as_tensor(keep), role="training")
    shards = dict(rank=rank, world_size=world_size, shard="batches")     # evaluation: whole batches
    test = DeviceLoader(xte, yte, data.spec, batch_size=test_batch_size, device=device, seed=seed,
                        shuffle=False, views=("none",), role="test", **shards)
    val = DeviceLoader(xtr, ytr, data.spec, batch_size=test_batch_size, device=device, seed=seed,
                       shuffle=False, views=("none",), source_indices=torch.as_tensor(held),
                       role="validation", **shards) if len(held) else None
    return Loaders(train, test, val, data.spec, data.note or resident_note(data, device))


def resident_note(data: TensorData, device) -> str:
    """The generic line for a data set held on the device."""
    s = data.spec
    size = data.train_images.numel() + data.test_images.numel()
    return (f"data: {s.name}, {len(data.train_labels)} train / {len(data.test_labels)} test images "
            f"{s.channels}x{s.image_size}x{s.image_size}, {s.num_classes} classes, held on {device} as uint8 "
            f"({byte_size(size)})")


def options_from_args(args: argparse.Namespace) -> DataOptions:
    """The ``DataOptions`` named by the flags of ``add_data_arguments`` (``args`` must come from a
    parser that has them: every one is read, none has a fallback)."""
    return DataOptions(**{k: getattr(args, k) for k in FLAG_OPTIONS})


def loaders_from_args(args: argparse.Namespace, *, batch_size: int, device, seed: int,
                      with_index: bool = False, views: Sequence[str] = ("standard",),
                      rank: int = 0, world_size: int = 1,
                      test_batch_size: Optional[int] = None) -> Loaders:
    """``build_loaders`` for the flags added by ``add_data_arguments``."""
    return build_loaders(args.dataset, batch_size=batch_size,
                         device=device, seed=seed, with_index=with_index, views=views, rank=rank,
                         world_size=world_size, test_batch_size=test_batch_size,
                         options=options_from_args(args))


def spec_from_args(args: argparse.Namespace) -> DataSpec:
    """The spec for parsed flags, without loading the data."""
    return get_spec(args.dataset, options_from_args(args))
