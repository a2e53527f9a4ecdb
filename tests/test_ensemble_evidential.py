"""The EVIDENTIAL strategy (distiller_zoo/ensembles/evidential.py): certainty weights, calibration, pooled teacher."""
import math

import numpy as np
import pytest
import torch

from distiller_zoo import DISTILLERS, ENSEMBLES, ensemble_weights
from distiller_zoo.base import Batch, NetOutput, combine
from distiller_zoo.dirichlet import mean_kl, second_order_alpha
from distiller_zoo.DKD import dkd_loss
from distiller_zoo.ensembles.evidential import (Evidential, calibrated_sharpness, certainty_weights,
                                                evidence_shares, pooled_alpha, pooled_logits, uncertainty)
from distiller_zoo.KD import kd_loss
from helper.objective import loader_views

from builders import forward, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights
from evidential_cases import C, LAM, c, labels, logits, options
from references import binary_kl, np_softmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        expected = np_softmax(-np.array(u) / 0.05)
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
