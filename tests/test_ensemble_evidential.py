"""Evidential distillation: the Dirichlet math (closed-form KL against Monte Carlo and an
independent lgamma/digamma transcription, extreme logits, gradients in fp32 and under bf16
autocast), EKD and AEKT as per-sample losses (values against the authors' batch formulas
transcribed here, gradients where they belong, AEKT's weight and layer), and the EVIDENTIAL
strategy (certainty weights, the pooled virtual teacher as kd, dkd and ekd read it, every loss of
the registry under it)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma as sp_digamma

from distiller_zoo import DISTILLERS, ENSEMBLES, ensemble_weights
from distiller_zoo.AEKT import AEKT, DistillationLayer, adaptive_weight, aekt_terms
from distiller_zoo.base import Batch, BuildContext, NetOutput, combine
from distiller_zoo.classification import evidential_cross_entropy
from distiller_zoo.dirichlet import (digamma_minus_log, dirichlet_kl, distribution_kl, evidential_ce,
                                     expected_ce, mean_kl, second_order_alpha, uncertainty_exp)
from distiller_zoo.DKD import dkd_loss
from distiller_zoo.EKD import EKD, EKD_PRIOR, ekd_terms
from distiller_zoo.ensembles.evidential import (Evidential, calibrated_sharpness, certainty_weights,
                                                evidence_shares, pooled_alpha, pooled_logits, uncertainty)
from distiller_zoo.KD import kd_loss
from helper.objective import loader_views
from helper.student_step import build_terms
from helper.teachers import TeacherEnsemble
from models import model_dict
from builders import forward, step_config, student_config, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights

C = 10
LAM = EKD_PRIOR
c = math.exp(LAM)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits(B=6, K=C, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, K, generator=g, dtype=torch.float64) * scale).to(dtype)


def labels(B=6, K=C, seed=0):
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed + 100))


def options(distill="kd", method="EVIDENTIAL", **kw):
    return step_config(**dict(dict(distill=distill, ensemble_method=method, gamma=1.0, alpha=1.0, beta=1.0,
                                   beta_delay_epochs=0, learning_rate=0.05, nce_k=16, feat_dim=8, epochs=10), **kw))


def ctx(opt, index=0, M=1, student=None):
    return BuildContext(opt=opt, student_shapes=[], teacher_shapes=[], num_classes=C, teacher_index=index,
                        num_teachers=M, student=student)


# -- independent transcriptions (plain Python / numpy / scipy) -------------------------------------
def kl_dirichlet_by_hand(a, b):
    """KL(Dir(a) || Dir(b)) from the textbook formula, element by element with math.lgamma and
    scipy's digamma."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    Sa, Sb = sum(a), sum(b)
    out = math.lgamma(Sa) - math.lgamma(Sb)
    for ak, bk in zip(a, b):
        out += -(math.lgamma(ak) - math.lgamma(bk)) + (ak - bk) * (sp_digamma(ak) - sp_digamma(Sa))
    return out


def ekd_batch_by_hand(zs, zt, y, lam, T, w_ce, w_kd, w_dir, ramp):
    """The authors' batch loss (tiny-transformers distill.py + the CE of their net.py), naive."""
    zs, zt = zs.double(), zt.double()
    cc = math.exp(lam)
    a = torch.exp(zs) + cc
    ce = (torch.digamma(a.sum(1)) - torch.digamma(a.gather(1, y[:, None]).squeeze(1))).mean()
    a_s, a_t = torch.exp(zs / T) + cc, torch.exp(zt / T) + cc
    p_s, p_t = a_s / a_s.sum(1, keepdim=True), a_t / a_t.sum(1, keepdim=True)
    kd = T * T * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    b_s, b_t = torch.log1p(F.softplus(zs / T)) + cc, torch.log1p(F.softplus(zt / T)) + cc
    Ss, St = b_s.sum(1), b_t.sum(1)
    dirkl = (torch.lgamma(St) - torch.lgamma(Ss) - (torch.lgamma(b_t) - torch.lgamma(b_s)).sum(1)
             + ((b_t - b_s) * (torch.digamma(b_t) - torch.digamma(St)[:, None])).sum(1))
    return w_ce * ce + w_kd * kd + ramp * w_dir * T * T * dirkl.mean()


