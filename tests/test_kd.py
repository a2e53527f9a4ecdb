"""KD and logit standardization (distiller_zoo/KD.py): values, gradient, --logit-stand weights, every strategy."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import DISTILLERS, kd_loss, standardize
from distiller_zoo.base import Batch
from distiller_zoo.KD import kd_logit_grad

from helper.objective import loader_views

from builders import forward, random_batch
from conftest import assert_shares_are_the_step_weights, recording_term_weights
from logit_cases import S, T_, ctx, make_run, parse, tt
from references import np_kd, np_standardize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ standardization, KD
def test_public_functions_are_importable_from_the_package():
    import distiller_zoo
    for name in ("standardize", "kd_loss", "dkd_loss"):
        assert callable(getattr(distiller_zoo, name))


def test_standardize_is_a_per_sample_z_score_with_unbiased_std():
    out = standardize(tt(S))
    assert np.allclose(out.numpy(), np_standardize(S), atol=1e-12)
    assert torch.allclose(out.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.std(1), torch.ones(4, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_loss_matches_hand_computed_kl(T):
    assert np.allclose(kd_loss(tt(S), tt(T_), T).numpy(), np_kd(S, T_, T), rtol=1e-10)
    ls = kd_loss(tt(S), tt(T_), T, logit_stand=True).numpy()
    assert np.allclose(ls, np_kd(np_standardize(S), np_standardize(T_), T), rtol=1e-10)


def test_standardized_kd_is_invariant_to_per_sample_shift_and_positive_scale():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 100, generator=g) * 3, torch.randn(16, 100, generator=g) * 5
    a, c = torch.rand(16, 1, generator=g) * 5 + 0.2, torch.rand(16, 1, generator=g) * 5 + 0.2
    b, d = torch.randn(16, 1, generator=g) * 10, torch.randn(16, 1, generator=g) * 10
    ref = kd_loss(s, t, 2.0, logit_stand=True)
    for s2, t2 in ((a * s + b, t), (s, c * t + d), (a * s + b, c * t + d)):
        assert torch.allclose(kd_loss(s2, t2, 2.0, logit_stand=True), ref, rtol=1e-4, atol=1e-6)
    # without standardization a scale changes the loss
    assert not torch.allclose(kd_loss(a * s, t, 2.0), kd_loss(s, t, 2.0), rtol=1e-2)


def test_per_sample_kd_mean_equals_batch_loss():
    s, t = tt(S), tt(T_)
    batch = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert kd_loss(s, t, 4.0).mean().item() == pytest.approx(batch.item(), rel=1e-12)
    zs, zt = tt(np_standardize(S)), tt(np_standardize(T_))
    batch = F.kl_div(F.log_softmax(zs / 2, 1), F.softmax(zt / 2, 1), reduction="batchmean") * 4
    assert kd_loss(s, t, 2.0, True).mean().item() == pytest.approx(batch.item(), rel=1e-10)


@pytest.mark.parametrize("logit_stand", [False, True])
def test_kd_closed_form_gradient_matches_autograd(logit_stand):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(8, 10, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    T = 2.0 if logit_stand else 4.0
    (auto,) = torch.autograd.grad(kd_loss(s, t, T, logit_stand).mean(), s)
    assert torch.allclose(kd_logit_grad(s, t, T, logit_stand), auto, rtol=1e-6, atol=1e-10)


def test_teacher_side_carries_no_gradient_and_student_gradient_flows_through_mean_and_std():
    s = tt(S).requires_grad_(True)
    t = tt(T_).requires_grad_(True)
    kd_loss(s, t, 2.0, logit_stand=True).sum().backward()
    assert t.grad is None
    # the gradient through the Z-score is orthogonal to shifts and scalings of each sample
    assert torch.allclose(s.grad.sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose((s.grad * (s.detach() - s.detach().mean(1, keepdim=True))).sum(1),
                          torch.zeros(4, dtype=torch.float64), atol=1e-6)


# ------------------------------------------------------------------- flags, weights, student step
def test_flags_and_weights_without_logit_stand_are_unchanged():
    args, line = parse("--distill", "kd")
    assert (args.logit_stand, args.base_temp, args.kd_weight) == (False, 2.0, 9.0)
    assert (args.gamma, args.alpha) == (1.0, 1.0)
    args, _ = parse("--distill", "dkd")
    assert (args.dkd_alpha, args.dkd_beta, args.dkd_T, args.dkd_warmup, args.gamma) == (1.0, 8.0, 4.0, 20, 1.0)


@pytest.mark.parametrize("distill", ["kd", "ctkd", "mlkd"])
def test_logit_stand_sets_kd_weight_and_ce_weight_unless_given(distill):
    args, line = parse("--distill", distill, "--logit-stand")
    assert (args.gamma, args.alpha) == (0.1, 9.0)
    assert f"objective: 0.1*CE + 9*{distill} [" in line and "--logit-stand" in line
    args, _ = parse("--distill", distill, "--logit_stand", "--kd_weight", "6", "--base_temp", "3")
    assert (args.gamma, args.alpha, args.base_temp) == (0.1, 6.0, 3.0)
    args, line = parse("--distill", distill, "--logit-stand", "-a", "2", "-r", "1")
    assert (args.gamma, args.alpha) == (1.0, 2.0) and "-a 2.0 as given" in line and "-r 1.0 as given" in line


def test_logit_stand_scales_dkd_alpha_beta_and_keeps_ce():
    args, line = parse("--distill", "dkd", "--logit-stand", "--dkd_beta", "6")
    assert (args.dkd_alpha, args.dkd_beta, args.gamma, args.alpha) == (9.0, 54.0, 1.0, 1.0)
    assert "--dkd_beta 6.0 -> 54.0" in line
    d = DISTILLERS["dkd"](ctx(args))
    assert d.T == 2.0 and (d.alpha, d.beta) == (9.0, 54.0)


def test_logit_stand_next_to_a_feature_loss_configures_the_kd_term():
    args, line = parse("--distill", "hint", "--logit-stand")
    assert (args.gamma, args.alpha, args.beta) == (0.1, 9.0, 100.0)


@pytest.mark.parametrize("method", ["AVERAGE_LOSS", "EBKD", "CAMKD", "AEKD"])
@pytest.mark.parametrize("distill", ["kd", "dkd", "ctkd", "mlkd"])
def test_every_logit_loss_with_every_strategy_under_logit_stand(method, distill):
    task, args = make_run(distill=distill, ensemble_method=method, logit_stand=True)
    task.train_mode()
    task.epoch_begin(2, 10)
    x, y = random_batch()
    images = (x, x.flip(3)) if distill == "mlkd" else x
    assert loader_views(distill, "standard")[0] == (("standard", "strong") if distill == "mlkd" else ("standard",))
    with recording_term_weights(task) as seen:
        out = forward(task, images, y, epoch=2)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert task.model.conv1.weight.grad.abs().sum() > 0
    for t in task.teachers.models:
        assert all(p.grad is None for p in t.parameters())
    assert_shares_are_the_step_weights([out], seen, steps=1)


def test_each_teacher_is_standardized_on_its_own():
    task, args = make_run(distill="kd", ensemble_method="AVERAGE_LOSS", logit_stand=True, alpha=9.0, gamma=0.1)
    task.train_mode()
    x, y = random_batch()
    torch.manual_seed(5)
    out = forward(task, x, y, epoch=1)
    with torch.no_grad():
        t_logits = [t(x) for t in task.teachers.models]
    s = out.logits.detach()
    L = torch.stack([tt(np_kd(np_standardize(s.double().numpy()), np_standardize(t.double().numpy()), 2.0))
                     for t in t_logits])
    expected = 0.1 * F.cross_entropy(s.double(), y.long()) + 9.0 * L.mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_aekd_reads_the_closed_form_standardized_gradient():
    task, _ = make_run(distill="kd", ensemble_method="AEKD", logit_stand=True)
    x, y = random_batch()
    s_out, t_outs = task.objective.outputs(x)
    for d, t in zip(task.terms[0].distillers, t_outs):
        r = d(s_out, t, Batch(x, y))
        (auto,) = torch.autograd.grad(r.per_sample.mean(), r.anchor, retain_graph=True)
        assert torch.allclose(r.anchor_grad, auto, rtol=1e-4, atol=1e-8)
