"""train_student.py with every registered --distill loss on digits: the loss falls, the student generalises like KD."""
import math
import os

import pytest
import torch

from distiller_zoo import DISTILLERS

from conftest import assert_generalises_like_kd, run_student

# Every loss trains a student with two of the session's teachers, under AVERAGE_LOSS and under CAMKD
# (connector init stage included where the loss has one), with a finite training loss that goes
# down, and a test accuracy close to plain KD's in the same setting (a loss that trains but does not
# generalise fails here).
METHODS = ["AVERAGE_LOSS", "CAMKD"]
# Two epochs of batch 128 (12 steps each on digits' 1,442 training images): a run costs about two
# passes over the data (three with an init stage), which keeps the ~40 runs of this test near three
# minutes on two idle cores; epoch 2's mean training loss must be below epoch 1's.
EPOCHS = 2

# A loss whose own schedule or scale needs other settings at this size, with the reason:
SETTINGS = {
    # DKD ramps its loss in over --dkd_warmup epochs (20): over two epochs the ramp, not training,
    # would decide whether the loss goes down.
    "dkd": ["--dkd_warmup", "0"],
    # AEKT ramps in the same way (--aekt_warmup 20).
    "aekt": ["--aekt_warmup", "0"],
    # MLKD's class- and batch-level terms grow with (batch / classes)^2; its own settings keep them
    # at CIFAR-100's scale on 10 classes (as tests/test_train_student_logit_losses.py runs it).
    "mlkd": ["--batch_size", "32", "--learning_rate", "0.025", "-r", "0.1", "-a", "0.9"],
}


@pytest.fixture(autouse=True)
def _threads_for_the_load():
    """On a machine busier than its cores (other test sessions), spinning intra-op threads made
    these runs several times slower; use one thread then, all of them otherwise."""
    threads = torch.get_num_threads()
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1)
    if busy:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def beta_for(name):
    cls = DISTILLERS[name]
    return cls.default_weight if cls.default_weight is not None else 1.0


def run_args(name, method):
    return ("--distill", name, "--ensemble_method", method, "--teacher_num", "2", "--epochs", str(EPOCHS),
            "--batch_size", "128", "--init_epochs", "1", "--beta_delay_epochs", "0", "--lr_decay_epochs", "100",
            "-b", str(beta_for(name)), "--skip_validation", *SETTINGS.get(name, []))


# Known defects the generalisation check catches, with the issue that tracks them (none open).
# AEKT under AVERAGE_LOSS was one (issue 16: test top-1 7.0 vs KD's 22.8): its distillation layer
# learnt at the student's rate and ran away; it now learns at --aekt_layer_lr 0.1 of it.
KNOWN_BAD = {}


def cases():
    """Logit losses under both strategies; feature and relation losses under CAMKD only, whose
    per-teacher feature weights are the richer path. Under AVERAGE_LOSS a feature loss differs
    only by uniform weights (the weighting itself is tested per strategy with hint and inter in
    tests/test_student_step.py); those 14 two-epoch runs cost about 100 s of CI's 12 minutes, and a
    loss that trains but does not generalise shows it under CAMKD as well."""
    for method in METHODS:
        for name in sorted(DISTILLERS):
            if method != "CAMKD" and DISTILLERS[name].kind != "logit":
                continue
            reason = KNOWN_BAD.get((name, method))
            marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
            yield pytest.param(name, method, marks=marks, id=f"{name}-{method}")


@pytest.mark.slow
@pytest.mark.parametrize("name, method", list(cases()))
def test_every_loss_trains_a_student_end_to_end(student_save_dir, shared_runs, name, method):
    beta = beta_for(name)
    kd = shared_runs(*run_args("kd", method))           # the reference: the kd case's own run
    if name == "kd":
        code, run_dir, metrics = kd
    else:
        code, run_dir, metrics = run_student(student_save_dir, *run_args(name, method))
    run = f"--distill {name} --ensemble_method {method}"
    assert code == 0, f"{run}: exit code {code}"
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    assert len(losses) == EPOCHS, metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses), f"{run}: training loss {losses}"
    if DISTILLERS[name].needs_index:
        # A memory-bank loss (CRD) starts against a random bank, where every negative looks unlike
        # the anchor; while the bank fills with real embeddings its term rises for a few epochs
        # (digits, crd: 17.1, 26.5, 33.6, 34.6, 32.0, 28.8, 26.4, 22.5 over 8 epochs) before it
        # falls. Here the rest of the objective must fall and the bank term stay finite; that the
        # bank term itself falls once the bank is filled is tested in test_crd.py.
        bank = [m[f"loss_{name}"] for m in metrics]
        assert all(math.isfinite(v) for v in bank), f"{run}: {name} loss {bank}"
        rest = [total - beta * b for total, b in zip(losses, bank)]
        assert rest[-1] < rest[0], f"{run}: training loss without the {name} term {rest}"
    else:
        assert losses[-1] < losses[0], f"{run}: training loss {losses}"
    assert_generalises_like_kd(metrics, kd[2], run, chance_share=0)