def softmax_np(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def aekt_by_hand(zs, zt, y, T, alpha, beta, w_max):
    """Per-sample AEKT from the formulas of the docstring, numpy, sample by sample."""
    out = []
    for i in range(zs.shape[0]):
        ps, pt = softmax_np(zs[i] / T), softmax_np(zt[i] / T)
        t = int(y[i])
        exp_ = T * T * binary_kl(pt[t], ps[t])
        mask = np.arange(len(ps)) != t
        qs, qt = ps[mask] / ps[mask].sum(), pt[mask] / pt[mask].sum()
        imp = T * T * float(np.sum(qt * np.log(qt / qs)))
        w = min(pt[t] / ps[t], w_max)
        out.append(alpha * w * exp_ + beta * imp)
    return np.array(out)


# -- Dirichlet math --------------------------------------------------------------------------------
def test_closed_form_kl_equals_monte_carlo():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(4, 5, generator=g, dtype=torch.float64) * 4 + 0.6
    b = torch.rand(4, 5, generator=g, dtype=torch.float64) * 4 + 0.6
    torch.manual_seed(0)
    x = torch.distributions.Dirichlet(a).sample((100_000,))                    # [N, 4, 5]
    mc = (torch.distributions.Dirichlet(a).log_prob(x) - torch.distributions.Dirichlet(b).log_prob(x)).mean(0)
    closed = dirichlet_kl(a, b)
    assert closed.shape == (4,)
    np.testing.assert_allclose(closed.numpy(), mc.numpy(), rtol=0.05, atol=0.01)


def test_closed_form_kl_equals_independent_formula_tightly():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(6, 7, generator=g, dtype=torch.float64) * 20 + 0.2
    b = torch.rand(6, 7, generator=g, dtype=torch.float64) * 20 + 0.2
    closed = dirichlet_kl(a, b)
    expected = [kl_dirichlet_by_hand(a[i], b[i]) for i in range(6)]
    np.testing.assert_allclose(closed.numpy(), expected, rtol=1e-10, atol=1e-12)
    torch_kl = torch.distributions.kl_divergence(torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b))
    np.testing.assert_allclose(closed.numpy(), torch_kl.numpy(), rtol=1e-9, atol=1e-11)


def test_kl_is_zero_for_identical_dirichlets():
    a = second_order_alpha(logits(), LAM)
    assert torch.equal(dirichlet_kl(a, a.clone()), torch.zeros(a.shape[0], dtype=a.dtype))
    z = logits(dtype=torch.float32)
    assert torch.all(distribution_kl(z, z.clone(), LAM) == 0)
    assert torch.all(distribution_kl(z, z.clone(), LAM, reverse=True) == 0)
    assert torch.allclose(mean_kl(z, z.clone(), LAM), torch.zeros(z.shape[0]), atol=1e-12)


EXTREME = {
    "huge": torch.tensor([[1e30, -1e30, 0.0, 5.0], [3e38, 3e38, -3e38, 1.0]]),
    "large": torch.tensor([[1000.0, -1000.0, 0.0, 80.0], [89.0, 88.0, -200.0, 1e4]]),
    "tiny": torch.tensor([[1e-30, -1e-30, 0.0, 1e-38], [1e-7, 2e-7, -1e-7, 0.0]]),
    "equal": torch.tensor([[7.0, 7.0, 7.0, 7.0], [-500.0, -500.0, -500.0, -500.0]]),
}


@pytest.mark.parametrize("name", list(EXTREME))
@pytest.mark.parametrize("other", list(EXTREME))
def test_every_term_is_finite_and_non_negative_for_extreme_logits(name, other):
    s, t = EXTREME[name], EXTREME[other]
    y = torch.tensor([0, 3])
    for value in (distribution_kl(s, t, LAM), distribution_kl(s, t, LAM, reverse=True),
                  distribution_kl(s, t, LAM, activation="exp"), distribution_kl(s, t, LAM, activation="relu"),
                  mean_kl(s, t, LAM), expected_ce(s, t, LAM), evidential_ce(s, y, LAM),
                  uncertainty_exp(s, LAM)):
        assert value.shape == (2,) and value.dtype == torch.float32
        assert torch.all(torch.isfinite(value)) and torch.all(value >= 0), (name, other, value)
    pooled = pooled_logits(torch.stack([s, t]))
    assert torch.all(torch.isfinite(pooled))


