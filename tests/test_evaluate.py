"""helper/evaluate.py under torchrun: the test and validation loaders deal whole batches out to the
ranks (dataset/loader.py, shard="batches"), every test image is evaluated exactly once, and the
ranks' sums add up to the single process's result bit for bit -- with a test-set size that divides
neither by the world size nor by the batch size, and with a rank that gets no batch at all."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dataset
from helper.evaluate import evaluate
from models import model_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEST_IMAGES = 23          # odd: not a multiple of 2 or 3 ranks, nor of the batch sizes below


def loaders(rank, world, batch, val_split=0):
    return dataset.build_loaders("synthetic", batch_size=4, test_batch_size=batch, device="cpu", seed=0,
                                 synthetic_train=40, synthetic_test=TEST_IMAGES, synthetic_classes=4,
                                 synthetic_size=16, val_split=val_split, rank=rank, world_size=world)


@pytest.mark.parametrize("world, batch", [(2, 8), (3, 8), (2, 32), (3, 5)])
def test_ranks_share_the_single_process_batches_exactly_once(world, batch):
    single = [b for b in loaders(0, 1, batch).test]
    seen = {}
    for rank in range(world):
        test = loaders(rank, world, batch).test
        got = list(test)
        assert test.deals_batches and len(got) == len(test) == len(test.batch_numbers())
        assert test.total_batches == len(single)
        for k, (x, y) in zip(test.batch_numbers(), got):
            assert k not in seen
            seen[k] = rank
            assert torch.equal(x, single[k][0]) and torch.equal(y, single[k][1])   # the same batch
    assert sorted(seen) == list(range(len(single)))                               # every batch once
    assert sum(len(b[1]) for b in single) == TEST_IMAGES
    assert sorted(len(loaders(r, world, batch).test) for r in range(world))[-1] - \
        sorted(len(loaders(r, world, batch).test) for r in range(world))[0] <= 1   # at most one batch apart


def test_training_loader_still_shards_samples():
    train = loaders(1, 2, 8).train
    assert not train.deals_batches and train.shard == "samples" and len(train) == 5   # 20 samples, batch 4


def test_validation_loader_deals_batches_too():
    parts = [loaders(r, 2, 3, val_split=2).val for r in range(2)]
    assert all(v.deals_batches for v in parts)
    index = [int(i) for v in parts for p in [v.positions()] for i in p]
    assert sorted(index) == list(range(8))                                         # 2 per class x 4


BATCHES = (8, 32)         # 8: 3 batches, ranks evaluate 2 and 1; 32: one batch, rank 1 evaluates nothing


def _rank_main(rank, world, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        models = [model_dict["resnet8"](num_classes=4), model_dict["wrn_16_1"](num_classes=4)]
        for m in models:                  # real running statistics, so eval-mode BatchNorm matters
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_()
                    mod.running_var.uniform_(0.5, 2.0)
        results = {}
        for batch in BATCHES:
            results[batch] = {"sharded": evaluate(models, loaders(rank, world, batch).test),
                              "alone": evaluate(models, loaders(0, 1, batch).test),   # a whole loader: no collective
                              "local": len(loaders(rank, world, batch).test)}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_evaluation_equals_the_single_process_bit_for_bit(tmp_path):
    world = 2
    # fork: the children start with this process's imports (spawn re-imports torch: 10 s more)
    mp.start_processes(_rank_main, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world,
                       start_method="fork", join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    assert [r[8]["local"] for r in results] == [2, 1] and [r[32]["local"] for r in results] == [1, 0]
    for batch in BATCHES:
        for r in results:
            assert r[batch]["sharded"] == r[batch]["alone"]                # floats compared exactly
            assert r[batch]["sharded"] == results[0][batch]["sharded"]     # every rank gets the whole result
    assert set(results[0][8]["alone"]) == {"top1", "top5", "loss", "ensemble_top1", "ensemble_top5"}


def test_streamed_test_loader_deals_batches_too(tmp_path):
    """The image-folder path (worker-decoded files) shards its evaluation the same way, a rank
    without a batch included."""
    from dataset.base import DataSpec
    from dataset.streaming import StreamingLoader
    from image_files import picture, write_image
    samples = [(str(write_image(tmp_path / f"{i}.png", picture(20, 24, i))), i % 2) for i in range(5)]
    spec = DataSpec("files", 2, 16, 3, (0.5,) * 3, (0.25,) * 3, 5, 5)

    def loader(rank, world, batch):
        return StreamingLoader(samples, spec=spec, batch_size=batch, device="cpu", shuffle=False, views=("none",),
                               role="test", rank=rank, world_size=world, shard="batches")
    for batch, local in ((2, [[0, 2], [1]]), (8, [[0], []])):
        single = list(loader(0, 1, batch))
        for rank in range(2):
            ld = loader(rank, 2, batch)
            assert list(ld.batch_numbers()) == local[rank]
            for k, (x, y) in zip(ld.batch_numbers(), ld):
                assert torch.equal(x, single[k][0]) and torch.equal(y, single[k][1])
