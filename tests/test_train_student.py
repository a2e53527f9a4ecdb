"""train_student.py end to end on digits with real teachers: every strategy learns, resume is
bit-identical, bad input gives one-line errors."""
import json
import os

import pytest
import torch

import train_student
from helper.student_step import StudentTask
from models import model_dict

from builders import student_config, student_name
from conftest import BIT_IDENTICAL, Interrupt, assert_same_checkpoints, dies_at_step, read_metrics, run_student

FAST = ["--epochs", "4", "--lr_decay_epochs", "3", "--batch_size", "32"]


@pytest.mark.slow
@pytest.mark.parametrize("method, distill", [("AVERAGE_LOSS", "kd"), ("EBKD", "kd"), ("AEKD", "kd"),
                                             ("CAMKD", "inter")])
def test_each_strategy_trains_a_student_far_above_chance(student_save_dir, method, distill):
    code, run_dir, metrics = run_student(student_save_dir, "--teacher_num", "3", "--ensemble_method", method,
                                         "--distill", distill, *FAST)
    assert code == 0
    assert metrics[-1]["test_acc"] > 50.0                      # 10 classes: chance is 10%
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    assert len(args["teacher_acc"]) == 3 and args["ensemble_acc"] > 50.0
    assert f"_3_resnet8_{method}_" in os.path.basename(run_dir)
    if method != "AVERAGE_LOSS":                                # weights are logged per teacher
        shares = [metrics[-1][f"weight_kd_t{m}"] for m in range(3)]
        assert len({round(v, 6) for v in shares}) > 1          # the strategy told the teachers apart
    ckpt = torch.load(os.path.join(run_dir, "resnet8_best.pth"), map_location="cpu", weights_only=True)
    assert ckpt["teachers"] == ["digits-resnet8-0", "digits-resnet8-1", "digits-resnet8-2"]


def test_single_teacher_is_plain_distillation(student_save_dir):
    code, run_dir, metrics = run_student(student_save_dir, "--epochs", "1", "--batch_size", "128")
    assert code == 0
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    assert args["teacher_num"] == 1 and args["ensemble_method"] == "AVERAGE_LOSS"
    name = os.path.basename(run_dir)           # CA-MKD's name, the flags not at their default, the hash
    assert name.startswith("S~resnet8_digits_kd_r~1.0_a~1.0_b~0.0_0_resnet8_img_size~16_batch_size~128_h"), name
    assert args["config_hash"] == name[-8:] and len(args["teacher_digests"]) == 1
    assert args["objective"] == "1*CE + 1*kd [AVERAGE_LOSS]"


def test_three_terms_log_their_formula_and_epoch_losses(student_save_dir):
    code, run_dir, metrics = run_student(student_save_dir, "--teacher_num", "2", "--ensemble_method", "EBKD",
                                         "--distill", "kd+attention:1000+crd:0.8@AVERAGE_LOSS", "--nce_k", "64",
                                         "--epochs", "2", "--batch_size", "256", "--skip_validation")
    assert code == 0
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    assert args["objective"] == ("1*CE + 1*kd[EBKD] + 1000*attention[EBKD] + 0.8*crd[AVERAGE_LOSS]; "
                                 "feature terms from epoch 2")
    assert [t["loss"] for t in args["objective_terms"]] == ["kd", "attention", "crd"]
    assert "loss_attention" not in metrics[0] and metrics[1]["loss_attention"] > 0    # delayed one epoch
    assert metrics[0]["loss_kd"] > 0 and metrics[1]["loss_crd"] > 0
    assert metrics[1]["train_loss"] == pytest.approx(metrics[1]["loss_cls"] + metrics[1]["loss_kd"]
                                                     + 1000 * metrics[1]["loss_attention"]
                                                     + 0.8 * metrics[1]["loss_crd"], rel=1e-4)


