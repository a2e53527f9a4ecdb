"""train_teacher.py end to end: several trials, manifest, setting.py, resume, NaN guard, bad flags."""
import json
import os
import re

import pytest
import torch

import setting
import train_teacher
from helper.task import ClassifierTask, StepOutput
from helper.manifest import ManifestError, add_teacher, manifest_path, read_manifest
from models.checkpoint import load_model

from builders import SUITE_DIGITS
from conftest import BIT_IDENTICAL, TEACHER_EPOCHS, Interrupt, dies_at_step, read_metrics

QUICK = ["--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--quiet", "--batch_size", "128"]


def test_three_seeds_train_register_and_load(digits_teachers):
    teachers = read_manifest(manifest_path(digits_teachers))
    assert sorted(teachers) == ["digits-resnet8-0", "digits-resnet8-1", "digits-resnet8-2"]
    names = setting.teacher_names(setting.available_teachers(digits_teachers), "digits")
    assert names == ["digits-resnet8-0", "digits-resnet8-1", "digits-resnet8-2"]
    weights = []
    for name in names:
        entry = teachers[name]
        path = setting.checked_teacher_path(name, digits_teachers)
        model = load_model(path)                       # architecture from the checkpoint
        assert model.arch == "resnet8"
        assert entry["best_acc"] > 50.0                 # digits: 10 classes, chance is 10%
        weights.append(model.conv1.weight)
        run_dir = os.path.dirname(path)
        metrics = read_metrics(run_dir)
        assert [m["epoch"] for m in metrics] == list(range(1, TEACHER_EPOCHS + 1))
        assert metrics[-1]["test_acc"] > metrics[0]["test_acc"]
        with open(os.path.join(run_dir, "args.json")) as f:
            assert json.load(f)["model"] == "resnet8"
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir))
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        assert summary["status"] == "finished" and summary["best_acc"] == pytest.approx(entry["best_acc"])
    assert not torch.equal(weights[0], weights[1])      # trials have different seeds


def test_run_folder_uses_repdistiller_naming(digits_teachers):
    folders = sorted(os.listdir(os.path.join(digits_teachers, "teachers")))
    # RepDistiller's name, then the flags the fixture sets away from their defaults
    assert re.fullmatch(r"resnet8_digits_lr_0\.05_decay_0\.0005_trial_0(_[a-z_]+~[0-9.,]+)*", folders[0]), folders[0]
    assert os.path.isfile(os.path.join(digits_teachers, "teachers", folders[0], "resnet8_best.pth"))
    ckpt = torch.load(os.path.join(digits_teachers, "teachers", folders[0], "resnet8_last.pth"),
                      map_location="cpu", weights_only=True)
    assert {"model", "epoch", "best_acc", "optimizer"} <= set(ckpt)
    assert ckpt["epoch"] == TEACHER_EPOCHS and ckpt["arch"] == "resnet8"


def _run_dir(save_dir):
    """The single teacher run folder (its name also shows the flags not at their default)."""
    (name,) = os.listdir(os.path.join(save_dir, "teachers"))
    assert name.startswith("resnet8_digits_lr_0.05_decay_0.0005_trial_0"), name
    return os.path.join(save_dir, "teachers", name)


def _final_state(save_dir):
    return torch.load(os.path.join(_run_dir(save_dir), "resnet8_last.pth"), map_location="cpu", weights_only=True)