def test_digamma_from_logs_matches_digamma_across_the_series_boundary():
    x = torch.tensor([0.05, 0.3, 1.0, 9.99, 10.0, 10.01, 57.0, 1e4, 1e12], dtype=torch.float64)
    got = digamma_minus_log(x.log())
    np.testing.assert_allclose(got.numpy(), sp_digamma(x.numpy()) - np.log(x.numpy()), rtol=1e-11, atol=1e-13)
    huge = digamma_minus_log(torch.tensor([1e4, 1e30], dtype=torch.float64))   # log x given: x = e^1e4, e^1e30
    assert torch.all(torch.isfinite(huge)) and torch.all(huge <= 0)


def test_evidential_ce_matches_naive_formula_and_tends_to_softmax_ce():
    z, y = logits(), labels()
    a = torch.exp(z) + c
    naive = torch.digamma(a.sum(1)) - torch.digamma(a.gather(1, y[:, None]).squeeze(1))
    np.testing.assert_allclose(evidential_ce(z, y, LAM).numpy(), naive.numpy(), rtol=1e-10)
    big = z * 50 + 2000                      # every alpha_k >> c: psi ~ log, the prior negligible
    np.testing.assert_allclose(evidential_ce(big, y, LAM).numpy(),
                               F.cross_entropy(big, y, reduction="none").numpy(), rtol=1e-6, atol=1e-6)
    assert torch.equal(evidential_cross_entropy(z.float(), y), evidential_ce(z.float(), y, LAM))


@pytest.mark.parametrize("low", [None, torch.bfloat16, torch.float16])
def test_gradients_are_finite_in_fp32_and_under_bf16_fp16_autocast(low):
    torch.manual_seed(0)
    net = torch.nn.Linear(16, C)
    x = torch.randn(8, 16) * torch.tensor([1.0, 1e3, 1e-3, 30, 1, 1, 1, 1])[:, None]   # some rows extreme
    zt = logits(8, seed=5, dtype=torch.float32) * torch.tensor([1, 1, 1, 1e4, 0, 1, 1, 1.0])[:, None]
    y = labels(8)
    opt = options("ekd")
    ekd, aekt = EKD(ctx(opt)), AEKT(ctx(options("aekt")))
    ekd.epoch_begin(40, 240)
    with torch.autocast("cpu", dtype=low or torch.bfloat16, enabled=low is not None):
        z = net(x)
        assert z.dtype == (low or torch.float32)
        s = NetOutput(feats=[], logits=z)
        b = Batch(images=x, labels=y, epoch=40)
        loss = ekd(s, NetOutput(feats=[], logits=zt), b).per_sample
        loss = loss + aekt(s, NetOutput(feats=[], logits=zt), b).per_sample
        loss = loss + distribution_kl(z, zt, LAM, reverse=True) + expected_ce(z, zt, LAM)
    assert loss.dtype == torch.float32 and torch.all(torch.isfinite(loss))
    loss.mean().backward()
    for p in list(net.parameters()) + list(aekt.parameters()):
        assert p.grad is not None and torch.all(torch.isfinite(p.grad))


# -- EKD -------------------------------------------------------------------------------------------
def test_ekd_per_sample_mean_equals_the_authors_batch_loss():
    zs, zt, y = logits(seed=1, scale=2.0), logits(seed=2, scale=4.0), labels()
    opt = options("ekd")
    d = EKD(ctx(opt))
    term = d(NetOutput(feats=[], logits=zs), NetOutput(feats=[], logits=zt),
             Batch(images=None, labels=y, epoch=6))                       # ramp 6/30
    assert term.per_sample.shape == (6,)
    expected = ekd_batch_by_hand(zs, zt, y, LAM, 1.0, 1.0, 4.5, 4.5, 6 / 30)
    assert term.per_sample.mean().item() == pytest.approx(expected.item(), rel=1e-9)
    assert term.anchor is not None and set(term.metrics) == {"ce", "first", "second"}


