"""EKD (distiller_zoo/EKD.py): per-sample loss against the authors' batch loss, gradients, ramp, --logit-stand, -r."""
import math

import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import Batch, NetOutput
from distiller_zoo.dirichlet import dirichlet_kl, mean_kl, second_order_alpha
from distiller_zoo.EKD import EKD, ekd_terms

from builders import student_config
from evidential_cases import LAM, ctx, labels, logits, options

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
