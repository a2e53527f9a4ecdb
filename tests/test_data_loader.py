"""The loader contract the training loop relies on: batch counts, drop_last, indices, epochs,
distributed shards, validation hold-out, views."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import dataset
from dataset import DataError, DataSpec, DeviceLoader, build_loaders, loaders_from_args

SPEC = DataSpec("t", 10, 32, 3, (0.25, 0.5, 0.75), (0.5, 0.25, 0.125), 0, 0)
MEAN = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
STD = torch.tensor(SPEC.std).view(1, 3, 1, 1)


def make_data(n=103, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return images, labels


def loader(images, labels, **kw):
    args = dict(batch_size=10, device="cpu", seed=7)
    args.update(kw)
    return DeviceLoader(images, labels, SPEC, **args)


def raw(x):
    """Undo the normalisation (to compare against the stored uint8 images)."""
    return torch.round((x * STD + MEAN) * 255).to(torch.uint8)


def epoch(ld, e=None):
    if e is not None:
        ld.set_epoch(e)
    return list(ld)


def test_len_and_drop_last():
    images, labels = make_data(103)
    keep = loader(images, labels)
    drop = loader(images, labels, drop_last=True)
    assert (len(keep), len(drop)) == (11, 10)
    assert [len(b[1]) for b in epoch(keep)] == [10] * 10 + [3]
    assert [len(b[1]) for b in epoch(drop)] == [10] * 10
    assert keep.num_samples == drop.num_samples == 103 and keep.batch_size == 10
    with pytest.raises(DataError, match=r"--batch_size 200 is larger than the 103"):
        loader(images, labels, batch_size=200, drop_last=True)
    assert len(loader(images, labels, batch_size=200)) == 1


def test_batches_are_normalised_float_on_device_with_int64_labels():
    images, labels = make_data(20)
    x, y = next(iter(loader(images, labels)))
    assert x.dtype == torch.float32 and x.shape == (10, 3, 32, 32) and x.device.type == "cpu"
    assert y.dtype == torch.int64


def test_with_index_serves_the_stored_sample_at_that_index():
    images, labels = make_data(53)
    source = torch.arange(53)[::2]                 # serve a subset: index != source index
    ld = loader(images, labels, with_index=True, views=("none",), source_indices=source)
    assert ld.num_samples == 27 and torch.equal(ld.labels, labels[source])
    assert ld.labels.dtype == torch.int64
    seen = []
    for x, y, idx in epoch(ld, 3):
        assert idx.dtype == torch.int64
        assert torch.equal(raw(x), images[source[idx]])
        assert torch.equal(y, ld.labels[idx])
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(27))   # each sample once per epoch


def test_two_views_are_of_the_same_samples():
    images, labels = make_data(30)
    ld = loader(images, labels, with_index=True, views=("standard", "none"))
    for (aug, plain), y, idx in ld:
        assert aug.shape == plain.shape and not torch.equal(aug, plain)
        assert torch.equal(raw(plain), images[idx])
        # the augmented view is a shifted/mirrored copy: its pixel (16, 16) comes from rows
        # 12..20 and columns 12..20 (11..19 when mirrored) of the same stored image
        a = raw(aug)
        for i in range(len(y)):
            window = images[idx[i], :, 12:21, 11:21].reshape(3, -1)
            assert (window == a[i, :, 16, 16, None]).all(0).any()


def test_set_epoch_replays_an_epoch_exactly_and_epochs_differ():
    images, labels = make_data(64)
    ld = loader(images, labels, with_index=True)
    first = epoch(ld, 5)
    again = epoch(ld, 5)
    resumed = epoch(loader(images, labels, with_index=True), 5)   # a fresh process resuming
    for a, b, c in zip(first, again, resumed):
        for u, v, w in zip(a, b, c):
            assert torch.equal(u, v) and torch.equal(u, w)
    other = epoch(ld, 6)
    assert not torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in other]))
    reseeded = epoch(loader(images, labels, with_index=True, seed=8), 5)
    assert not torch.equal(first[0][2], reseeded[0][2])


def test_epoch_does_not_change_global_rng():
    images, labels = make_data(16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch(loader(images, labels), 2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n, world, drop_last", [(99, 3, False), (100, 3, True), (100, 3, False),
                                                 (5, 8, False)])
def test_distributed_shards(n, world, drop_last):
    images, labels = make_data(n)
    shards = []
    for rank in range(world):
        ld = loader(images, labels, batch_size=4, with_index=True, rank=rank, world_size=world,
                    drop_last=drop_last)
        ld.set_epoch(2)
        shards.append(torch.cat([b[2] for b in ld]).tolist())
        assert len(ld) == len(list(ld))
    assert len({len(s) for s in shards}) == 1                      # equal work on every rank
    assert len({len(loader(images, labels, batch_size=4, rank=r, world_size=world,
                           drop_last=drop_last)) for r in range(world)}) == 1
    flat = sum(shards, [])
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world) // 4 * 4 * world   # disjoint
    else:
        assert set(flat) == set(range(n))                          # covers the data
        if n % world == 0:
            assert len(flat) == n                                  # ... and is disjoint
        else:
            assert len(flat) == -(-n // world) * world             # padded by repetition


def test_bad_rank_is_an_error():
    images, labels = make_data(8)
    with pytest.raises(DataError, match="rank must lie in 0..1"):
        loader(images, labels, rank=2, world_size=2)


def test_evaluation_loader_serves_everything_in_order_unaugmented():
    loaders = build_loaders("synthetic", synthetic_train=40, synthetic_test=23, synthetic_classes=4,
                            batch_size=8, device="cpu", seed=0)
    test = loaders.test
    assert len(test) == 3 and test.views == ("none",)
    data = dataset.DATASETS["synthetic"].build(dataset.make_options(
        synthetic_train=40, synthetic_test=23, synthetic_classes=4))
    mean = torch.tensor(loaders.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaders.spec.std).view(1, 3, 1, 1)
    xs, ys = zip(*test)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, data.test_labels)
    assert torch.equal(torch.round((x * std + mean) * 255).to(torch.uint8), data.test_images)


def test_val_split_is_disjoint_stratified_and_independent_of_training_seed():
    kw = dict(synthetic_train=300, synthetic_test=10, synthetic_classes=6, val_split=5,
              batch_size=32, device="cpu", with_index=True)
    a = build_loaders("synthetic", seed=1, **kw)
    b = build_loaders("synthetic", seed=2, **kw)
    assert a.val is not None and a.val.num_samples == 30
    assert torch.equal(a.val.source_indices, b.val.source_indices)
    assert np.bincount(a.val.labels.numpy(), minlength=6).tolist() == [5] * 6
    train_src, val_src = set(a.train.source_indices.tolist()), set(a.val.source_indices.tolist())
    assert not train_src & val_src and len(train_src | val_src) == 300
    assert a.train.num_samples == 270 and len(a.train.labels) == 270
    served = set()
    for _, _, idx in a.train:
        served |= set(a.train.source_indices[idx].tolist())
    assert served == train_src                                  # never a held-out image
    assert build_loaders("synthetic", seed=1, **{**kw, "val_split": 0}).val is None
    with pytest.raises(DataError, match=r"--val_split 50 leaves no training image"):
        build_loaders("synthetic", seed=1, **{**kw, "val_split": 50})


def test_add_data_arguments_and_loaders_from_args():
    parser = dataset.add_data_arguments(argparse.ArgumentParser())
    defaults = parser.parse_args([])
    assert (defaults.dataset, defaults.data_folder, defaults.download, defaults.val_split,
            defaults.num_workers, defaults.drop_last) == ("cifar100", "./data", True, 0, 8, False)
    args = parser.parse_args(["--dataset", "synthetic", "--synthetic_train", "50",
                              "--synthetic_test", "20", "--synthetic_classes", "5", "--drop_last",
                              "--no-download", "--val_split", "2"])
    ld = loaders_from_args(args, batch_size=16, device="cpu", seed=0)
    assert ld.spec.num_classes == 5 and ld.train.drop_last and not ld.test.drop_last
    assert len(ld.train) == 40 // 16 and ld.val.num_samples == 10
    assert dataset.spec_from_args(args) == dataset.get_spec("synthetic", synthetic_train=50,
                                                            synthetic_test=20, synthetic_classes=5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "mnist"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loader_matches_cpu_loader():
    """dataset/augment.py's promise, through the loader: the same order, labels, indices and
    bit-identical normalised views (weak and strong) on CPU and CUDA for a seed and an epoch."""
    kw = dict(synthetic_train=100, synthetic_test=10, synthetic_classes=5, batch_size=32, seed=3,
              with_index=True, views=("standard", "strong"))
    cpu, gpu = (build_loaders("synthetic", device=d, **kw).train for d in ("cpu", "cuda"))
    batches = 0
    for ((wc, sc), yc, ic), ((wg, sg), yg, ig) in zip(epoch(cpu, 1), epoch(gpu, 1)):
        assert wg.device.type == "cuda" and sg.device.type == "cuda"
        assert torch.equal(yc, yg.cpu()) and torch.equal(ic, ig.cpu())
        assert torch.equal(wc, wg.cpu()) and torch.equal(sc, sg.cpu())
        batches += 1
    assert batches == len(cpu) == len(gpu)