def test_student_resume_is_bit_identical(student_save_dir, tmp_path):
    """Includes the hint regressors (extra modules) and the optimizer's state for them."""
    args = ["--teacher_num", "2", "--ensemble_method", "CAMKD", "--distill", "hint", "--epochs", "3",
            "--batch_size", "128", "--beta_delay_epochs", "0", *BIT_IDENTICAL]
    save_b = str(tmp_path / "b")
    os.makedirs(save_b)
    with open(os.path.join(student_save_dir, "manifest.json")) as f:
        manifest = f.read()
    with open(os.path.join(save_b, "manifest.json"), "w") as f:
        f.write(manifest)
    code, run_a, _ = run_student(student_save_dir, *args)
    assert code == 0

    # run b takes the step as restructured for CUDA graphs (static buffers, device-tensor lr):
    # bit-identical to run a's plain step, across the resume
    with dies_at_step(StudentTask, epoch=3, step=5), pytest.raises(Interrupt):
        run_student(save_b, *args, "--cuda_graphs", "static")
    code, run_b, metrics_b = run_student(save_b, *args, "--cuda_graphs", "static", "--resume")
    assert code == 0
    if torch.cuda.is_available():
        # on an H200 (2026-11-28) a and b differed by ~1e-3: an uninterrupted static run c says
        # whether the resume or the static step breaks bit-identity on CUDA (no extra run on the CPU)
        save_c = str(tmp_path / "c")
        os.makedirs(save_c)
        with open(os.path.join(save_c, "manifest.json"), "w") as f:
            f.write(manifest)
        code, run_c, _ = run_student(save_c, *args, "--cuda_graphs", "static")
        assert code == 0
        assert_same_checkpoints(run_c, run_b, "distill")       # the resume
        assert_same_checkpoints(run_a, run_c, "distill")       # the static step against the plain one
    assert_same_checkpoints(run_a, run_b, "distill")
    assert [r["test_acc"] for r in read_metrics(run_a)] == [r["test_acc"] for r in metrics_b]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["--ensemble_method", "MAJORITY"], "--ensemble_method"),
    (["--distill", "telepathy"], "--distill: unknown loss 'telepathy'"),
    (["--distill", "kd+attention:lots"], "--distill: weight of attention is 'lots'"),
    (["--distill", "kd+attention:-1"], "--distill: weight of attention is '-1'"),
    (["--distill", "kd+crd@MAJORITY"], "unknown ensemble strategy 'MAJORITY' for crd"),
    (["--distill", "kd,kd"], "--distill 'kd,kd' lists kd more than once"),
    (["--distill", "kd+hint+kd"], "kd appears twice"),
    (["--distill", "kd+hint@CAMKD"], "--distill hint@CAMKD needs at least 2 teachers"),
    (["--teacher_num", "1", "--ensemble_method", "CAMKD"], "CAMKD needs at least 2 teachers"),
    (["--teacher_num", "0"], "argument --teacher_num: expected an integer >= 1"),
    (["--teachers", "a", "--path_t", "b"], "not both"),
    (["--model_s", "resnet9000"], "--model_s 'resnet9000'"),
    (["--tag", "a/b"], "--tag: 'a/b'"),
])
def test_bad_flags(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


def test_more_teachers_than_registered(student_save_dir, capsys):
    with pytest.raises(SystemExit):
        run_student(student_save_dir, "--teacher_num", "5")
    assert "only 3 teacher(s) are registered for digits" in one_line_error(capsys)


def test_unknown_teacher_name(student_save_dir, capsys):
    with pytest.raises(SystemExit):
        run_student(student_save_dir, "--teachers", "digits-resnet8-9")
    assert "digits-resnet8-9" in one_line_error(capsys)


def test_teacher_with_wrong_class_count(tmp_path, capsys):
    path = tmp_path / "resnet8_best.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict()}, path)
    code, _, _ = run_student(str(tmp_path), "--path_t", str(path), "--epochs", "1")
    assert code == 2
    err = one_line_error(capsys)
    assert "resnet8_best.pth" in err and "100 classes" in err and "10" in err


def test_teacher_checkpoint_of_unknown_architecture(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save(model_dict["resnet8"](num_classes=10).state_dict(), path)
    code, _, _ = run_student(str(tmp_path), "--path_t", str(path), "--epochs", "1")
    assert code == 2 and "weights.pth" in one_line_error(capsys)
    code, run_dir, metrics = run_student(str(tmp_path), "--path_t", str(path), "--model_t", "resnet8",
                                         "--epochs", "1", "--batch_size", "256")
    assert code == 0 and len(metrics) == 1


@pytest.mark.parametrize("argv, suffix", [
    (["--teacher_num", "3", "--ensemble_method", "CAMKD"], "_3_resnet8_CAMKD"),
    (["--teacher_num", "3", "--ensemble_method", "AEKD", "--svm_norm"], "_3_resnet8_AEKD_svm_norm"),
    (["--teacher_num", "3", "--ensemble_method", "AEKD", "-C", "0.9"], "_3_resnet8_AEKD_C~0.9"),
    (["--teacher_num", "3", "--ensemble_method", "EVIDENTIAL"], "_3_resnet8_EVIDENTIAL"),
    (["--teacher_num", "3", "--ensemble_method", "EVIDENTIAL", "--evidential_mode", "weight",
      "--evidential_calibrate", "none", "--tag", "lr-sweep_1"],
     "_3_resnet8_EVIDENTIAL_evidential_mode~weight_evidential_calibrate~none_lr-sweep_1"),
    (["--logit-stand", "--tag", "x"], "_resnet8_logit_stand_x"),
])
def test_run_name_shows_the_flags_that_tell_runs_apart(argv, suffix):
    """CA-MKD's prefix, the result flags not at their default (read from the parser, no method
    names in the code), --tag, then the configuration hash."""
    args = student_config("--dataset", "digits", *argv)
    name = student_name(args, ["resnet8"] * args.teacher_num)
    assert name.startswith("S~resnet8_digits_kd_") and name[:-10].endswith(suffix), name
    assert name[-10:-8] == "_h" and all(c in "0123456789abcdef" for c in name[-8:])