def test_resume_gives_bit_identical_weights(tmp_path):
    args = QUICK + ["--epochs", "3", "--lr_decay_epochs", "2"] + BIT_IDENTICAL
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train_teacher.main(args + ["--save_dir", a]) == 0

    # run b also takes the step as restructured for CUDA graphs (static buffers, device-tensor lr,
    # float lr in the checkpoint): bit-identical to run a's plain step, across the resume
    static = ["--cuda_graphs", "static"]
    with dies_at_step(ClassifierTask, epoch=3, step=4), pytest.raises(Interrupt):
        train_teacher.main(args + static + ["--save_dir", b])
    assert _final_state(b)["epoch"] == 2                       # the last good checkpoint stays
    assert train_teacher.main(args + static + ["--save_dir", b, "--resume"]) == 0

    sa, sb = _final_state(a), _final_state(b)
    assert sb["epoch"] == 3
    if torch.cuda.is_available():
        # two claims in one comparison; on an H200 (2026-11-28) it failed by ~1e-3 after 3 epochs.
        # An uninterrupted static run c says which claim breaks on CUDA (no extra run on the CPU)
        c = str(tmp_path / "c")
        assert train_teacher.main(args + static + ["--save_dir", c]) == 0
        sc = _final_state(c)
        assert all(torch.equal(v, sb["model"][k]) for k, v in sc["model"].items()), "resume differs on CUDA"
        assert all(torch.equal(v, sc["model"][k]) for k, v in sa["model"].items()), \
            "--cuda_graphs static differs from the plain step on CUDA"
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    ma, mb = read_metrics(_run_dir(a)), read_metrics(_run_dir(b))
    assert [r["epoch"] for r in mb] == [1, 2, 3]
    assert [r["test_acc"] for r in ma] == [r["test_acc"] for r in mb]


def test_non_finite_loss_stops_cleanly(tmp_path, monkeypatch, capsys):
    original = ClassifierTask.train_step
    counter = {"n": 0}

    def step(self, batch, epoch, *args):
        out = original(self, batch, epoch, *args)
        if epoch == 2:
            counter["n"] += 1
            if counter["n"] == 3:
                return StepOutput(out.loss * float("nan"), out.logits, out.labels)
        return out
    monkeypatch.setattr(ClassifierTask, "train_step", step)
    save = str(tmp_path)
    code = train_teacher.main(QUICK + ["--epochs", "3", "--save_dir", save])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite training loss at epoch 2, step 3" in err and len(err.strip().splitlines()) == 1
    assert _final_state(save)["epoch"] == 1
    assert read_manifest(manifest_path(save)) == {}            # an unfinished teacher is not registered


@pytest.mark.parametrize("argv, needle", [
    (["--model", "resnet9000"], "--model 'resnet9000'"),
    (["--lr_decay_epochs", "150,x"], "--lr_decay_epochs"),
    (["--lr_decay_epochs", "180,150"], "increasing"),
    (["--epochs", "-3"], "argument --epochs: expected an integer >= 1"),
    (["--trials", "0,0"], "--trials"),
    (["--dataset", "mnist"], "--dataset"),
    (["--device", "tpu"], "--device"),
    (["--eval_batch_size", "0"], "argument --eval_batch_size: expected an integer >= 1"),
    (["--cuda_graphs", "warp"], "--cuda_graphs"),
])
def test_bad_flags_give_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    code = train_teacher.main(["--dataset", "cifar100", "--data_folder", str(tmp_path / "nowhere"),
                               "--no-download", "--epochs", "1", "--save_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "nowhere" in err and len(err.splitlines()) == 1


def test_setting_reports_stale_and_unknown_teachers(tmp_path):
    ckpt = tmp_path / "gone.pth"
    ckpt.write_bytes(b"x")
    add_teacher(manifest_path(str(tmp_path)), model="resnet8", dataset="digits", trial=0,
                checkpoint=str(ckpt), best_acc=90.0)
    assert setting.checked_teacher_path("digits-resnet8-0", str(tmp_path)) == str(ckpt)
    ckpt.unlink()
    with pytest.raises(ManifestError, match="no longer exists"):
        setting.checked_teacher_path("digits-resnet8-0", str(tmp_path))
    with pytest.raises(ManifestError, match="not in"):
        setting.checked_teacher_path("digits-resnet8-7", str(tmp_path))


def test_manual_teachers_in_setting_are_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(setting, "MANUAL_TEACHERS", {
        "cifar100-resnet32x4-0": {"path": str(tmp_path / "r.pth"), "model": "resnet32x4", "dataset": "cifar100"}})
    teachers = setting.available_teachers(str(tmp_path))
    assert setting.teacher_names(teachers, "cifar100") == ["cifar100-resnet32x4-0"]
    with pytest.raises(ManifestError, match="setting.py"):
        setting.checked_teacher_path("cifar100-resnet32x4-0", str(tmp_path))
