"""Summaries of run folders: means and deviations, interrupted runs, plots, --val_split."""
import json
import os
import statistics

import pytest
import torch

import train_teacher
from helper.task import ClassifierTask
from helper.results import find_runs, tables

from builders import SUITE_DIGITS
from conftest import Interrupt, dies_at_step, run_student

SUMMARIZE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "summarize.py")
TINY = ["--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--epochs", "2", "--batch_size", "256", "--quiet"]


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory):
    """Three finished one-configuration trials and one interrupted trial."""
    save = str(tmp_path_factory.mktemp("results"))
    assert train_teacher.main(TINY + ["--trials", "3", "--save_dir", save]) == 0
    with dies_at_step(ClassifierTask, epoch=2), pytest.raises(Interrupt):
        train_teacher.main(TINY + ["--trial", "3", "--save_dir", save])
    return save


def summaries(save):
    out = {}
    for folder in os.listdir(os.path.join(save, "teachers")):
        path = os.path.join(save, "teachers", folder, "summary.json")
        if os.path.exists(path):
            with open(path) as f:
                out[folder] = json.load(f)
    return out


def test_means_and_deviations_match_the_run_files(teacher_runs):
    finished = summaries(teacher_runs)
    assert len(finished) == 3
    last = [s["last_acc"] for s in finished.values()]
    best = [s["best_acc"] for s in finished.values()]
    (kind, groups, header, rows), = tables(find_runs(teacher_runs))
    assert kind == "teacher" and len(rows) == 1
    row = dict(zip(header, rows[0]))
    assert row["trials"] == "3"
    assert row["last top-1"] == f"{statistics.mean(last):.2f} ± {statistics.stdev(last):.2f}"
    assert row["best top-1"] == f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}"
    assert row["interrupted"] == "1"                       # marked, not averaged in
    assert len(groups[0].finished) == 3 and len(groups[0].interrupted) == 1


def test_summarize_script_prints_table_writes_csv_and_plots(teacher_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import importlib.util
    spec = importlib.util.spec_from_file_location("summarize", SUMMARIZE)
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    csv_path, plots = tmp_path / "t.csv", tmp_path / "plots"
    assert summarize.main([teacher_runs, "--csv", str(csv_path), "--plot", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "| model" in out and "resnet8" in out
    assert csv_path.read_text().splitlines()[0].startswith("kind,model,loss,trials")
    pngs = list((plots / "teachers").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_two_methods_three_trials_compare(student_save_dir, tmp_path):
    for method in ("AVERAGE_LOSS", "CAMKD"):
        for trial in range(2):
            code, _, _ = run_student(student_save_dir, "--teacher_num", "3", "--ensemble_method", method,
                                     "--epochs", "1", "--batch_size", "256", "--trial", str(trial))
            assert code == 0
    (kind, groups, header, rows), = tables(find_runs(os.path.join(student_save_dir, "students")))
    assert kind == "student"
    by_method = {dict(zip(header, r))["method"]: dict(zip(header, r)) for r in rows}
    assert set(by_method) == {"AVERAGE_LOSS", "CAMKD"}
    assert all(r["trials"] == "2" and r["teachers"] == "3x resnet8" for r in by_method.values())
    assert all("±" in r["best teacher"] or r["best teacher"] != "-" for r in by_method.values())


def test_val_split_best_is_chosen_on_validation_and_never_trained_on(tmp_path, monkeypatch):
    import dataset
    captured = {}
    from helper import teacher_run
    original = teacher_run.loaders_from_args

    def capture(*a, **k):
        captured["loaders"] = original(*a, **k)
        return captured["loaders"]
    monkeypatch.setattr(teacher_run, "loaders_from_args", capture)
    save = str(tmp_path)
    assert train_teacher.main(TINY + ["--val_split", "10", "--save_dir", save]) == 0
    loaders = captured["loaders"]
    train_idx = set(loaders.train.source_indices.tolist())
    val_idx = set(loaders.val.source_indices.tolist())
    assert len(val_idx) == 100 and not train_idx & val_idx
    served = set()
    loaders.train.set_epoch(1)
    for batch in dataset.build_loaders("digits", batch_size=256, device="cpu", seed=0, with_index=True,
                                       val_split=10).train:
        served |= set(batch[2].tolist())
    assert {int(loaders.train.source_indices[i]) for i in served} <= train_idx
    (folder,) = os.listdir(os.path.join(save, "teachers"))
    with open(os.path.join(save, "teachers", folder, "summary.json")) as f:
        summary = json.load(f)
    assert summary["best_chosen_on"] == "validation" and summary["best_val_acc"] is not None
    with open(os.path.join(save, "teachers", folder, "metrics.jsonl")) as f:
        assert all("val_acc" in json.loads(line) for line in f)
    ckpt = torch.load(os.path.join(save, "teachers", folder, "resnet8_last.pth"), weights_only=True)
    assert "test_acc" in ckpt and "best_acc" in ckpt


def test_run_info_records_versions_seed_and_command(teacher_runs):
    folder = sorted(os.listdir(os.path.join(teacher_runs, "teachers")))[0]
    with open(os.path.join(teacher_runs, "teachers", folder, "run_info.json")) as f:
        info = json.load(f)
    assert {"torch", "python", "numpy", "device", "git_commit", "command", "seed"} <= set(info)
    assert info["torch"] == torch.__version__ and info["seed"] == 0