def test_ekd_student_gets_gradient_teacher_none_and_ramp_and_direction():
    zs = logits(dtype=torch.float32).requires_grad_()
    zt = logits(seed=9, dtype=torch.float32).requires_grad_()
    y = labels()
    d = EKD(ctx(options("ekd")))
    d(NetOutput(feats=[], logits=zs), NetOutput(feats=[], logits=zt),
      Batch(images=None, labels=y, epoch=1)).per_sample.mean().backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0 and zt.grad is None
    ce, first, second = ekd_terms(zs, zt, y, LAM)
    for epoch, ramp in [(1, 1 / 30), (15, 0.5), (30, 1.0), (200, 1.0)]:
        got = d(NetOutput(feats=[], logits=zs), NetOutput(feats=[], logits=zt),
                Batch(images=None, labels=y, epoch=epoch)).per_sample
        assert torch.allclose(got, ce + 4.5 * first + ramp * 4.5 * second, rtol=1e-6)
    _, _, reverse = ekd_terms(zs, zt, y, LAM, reverse=True)
    a_s, a_t = second_order_alpha(zs, LAM), second_order_alpha(zt, LAM)
    assert torch.allclose(reverse.double(), dirichlet_kl(a_s, a_t), rtol=1e-6)
    assert not torch.allclose(reverse, second)


def test_ekd_logit_stand_standardizes_only_the_first_order_term():
    from distiller_zoo.KD import standardize
    zs, zt, y = logits(dtype=torch.float32), logits(seed=3, dtype=torch.float32), labels()
    ce, first, second = ekd_terms(zs, zt, y, LAM, logit_stand=True, base_temp=2.0)
    ce0, _, second0 = ekd_terms(zs, zt, y, LAM)
    assert torch.equal(ce, ce0) and torch.equal(second, second0)
    assert torch.allclose(first, mean_kl(standardize(zs), standardize(zt), LAM, 2.0))


def test_ekd_configure_moves_the_ce_into_the_loss_unless_r_is_given():
    decided = EKD.configure(options("ekd"), set())
    assert decided.changes == {"gamma": 0.0} and decided.notes
    assert EKD.configure(options("ekd", gamma=0.5), {"gamma"}).changes == {}
    decided = EKD.configure(options("ekd", ekd_w_ce=0.0), set())
    assert decided.changes == {} and decided.notes == []
    assert student_config("--distill", "ekd").gamma == 0.0                  # what the run resolves
    assert student_config("--distill", "ekd", "-r", "0.5").gamma == 0.5


# -- AEKT ------------------------------------------------------------------------------------------
def test_aekt_per_sample_matches_hand_formula_and_layer_starts_at_identity():
    zs, zt, y = logits(seed=1, scale=2.0), logits(seed=2, scale=3.0), labels()
    d = AEKT(ctx(options("aekt")))
    term = d(NetOutput(feats=[], logits=zs.float()), NetOutput(feats=[], logits=zt.float()),
             Batch(images=None, labels=y, epoch=30))
    assert term.per_sample.shape == (6,)
    expected = aekt_by_hand(zs.numpy(), zt.numpy(), y.numpy(), 4.0, 1.0, 8.0, 5.0)
    np.testing.assert_allclose(term.per_sample.detach().numpy(), expected, rtol=1e-4)
    assert term.per_sample.mean().item() == pytest.approx(float(expected.mean()), rel=1e-4)
    half = d(NetOutput(feats=[], logits=zs.float()), NetOutput(feats=[], logits=zt.float()),
             Batch(images=None, labels=y, epoch=5))
    np.testing.assert_allclose(half.per_sample.detach().numpy(), expected * 5 / 20, rtol=1e-4)


