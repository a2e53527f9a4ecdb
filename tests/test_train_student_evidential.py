"""train_student.py with ekd, aekt and EVIDENTIAL on digits; the evidential weights; an evidential teacher distilled."""
import json
import math
import os

import pytest
import torch

import train_teacher
from builders import SUITE_DIGITS, SUITE_DIGITS_PX
from conftest import assert_generalises_like_kd, run_student
from dataset import build_loaders
from distiller_zoo import ensemble_weights
from distiller_zoo.ensembles.evidential import evidence_shares
from models import model_dict
from models.checkpoint import load_model

# ``--distill ekd``, ``--distill aekt`` and ``--ensemble_method EVIDENTIAL`` (pooled, with kd) each
# train a student far above chance with the session's teachers; a deliberately weak teacher (one
# epoch) gets a lower evidential weight than two good ones; ``train_teacher.py --loss evidential``
# trains an evidential teacher a student can distil.
# Small runs as in the other end-to-end files: batch 32, four epochs, learning rate decayed after
# epoch 3, one intra-op thread.
FAST = ["--epochs", "4", "--lr_decay_epochs", "3", "--batch_size", "32"]
KD_ONE_TEACHER = ("--distill", "kd", *FAST)      # the reference; shared with test_train_student_logit_losses


@pytest.fixture
def save_dir(student_save_dir, one_torch_thread):
    """The session's teachers (trained first, with every thread), then one thread for these runs."""
    return student_save_dir


def manifest(save_dir):
    with open(os.path.join(save_dir, "manifest.json")) as f:
        return json.load(f)["teachers"]


def teacher_test_logits(paths):
    """``[M, N, C]`` teacher logits on the digits test set (the suite's size), and the labels ``[N]``."""
    models = [load_model(p, num_classes=10) for p in paths]
    loaders = build_loaders("digits", batch_size=512, device="cpu", seed=0, img_size=SUITE_DIGITS_PX)
    out, labels = [], []
    with torch.no_grad():
        for x, y in loaders.test:
            out.append(torch.stack([m(x) for m in models]))
            labels.append(y)
    return torch.cat(out, 1), torch.cat(labels)



@pytest.mark.slow
def test_ekd_trains_far_above_chance(save_dir, shared_runs):
    code, run_dir, metrics = run_student(save_dir, "--distill", "ekd", *FAST)
    assert code == 0
    assert metrics[-1]["test_acc"] > 50.0                     # 10 classes: chance is 10%
    assert_generalises_like_kd(metrics, shared_runs(*KD_ONE_TEACHER)[2], "ekd")
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    assert (args["gamma"], args["alpha"], args["ekd_w_kd"], args["ekd_w_dir"]) == (0.0, 1.0, 4.5, 4.5)
    last = metrics[-1]
    assert last["ekd_t0_ce"] > 0 and last["ekd_t0_first"] >= 0 and last["ekd_t0_second"] >= 0


@pytest.mark.slow
def test_aekt_trains_far_above_chance_and_checkpoints_its_layer(save_dir, shared_runs):
    code, run_dir, metrics = run_student(save_dir, "--distill", "aekt", *FAST)
    assert code == 0
    assert metrics[-1]["test_acc"] > 50.0
    assert_generalises_like_kd(metrics, shared_runs(*KD_ONE_TEACHER)[2], "aekt")
    ckpt = torch.load(os.path.join(run_dir, "resnet8_last.pth"), map_location="cpu", weights_only=True)
    deltas = [v for k, v in ckpt["extra"]["distill"].items() if k.endswith("layer.delta")]
    assert len(deltas) == 1 and deltas[0].abs().sum() > 0   # trained, saved for --resume
    assert set(ckpt["model"]) == set(model_dict["resnet8"](num_classes=10).state_dict())   # not in the student
    assert 0 < metrics[-1]["aekt_t0_weight"] <= 5.0


@pytest.mark.slow
def test_evidential_pool_with_kd_trains_far_above_chance(save_dir, shared_runs):
    code, _, metrics = run_student(save_dir, "--teacher_num", "3", "--ensemble_method", "EVIDENTIAL",
                                         "--distill", "kd", *FAST)
    assert code == 0
    assert metrics[-1]["test_acc"] > 50.0
    # against plain KD from one teacher: three pooled teachers must do at least about as well
    assert_generalises_like_kd(metrics, shared_runs(*KD_ONE_TEACHER)[2], "kd --ensemble_method EVIDENTIAL")
    assert metrics[-1]["weight_kd_t0"] == pytest.approx(1.0)   # one pooled target per step


@pytest.mark.slow
def test_weak_teacher_gets_a_lower_evidential_weight(save_dir):
    """Two of the session's teachers (8 epochs) and one trained for a single epoch: the weak one is
    less accurate, more uncertain, and gets the lowest mean weight and evidence share."""
    torch.manual_seed(0)
    code = train_teacher.main(["--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--epochs", "1",
                               "--trials", "weak", "--save_dir", save_dir, "--quiet", "--batch_size", "64"])
    assert code == 0
    entries = manifest(save_dir)
    paths = [os.path.join(save_dir, entries[f"digits-resnet8-{t}"]["path"]) for t in ("0", "1", "weak")]
    logits, labels = teacher_test_logits(paths)
    acc = (logits.argmax(-1) == labels).float().mean(1)
    assert acc[2] < acc[:2].min()
    w = ensemble_weights("EVIDENTIAL", logits, labels, logits[0]).mean(1)
    assert w[2] < w[:2].min(), w
    shares = evidence_shares(logits).mean(1)
    assert shares[2] < shares[:2].min(), shares


@pytest.mark.slow
def test_evidential_teacher_trains_and_a_student_distils_it_with_ekd(save_dir):
    torch.manual_seed(0)
    code = train_teacher.main(["--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--loss", "evidential",
                               "--epochs", "3", "--lr_decay_epochs", "2", "--trials", "ev", "--save_dir", save_dir, "--quiet",
                               "--batch_size", "32"])
    assert code == 0
    entry = manifest(save_dir)["digits-resnet8-ev"]
    assert entry["loss"] == "evidential" and "_loss~evidential_" in entry["path"]
    assert entry["best_acc"] > 50.0
    code, _, metrics = run_student(save_dir, "--teachers", "digits-resnet8-ev", "--distill", "ekd",
                                         "--epochs", "2", "--lr_decay_epochs", "100", "--batch_size", "32")
    assert code == 0
    assert metrics[-1]["test_acc"] > 30.0
    losses = [m["train_loss"] for m in metrics]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]
