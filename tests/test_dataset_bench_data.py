"""benchmarks/bench_data.py --imagefolder must not rot: a tiny run (no timing assertions)."""
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)


def test_image_folder_benchmark_runs_small(capsys):
    pytest.importorskip("PIL.Image")
    import bench_data
    rows = bench_data.main(["--imagefolder", "30", "--image_px", "16", "--batch_size", "8", "--batches", "2",
                            "--num_workers", "0", "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert [r[0] for r in rows] == ["imagefolder device-resident", "imagefolder streaming, 0 workers",
                                    "plain DataLoader + Pillow, 0 workers"]
    assert all(r[1] == 16 and r[2] > 0 for r in rows)                 # 2 batches of 8, one epoch
    assert "decoding all 40 files once" in out and "ratio device-resident / plain DataLoader" in out
    assert '"resident_images_per_s"' in out
