"""The Dirichlet math (distiller_zoo/dirichlet.py, the evidential CE): closed forms, extreme logits, autocast."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma as sp_digamma

from distiller_zoo.AEKT import AEKT
from distiller_zoo.base import Batch, NetOutput
from distiller_zoo.classification import evidential_cross_entropy
from distiller_zoo.dirichlet import (digamma_minus_log, dirichlet_kl, distribution_kl, evidential_ce,
                                     expected_ce, mean_kl, second_order_alpha, uncertainty_exp)
from distiller_zoo.EKD import EKD
from distiller_zoo.ensembles.evidential import pooled_logits

from evidential_cases import C, LAM, c, ctx, labels, logits, options

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kl_dirichlet_by_hand(a, b):
    """KL(Dir(a) || Dir(b)) from the textbook formula, element by element with math.lgamma and
    scipy's digamma."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    Sa, Sb = sum(a), sum(b)
    out = math.lgamma(Sa) - math.lgamma(Sb)
    for ak, bk in zip(a, b):
        out += -(math.lgamma(ak) - math.lgamma(bk)) + (ak - bk) * (sp_digamma(ak) - sp_digamma(Sa))
    return out


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
