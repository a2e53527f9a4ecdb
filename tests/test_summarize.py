"""scripts/summarize.py (helper/results.py's reading of run folders) on any file: a corrupt file, a
figure that is no finite number (the toolkit writes non-finite floats as strings), a list where a
number belongs: the run is skipped with one line naming the file, the rest is summarised. A data
set's own flags do not split or label the runs of another data set."""
import json
import os
import sys

import pytest

from helper.results import find_runs, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def summarize():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import summarize
        yield summarize
    finally:
        sys.path.remove(os.path.join(ROOT, "scripts"))


def fake_run(root, name, acc, args=None, **files):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    content = {"args.json": json.dumps({"model": "resnet8", "loss": "ce", "trial": name, "epochs": 1, **(args or {})}),
               "summary.json": json.dumps({"status": "finished", "last_acc": acc, "best_acc": acc}),
               "metrics.jsonl": json.dumps({"epoch": 1, "test_acc": acc}) + "\n"}
    content.update(files)
    for file, text in content.items():
        with open(os.path.join(folder, file), "w") as f:
            f.write(text)
    return folder


@pytest.mark.parametrize("bad_file, text, why", [
    ("summary.json", '{"status": "fini', "Unterminated string"),
    ("args.json", "[1, 2]", "expected a JSON object, got list"),
    ("metrics.jsonl", '{"epoch": 1}\nnot json\n{"epoch": 3}\n', "line 2"),
    ("summary.json", '{"status": "finished", "last_acc": "NaN", "best_acc": 99.0}', "'last_acc' is 'NaN', expected a finite number"),
    ("summary.json", '{"status": "finished", "last_acc": 99.0, "best_acc": [99, 98]}', "'best_acc' is [99, 98]"),
    ("summary.json", '{"status": "finished", "last_acc": 99.0, "best_acc": NaN}', "'best_acc' is nan"),
    ("summary.json", '{"status": ["finished"], "last_acc": 99.0, "best_acc": 99.0}', "'status' is ['finished']"),
    ("args.json", '{"model": ["resnet8"], "trial": "2"}', "'model' is ['resnet8'], expected a string"),
    ("args.json", '{"model_s": "resnet8", "teacher_acc": ["nan"]}', "'teacher_acc' is ['nan']"),
    ("args.json", '{"model_s": "resnet8", "ensemble_acc": "inf"}', "'ensemble_acc' is 'inf'"),
    ("metrics.jsonl", '{"epoch": 1, "test_acc": {"top1": 99}}\n', "line 1: 'test_acc' is {'top1': 99}"),
    ("metrics.jsonl", '{"epoch": 1.5, "test_acc": 99}\n', "line 1: 'epoch' is 1.5"),
])
def test_a_run_with_a_file_it_cannot_read_is_skipped_naming_it(tmp_path, capsys, summarize, bad_file, text, why):
    fake_run(str(tmp_path), "0", 50.0)
    fake_run(str(tmp_path), "1", 70.0)
    bad = fake_run(str(tmp_path), "2", 99.0, **{bad_file: text})
    assert summarize.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert os.path.join(bad, bad_file) in err and why in err and len(err.strip().splitlines()) == 1, err
    assert "60.00 ± 14.14" in out and "99" not in out


def test_the_toolkits_own_non_finite_metrics_are_figures_not_corruption(tmp_path, summarize):
    pytest.importorskip("matplotlib")
    metrics = "".join(json.dumps({"epoch": e, "test_acc": 50.0, "train_loss": v, "test_loss": "inf"}) + "\n"
                      for e, v in ((1, 2.0), (2, "nan")))
    fake_run(str(tmp_path), "0", 50.0, **{"metrics.jsonl": metrics})
    fake_run(str(tmp_path), "1", 60.0)
    runs = find_runs(str(tmp_path), on_skip=lambda *a: pytest.fail(f"skipped {a}"))
    assert len(runs) == 2
    assert summarize.main([str(tmp_path), "--plot", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "teachers" / "group00_curves.png").stat().st_size > 1000


def test_a_partial_last_metrics_line_is_not_corruption(tmp_path):
    fake_run(str(tmp_path), "0", 50.0, **{"metrics.jsonl": '{"epoch": 1, "test_acc": 50.0}\n{"epoch": 2, "te'})
    runs = find_runs(str(tmp_path), on_skip=lambda *a: pytest.fail(f"skipped {a}"))
    assert [m["epoch"] for m in runs[0].metrics] == [1]


def test_synthetic_data_flags_neither_split_nor_label_digits_runs(tmp_path):
    digits = {"dataset": "digits", "synthetic_train": 50000}
    fake_run(str(tmp_path), "0", 50.0, args=digits)
    fake_run(str(tmp_path), "1", 70.0, args=dict(digits, synthetic_train=64))      # a flag digits ignores
    fake_run(str(tmp_path), "2", 30.0, args={"dataset": "synthetic", "synthetic_train": 64})
    (_, groups, header, rows), = tables(find_runs(str(tmp_path)))
    by_data = {row[header.index("dataset")]: dict(zip(header, row)) for row in rows}
    assert sorted(by_data) == ["digits", "synthetic"] and len(groups) == 2
    assert by_data["digits"]["trials"] == "2" and by_data["digits"]["synthetic_train"] == ""
    assert by_data["synthetic"]["synthetic_train"] == "64"
