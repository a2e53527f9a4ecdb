"""benchmarks/compare_graphs.py's group cases (issue 28 item 2) on the CPU: the group is built and
stepped as on a GPU, and its static step (what capture replays: the group's static buffers, each
member's restructured step) equals the plain eager group step bit for bit, for convolutional
students and for DeiT-Tiny students whose drop path draws random numbers inside every step (each
member in its own stream). The solo cases: tests/test_benchmarks.py."""
import argparse
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import compare_graphs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batches(n=2, B=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(B, 3, 32, 32, generator=g), torch.randint(0, 10, (B,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("drop_path", [0.0, pytest.param(0.1, marks=pytest.mark.slow)])   # 0.1: two DeiT-Tiny
def test_compare_graphs_group_builds_and_steps_on_the_cpu(drop_path):
    args = argparse.Namespace(teachers=["resnet8", "resnet8"], student="resnet8", classes=10, amp=False)
    methods = ["CAMKD", "AVERAGE_LOSS"]
    data = batches()
    built = compare_graphs.make_group(methods, args, "cpu", drop_path)
    shared = built[0]
    before = [stream.state["torch"].clone() for _, _, stream in built[1]]
    static = compare_graphs.train_group(built, "static", data, args, "cpu")
    assert shared.forwards == len(data)                    # the teachers once per batch, for both members
    plain = compare_graphs.train_group(compare_graphs.make_group(methods, args, "cpu", drop_path), "off", data,
                                       args, "cpu")
    assert len(static) == len(plain) == 2
    same, worst = compare_graphs.compare_group(static, plain)
    assert same and worst == 0.0
    (la, sa), (lb, sb) = static                             # two different students, not one twice
    assert not torch.equal(la, lb)
    # with drop path every member drew inside its steps, from its own stream (which moved on)
    moved = [not torch.equal(stream.state["torch"], b) for (_, _, stream), b in zip(built[1], before)]
    assert moved == [bool(drop_path)] * 2
