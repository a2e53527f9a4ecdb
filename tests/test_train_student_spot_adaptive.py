"""train_student.py --spot_adaptive on digits: attention and kd, one and three teachers (CAMKD); an exact resume."""
import math
import os

import pytest
import torch

from helper.student_step import StudentTask
from models import model_dict

from conftest import (BIT_IDENTICAL, Interrupt, assert_generalises_like_kd, assert_same_checkpoints, dies_at_step,
                      read_metrics, run_student)

FAST = ["--epochs", "3", "--batch_size", "32", "--lr_decay_epochs", "100", "--skip_validation"]


# Every case's rate drops 10x for the last epoch, as any real schedule ends low: at a constant 0.05,
# attention (weight 1000) under CAMKD left the student's BatchNorm running statistics lagging its
# weights (issue 16: test 17.2% with train 66.3%; the same weights with recomputed statistics 71.3%;
# without --spot_adaptive the same gap, 39.2% -> 69.9%), a fact of evaluating at a high rate, not of
# the routing; one teacher and kd at a constant rate swung between 20% and 40% on the suite's 16 px.
THREE = ["--ensemble_method", "CAMKD", "--lr_decay_epochs", "2"]
# One teacher starts from the neutral policy (about half the samples routed at first). On 16-px
# digits the same-family start (--policy_homo yes, every spot distilled) stays at "distil
# everywhere" for these three epochs -- a routing with no reason to move, not a frozen one -- so
# only the neutral start shows the policy training here; its start is tested in test_spot_adaptive.
ONE = ["--policy_homo", "no", "--lr_decay_epochs", "2"]
# Attention's term is a mean over the map's H*W positions of squared differences of unit-norm maps,
# so it scales as 1/(H*W): at 16 px the default -b 1000 weighs it as 4000 would at 32 px, and with
# one teacher that left the student 17 points below KD after three epochs; -b 250 is the 32-px weight.
ATTENTION_16PX = ["-b", "250"]

# The kd runs are the references of the attention runs with as many teachers (same flags but the loss).
KD_RUNS = {1: ("kd", ONE), 3: ("kd", THREE)}


def spot_args(distill, teachers, extra):
    return ("--spot_adaptive", "--distill", distill, "--teacher_num", str(teachers), *FAST, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("distill, teachers, extra", [
    ("attention", 1, ONE + ATTENTION_16PX),
    ("kd", 1, ONE),
    ("attention", 3, THREE),
    ("kd", 3, THREE),
])
def test_spot_adaptive_trains_a_student_and_the_policy(student_save_dir, shared_runs, distill, teachers, extra):
    kd_name, kd_extra = KD_RUNS[teachers]
    kd = shared_runs(*spot_args(kd_name, teachers, kd_extra))        # the kd case's own run
    if distill == "kd":
        code, run_dir, metrics = kd
    else:
        code, run_dir, metrics = run_student(student_save_dir, *spot_args(distill, teachers, extra))
    assert code == 0
    assert "_spot_adaptive_" in os.path.basename(run_dir)
    # 10 classes: chance is 10%; three short epochs of batch 32 reach 50-70% here
    assert max(m["test_acc"] for m in metrics) > 40.0, [m["test_acc"] for m in metrics]
    assert_generalises_like_kd(metrics, kd[2], f"--spot_adaptive --distill {distill}, {teachers} teacher(s)")
    spots = ["out"] if distill == "kd" else ["f1", "f2", "f3", "out"]
    keys = [f"spot_{s}" for s in spots]
    if teachers > 1:
        keys += [f"spot_{s}_t{m}" for s in spots for m in range(teachers)]
    for m in metrics:
        assert all(0.0 <= m[k] <= 1.0 for k in keys), m
        assert math.isfinite(m["policy_loss"]) and math.isfinite(m["graft_ce"])
    assert any(metrics[0][k] != metrics[-1][k] for k in keys), "the routing did not change during training"
    if teachers > 1:                                       # each spot's teachers share the distilled samples
        for m in metrics:
            for s in spots:
                assert sum(m[f"spot_{s}_t{t}"] for t in range(teachers)) == pytest.approx(m[f"spot_{s}"], abs=1e-4)
    ckpt = torch.load(os.path.join(run_dir, "resnet8_last.pth"), map_location="cpu", weights_only=True)
    assert "policy.fc.weight" in ckpt["extra"]["spot_router"] and ckpt["extra"]["spot_optimizer"]["state"]


@pytest.mark.slow
def test_spot_adaptive_resume_is_bit_identical(tmp_path):
    """The policy, the adapters and the policy optimiser come back from the checkpoint (small
    synthetic data and an untrained teacher: only the bookkeeping is under test)."""
    teacher = tmp_path / "resnet8_best.pth"
    torch.manual_seed(0)
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, teacher)
    args = ["--dataset", "synthetic", "--synthetic_train", "96", "--synthetic_test", "32", "--synthetic_classes", "10",
            "--synthetic_size", "16", "--path_t", str(teacher), "--distill", "attention", "--spot_adaptive",
            "--policy_homo", "no", "--epochs", "2", "--batch_size", "16", "--beta_delay_epochs", "0",
            "--skip_validation", *BIT_IDENTICAL]
    save_a, save_b = str(tmp_path / "a"), str(tmp_path / "b")
    code, run_a, _ = run_student(save_a, *args)
    assert code == 0
    with dies_at_step(StudentTask, epoch=2, step=3), pytest.raises(Interrupt):
        run_student(save_b, *args)
    code, run_b, metrics_b = run_student(save_b, *args, "--resume")
    assert code == 0
    assert_same_checkpoints(run_a, run_b, "spot_router")
    assert [r["spot_out"] for r in read_metrics(run_a)] == [r["spot_out"] for r in metrics_b]