def test_aekt_adaptive_weight_carries_no_gradient():
    zs = logits(dtype=torch.float32).requires_grad_()
    zt, y = logits(seed=7, dtype=torch.float32), labels()
    w = adaptive_weight(zs, zt, y, 4.0)
    assert not w.requires_grad
    explicit, implicit, w2 = aekt_terms(zs, zt, y, 4.0)
    assert not w2.requires_grad and torch.equal(w, w2)
    loss = (w2 * explicit + 8 * implicit).mean()
    g_loss = torch.autograd.grad(loss, zs)[0]
    # the same loss with w as a constant copy: identical gradient (no path through w)
    explicit, implicit, _ = aekt_terms(zs, zt, y, 4.0)
    g_const = torch.autograd.grad((w.clone() * explicit + 8 * implicit).mean(), zs)[0]
    assert torch.equal(g_loss, g_const)
    ratio = torch.softmax(zt / 4, 1).gather(1, y[:, None]).squeeze(1) / torch.softmax(zs.detach() / 4, 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(w, ratio.clamp_max(5.0), rtol=1e-5)


def test_aekt_layer_gets_gradient_teacher_none_saved_and_not_used_at_inference():
    torch.manual_seed(0)
    student = model_dict["resnet8"](num_classes=C)
    teachers = TeacherEnsemble([model_dict["resnet8"](num_classes=C) for _ in range(2)], ["a", "b"])
    args = options("aekt", method="AVERAGE_LOSS", teacher_num=2)
    task = student_task(args, (), student=student, teachers=teachers, num_classes=C)
    terms = task.terms
    task.train_mode()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = forward(task, x, y, epoch=25)
    out.loss.backward()
    layers = [d.layer for d in terms[0].distillers]
    assert layers[0] is not layers[1]                                  # one per teacher (default)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for l in layers for p in l.parameters())
    assert all(p.grad is None for t in teachers.models for p in t.parameters())
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    state = task.extra_state()["distill"]
    assert any(k.endswith("layer.delta") for k in state) and any(k.endswith("layer.bias") for k in state)
    assert all(id(p) not in {id(q) for q in student.parameters()} for l in layers for p in l.parameters())
    student.eval()
    with torch.no_grad():                                              # inference: the student alone
        before = student(x)
        layers[0].delta.add_(1.0)
        assert torch.equal(student(x), before)
    shared = build_terms(options("aekt", method="AVERAGE_LOSS", aekt_layer="shared", teacher_num=2), student,
                         teachers, C, num_data=100, image_size=32)
    assert shared[0].distillers[0].layer is shared[0].distillers[1].layer
    none = build_terms(options("aekt", method="AVERAGE_LOSS", aekt_layer="none", teacher_num=2), student,
                       teachers, C, num_data=100, image_size=32)
    assert none[0].distillers[0].layer is None and len(list(none.parameters())) == 0
    layer = DistillationLayer(C)
    z = logits(dtype=torch.float32)
    assert torch.equal(layer(z), z) and torch.equal(layer.matrix(), torch.eye(C))


def aekt_layer_step(aekt_layer_lr=None, lr=0.05):
    """One plain SGD step (no momentum, no decay) of a fresh AEKT distiller at full loss scale:
    ``(W after - W before, dL/dW)`` with ``dL/dW`` from the same loss written with an explicit
    matrix ``W`` (autograd on ``z W^T + b``, not through the distiller's parametrisation)."""
    kw = {} if aekt_layer_lr is None else {"aekt_layer_lr": aekt_layer_lr}
    d = AEKT(ctx(options("aekt", **kw)))
    zs, zt, y = logits(seed=11, scale=2.0, dtype=torch.float32), logits(seed=12, scale=3.0, dtype=torch.float32), labels()
    W = torch.eye(C, requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    explicit, implicit, w = aekt_terms(zs @ W.T + b, zt, y, 4.0)
    grad_W = torch.autograd.grad((w * explicit + 8.0 * implicit).mean(), W)[0]
    before = d.layer.matrix().detach().clone()
    opt = torch.optim.SGD(d.parameters(), lr=lr)
    d(NetOutput(feats=[], logits=zs), NetOutput(feats=[], logits=zt), Batch(images=None, labels=y, epoch=30)).per_sample.mean().backward()
    opt.step()
    return d.layer.matrix().detach() - before, grad_W


def test_aekt_layer_learns_at_a_tenth_of_the_students_rate():
    """Issue 16: at the student's own rate the layer ran away (W's top singular value 1 -> 3.3 in
    24 steps on digits) and the student failed in eval mode; by default it learns 10x slower."""
    assert options("aekt").aekt_layer_lr == 0.1
    step, grad_W = aekt_layer_step()
    assert grad_W.abs().max() > 1e-3                          # a real gradient to scale
    torch.testing.assert_close(step, -0.05 * 0.1 * grad_W, rtol=1e-4, atol=1e-7)
    step, grad_W = aekt_layer_step(aekt_layer_lr=1.0)         # the old behaviour, still available
    torch.testing.assert_close(step, -0.05 * grad_W, rtol=1e-4, atol=1e-7)
    with pytest.raises(SystemExit):                           # a one-line argparse error
        student_config("--distill", "aekt", "--aekt_layer_lr", "0")


# -- the EVIDENTIAL strategy -----------------------------------------------------------------------
def stack(M=3, B=8, seed=0, scales=(4.0, 1.0, 0.2)):
    return torch.stack([logits(B, seed=seed + m, scale=scales[m % len(scales)], dtype=torch.float32) for m in range(M)])


def test_certainty_weights_match_the_formula_and_sum_to_one():
    t = stack()
    M, B, K = t.shape
    y = labels(B)
    w = ensemble_weights("EVIDENTIAL", t, y, logits(B, seed=9, dtype=torch.float32))
    assert w.shape == (M, B) and not w.requires_grad
    beta = calibrated_sharpness(t, y).numpy()
    for i in range(B):
        u = []
        for m in range(M):
            z = t[m, i].double().numpy()
            S = np.exp(beta[m] * (z - z.mean())).sum() + K * c
            u.append(K * c / S)
        expected = softmax_np(-np.array(u) / 0.05)
        np.testing.assert_allclose(w[:, i].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(w.sum(0), torch.ones(B), atol=1e-6)
    # the confident teacher (scale 4) outweighs the flat one (scale 0.2) on average
    assert w[0].mean() > w[2].mean()


def brute_force_sharpness(z, y, grid=20001):
    """The minimiser over a fine grid of [0, 1] of the batch NLL of softmax(beta * z)."""
    betas = torch.linspace(0, 1, grid, dtype=torch.float64)
    z = z.double()
    nll = torch.stack([(torch.logsumexp(b * z, -1) - b * z.gather(1, y[:, None]).squeeze(1)).mean()
                       for b in betas])
    return betas[nll.argmin()].item()


def confidently_wrong_batch(B=64, seed=0):
    """Teacher 0 and 1 right with margin 8; teacher 2 says class 5 with margin 20 whatever the
    label (a collapsed one-epoch network); teacher 3 like 0 but wrong on 4 samples."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    good = [torch.randn(B, C, generator=g) for _ in range(2)]
    for z in good:
        z[torch.arange(B), y] += 8
    wrong = torch.randn(B, C, generator=g)
    wrong[:, 5] += 20
    noisy = good[0].clone()
    noisy[:4] = wrong[:4]
    return torch.stack([good[0], good[1], wrong, noisy]), y


def test_calibrated_sharpness_is_the_nll_minimiser_on_zero_to_one():
    t, y = confidently_wrong_batch()
    beta = calibrated_sharpness(t, y)
    assert beta.shape == (4,) and not beta.requires_grad
    for m in range(4):
        assert beta[m].item() == pytest.approx(brute_force_sharpness(t[m], y), abs=1e-4)
    assert beta[0] == 1.0 and beta[1] == 1.0          # always right: never sharpened beyond 1
    assert beta[2] < 1e-6                               # wrong on ~90%: flattened to flat evidence
    assert 0.2 < beta[3] < 0.9                          # a few confident mistakes: tempered
    # shift-invariant per sample (softmax), and a scaled teacher gets the reciprocal sharpness
    shifted = t + torch.randn(4, t.shape[1], 1)
    assert torch.allclose(calibrated_sharpness(shifted, y), beta, atol=1e-6)
    assert calibrated_sharpness(t[3:] * 2.0, y).item() == pytest.approx(beta[3].item() / 2.0, abs=1e-4)


def test_calibration_takes_a_confidently_wrong_teacher_out_of_the_pool():
    t, y = confidently_wrong_batch()
    raw_share = evidence_shares(t).mean(1)
    assert raw_share[2] > raw_share[[0, 1]].max()       # uncalibrated: its huge logits dominate
    beta = calibrated_sharpness(t, y)
    share = evidence_shares(t, sharpness=beta).mean(1)
    assert share[2] < 0.01 and share[2] < share[[0, 1, 3]].min()
    good = Evidential(options("kd"))
    target = good.pooled_teacher([NetOutput(feats=[], logits=z) for z in t], Batch(t[0], y), "logit")
    assert (target.logits.argmax(1) == y).float().mean() > 0.9
    plain = Evidential(options("kd", evidential_calibrate="none"))
    target = plain.pooled_teacher([NetOutput(feats=[], logits=z) for z in t], Batch(t[0], y), "logit")
    assert torch.allclose(target.logits, pooled_logits(t))
    assert (target.logits.argmax(1) == y).float().mean() < 0.5    # what calibration prevents
    w = ensemble_weights("EVIDENTIAL", t, y, t[0])
    assert w[2].mean() < w[[0, 1]].mean(1).min()


def test_uncertain_teacher_adds_little_to_the_pool_and_agreeing_teachers_add_up():
    confident = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
    flat = torch.tensor([[0.1, 0.3, 0.0, 0.2]])
    t = torch.stack([confident, flat])
    shares = evidence_shares(t)
    assert shares[0, 0] > 0.9
    pooled = torch.softmax(pooled_logits(t), 1)
    assert pooled[0, 0] > 0.9 * torch.softmax(confident, 1)[0, 0]
    same = torch.stack([confident, confident, confident])
    assert torch.allclose(pooled_logits(same), confident - confident.mean(), atol=1e-6)          # mean: one teacher's scale
    assert torch.allclose(pooled_logits(same, pool="sum"), confident - confident.mean() + math.log(3), atol=1e-6)
    a1 = pooled_alpha(confident[None])
    a3 = pooled_alpha(same, pool="sum")
    assert torch.allclose(a3 - c, 3 * (a1 - c), rtol=1e-5)                         # evidence adds up
    assert uncertainty(same, gauge="raw")[0, 0] > 0 and uncertainty(flat[None])[0, 0] > uncertainty(confident[None])[0, 0]


def test_virtual_teacher_is_the_pooled_dirichlet_for_ekd():
    t = stack(M=3, B=6)
    zs = logits(6, seed=11, dtype=torch.float32)
    zv = pooled_logits(t)
    zt = t.double() - t.double().mean(-1, keepdim=True)
    alpha_ens = c + torch.exp(zt).mean(0)                                  # c + (1/M) sum_m e_m
    # EKD's first-order activation exp(z/T) + c on the virtual logits recovers alpha_ens exactly
    assert torch.allclose(torch.exp(zv.double()) + c, alpha_ens, rtol=1e-5)
    assert torch.allclose(pooled_alpha(t).double(), alpha_ens, rtol=1e-5)
    # so EKD's first-order term against the virtual teacher is the KL to the pooled Dirichlet's mean,
    # the teachers' Dirichlet means mixed by their precisions
    p_ens = alpha_ens / alpha_ens.sum(1, keepdim=True)
    a_m = torch.exp(zt) + c
    S_m = a_m.sum(-1, keepdim=True)
    assert torch.allclose(((S_m / S_m.sum(0)) * a_m / S_m).sum(0), p_ens, rtol=1e-10)
    a_s = torch.exp(zs.double()) + c
    p_s = a_s / a_s.sum(1, keepdim=True)
    expected = (p_ens * (p_ens.log() - p_s.log())).sum(1)
    np.testing.assert_allclose(mean_kl(zs, zv, LAM).numpy(), expected.numpy(), rtol=1e-5)
    # and its second-order term reads EKD's bounded transform of the pooled evidence
    E = alpha_ens - c
    assert torch.allclose(second_order_alpha(zv, LAM), torch.log1p(torch.log1p(E)) + c, rtol=1e-5)


def test_virtual_teacher_is_the_pooled_mean_for_kd_and_dkd():
    t = stack(M=3, B=6)
    zs, y = logits(6, seed=11, dtype=torch.float32), labels()
    zv = pooled_logits(t)
    zt = t.double() - t.double().mean(-1, keepdim=True)
    E = torch.exp(zt).mean(0)
    p_pool = E / E.sum(1, keepdim=True)                                    # normalised pooled evidence
    assert torch.allclose(torch.softmax(zv.double(), 1), p_pool, rtol=1e-5)
    # = the mixture of the teachers' predictions weighted by their evidence shares
    mix = (evidence_shares(t).double()[:, :, None] * torch.softmax(zt, -1)).sum(0)
    assert torch.allclose(mix, p_pool, rtol=1e-5)
    # kd at T = T_e distils exactly that mean
    p_s = torch.softmax(zs.double(), 1)
    np.testing.assert_allclose(kd_loss(zs, zv, 1.0).numpy(), (p_pool * (p_pool.log() - p_s.log())).sum(1).numpy(),
                               rtol=1e-5)
    # dkd's target-class mass and non-target distribution are the pooled mean's
    by_hand = []
    for i in range(6):
        p, q = p_pool[i].numpy(), p_s[i].numpy()
        k = int(y[i])
        mask = np.arange(C) != k
        nt = float(np.sum(p[mask] / p[mask].sum() * np.log((p[mask] / p[mask].sum()) / (q[mask] / q[mask].sum()))))
        by_hand.append(binary_kl(p[k], q[k]) + 8 * nt)
    np.testing.assert_allclose(dkd_loss(zs, zv, y, 1.0, 8.0, 1.0).numpy(), by_hand, rtol=1e-4)


def test_one_teacher_raw_gauge_pools_to_itself():
    t = stack(M=1, B=5)
    assert torch.allclose(pooled_logits(t, gauge="raw"), t[0], atol=1e-6)
    assert torch.allclose(pooled_logits(t), t[0] - t[0].mean(1, keepdim=True), atol=1e-6)


def make_task(distill, method="EVIDENTIAL", archs=("resnet8", "resnet8", "resnet8"), **kw):
    args = options(distill, method, teacher_num=len(archs), **kw)
    return student_task(args, archs, num_classes=C, num_data=64, train_labels=torch.arange(64) % C)


def test_pool_mode_distils_the_virtual_teacher_alone_with_weight_one():
    task = make_task("kd")
    term = task.terms[0]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    task.train_mode()
    s_out, t_outs = task.objective.outputs(x)
    b = Batch(images=x, labels=y, epoch=1)
    loss, weights, results = term(s_out, t_outs, b)
    assert weights.shape == (1, 4) and torch.all(weights == 1) and len(results) == 1
    stacked = torch.stack([t.logits for t in t_outs])
    zv = pooled_logits(stacked, sharpness=calibrated_sharpness(stacked, y))
    assert loss.item() == pytest.approx(kd_loss(s_out.logits, zv, 4.0).mean().item(), rel=1e-6)


def test_weight_mode_and_feature_terms_use_the_certainty_weights():
    task = make_task("hint", evidential_mode="pool")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    task.train_mode()
    s_out, t_outs = task.objective.outputs(x)
    b = Batch(images=x, labels=y, epoch=1)
    kd_term, hint_term = task.terms
    _, w_kd, _ = kd_term(s_out, t_outs, b)
    assert w_kd.shape == (1, 4)                                         # the logit term is pooled
    loss, w, results = hint_term(s_out, t_outs, b)
    stacked = torch.stack([t.logits for t in t_outs])
    expected_w = certainty_weights(stacked, sharpness=calibrated_sharpness(stacked, y))
    assert w.shape == (3, 4) and torch.allclose(w, expected_w, atol=1e-6)
    losses = torch.stack([r.per_sample for r in results])
    assert loss.item() == pytest.approx(combine(expected_w, losses).item(), rel=1e-5)
    strategy = Evidential(options("kd", evidential_mode="weight"))
    assert strategy.pooled_teacher(t_outs, b, "logit") is None
    assert strategy.pooled_teacher(t_outs, Batch(images=x, labels=y, view_outputs=[(s_out, t_outs)]), "logit") is None


@pytest.mark.parametrize("mode", ["pool", "weight"])
@pytest.mark.parametrize("distill", sorted(DISTILLERS))
def test_every_loss_of_the_registry_under_evidential(distill, mode):
    task = make_task(distill, evidential_mode=mode, init_epochs=0)
    task.train_mode()
    B = 4
    y = torch.tensor([0, 1, 2, 3])
    x = torch.randn(B, 3, 32, 32)
    views = [torch.rand(B, 3, 32, 32) for _ in loader_views(distill, "standard")[0][1:]]
    batch = (((x, *views) if views else x), y, torch.arange(B))
    with recording_term_weights(task) as seen:
        out = forward(task, *batch, epoch=3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert task.model.conv1.weight.grad is not None
    assert all(p.grad is None for t in task.teachers.models for p in t.parameters())
    assert_shares_are_the_step_weights([out], seen, steps=1)


def test_registered_with_flags_and_reachable_by_name():
    assert ENSEMBLES["EVIDENTIAL"] is Evidential
    args = options("kd")
    assert (args.evidential_mode, args.evidential_prior, args.evidential_T, args.evidential_pool,
            args.evidential_gauge) == ("pool", -1.22, 1.0, "mean", "mean")
    for name in ("ekd", "aekt"):
        assert DISTILLERS[name].kind == "logit"
