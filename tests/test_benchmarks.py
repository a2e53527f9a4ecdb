"""The benchmarks must not rot: each runs at a tiny size (no timing assertions)."""
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)


@pytest.mark.slow
def test_student_benchmark_runs_small(capsys):
    import bench_student
    rows = bench_student.main(["--device", "cpu", "--size", "128", "--steps", "1", "--warmup", "1",
                               "--teachers", "resnet8", "resnet8", "--student", "resnet8", "--classes", "10",
                               "--num_workers", "0", "--batch_size", "32"])
    out = capsys.readouterr().out
    assert [r[:2] for r in rows] == [(m, g) for m in ["AVERAGE_LOSS", "CAMKD", "AEKD"] for g in ["off", "capture"]]
    assert all(r[2] > 0 and r[3] > 0 for r in rows)
    assert "ratio" in out and "ours (capture): AEKD step time / AVERAGE_LOSS step time" in out
    assert "--cuda_graphs capture: the step runs eagerly (device cpu is not CUDA)" in out


def test_data_benchmark_runs_small(capsys):
    import bench_data
    bench_data.main(["--size", "256", "--batches", "2", "--num_workers", "0"])
    assert "ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_teacher_benchmark_runs_small(capsys):
    import bench_teacher
    rows = bench_teacher.main(["--device", "cpu", "--model", "resnet8", "--size", "64", "--steps", "1",
                               "--warmup", "1", "--classes", "10", "--num_workers", "0", "--batch_size", "16"])
    out = capsys.readouterr().out
    assert [r[0] for r in rows] == ["off", "capture"]
    assert all(r[1] > 0 and r[2] > 0 for r in rows)
    assert "ratio" in out and "--cuda_graphs capture: the step runs eagerly (device cpu is not CUDA)" in out


def test_compare_graphs_builds_and_steps_its_tasks_on_the_cpu():
    """benchmarks/compare_graphs.py runs only on a GPU: its tasks and steps are checked here, with
    the static step (what capture replays) against the plain eager step: bit-identical on the CPU."""
    import argparse
    import torch
    import compare_graphs
    args = argparse.Namespace(teachers=["resnet8", "resnet8"], student="resnet8", classes=10, amp=False)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    for kind, method in (("teacher", None), ("student", "CAMKD")):
        static = compare_graphs.train(compare_graphs.make_task(kind, method, args, "cpu"), "static", batches, args, "cpu")
        plain = compare_graphs.train(compare_graphs.make_task(kind, method, args, "cpu"), "off", batches, args, "cpu")
        same, worst = compare_graphs.compare(static, plain)
        assert same and worst == 0.0, kind
