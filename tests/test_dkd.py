"""DKD (distiller_zoo/DKD.py): its two terms against hand-computed values, the decomposition of KD, the warm-up."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import DISTILLERS, default_options, dkd_loss
from distiller_zoo.base import Batch, NetOutput
from distiller_zoo.DKD import dkd_terms

from logit_cases import S, T_, Y, ctx, tt
from references import np_kd, np_kl, np_softmax, np_standardize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def np_dkd_terms(s, t, y, T):
    tckd, nckd = [], []
    for si, ti, yi in zip(s, t, y):
        ps, pt = np_softmax(si / T), np_softmax(ti / T)
        tckd.append(T * T * np_kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]]))
        keep = [c for c in range(len(si)) if c != yi]
        nckd.append(T * T * np_kl(np_softmax(ti[keep] / T), np_softmax(si[keep] / T)))
    return np.array(tckd), np.array(nckd)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_terms_match_hand_computed_values(T):
    tckd, nckd = dkd_terms(tt(S), tt(T_), torch.tensor(Y), T)
    ref_t, ref_n = np_dkd_terms(S, T_, Y, T)
    assert np.allclose(tckd.numpy(), ref_t, rtol=1e-9)
    assert np.allclose(nckd.numpy(), ref_n, rtol=1e-9)
    # alpha = beta = 1: the two terms sum to the total; and the loss is linear in alpha, beta
    assert np.allclose(dkd_loss(tt(S), tt(T_), torch.tensor(Y), 1.0, 1.0, T).numpy(), ref_t + ref_n, rtol=1e-9)
    assert np.allclose(dkd_loss(tt(S), tt(T_), torch.tensor(Y), 2.0, 8.0, T).numpy(), 2 * ref_t + 8 * ref_n,
                       rtol=1e-9)


def test_dkd_decomposes_kd():
    """KD = TCKD + (1 - p_t[gt]) * NCKD, per sample (Zhao et al. 2022, Eq. 7)."""
    tckd, nckd = dkd_terms(tt(S), tt(T_), torch.tensor(Y), 4.0)
    pt_gt = np.array([np_softmax(T_[i] / 4)[Y[i]] for i in range(4)])
    assert np.allclose((tckd + torch.tensor(1 - pt_gt) * nckd).numpy(), np_kd(S, T_, 4.0), rtol=1e-9)


def test_dkd_mean_equals_reference_batch_formula_and_standardization():
    """Batch DKD as the papers' code computes it: summed probabilities, log, -1000 mask, / B."""
    def batch_dkd(s, t, y, a, b, T):
        gt = F.one_hot(y, s.shape[1]).bool()
        ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
        tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T * T / s.shape[0]
        nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1),
                        reduction="sum") * T * T / s.shape[0]
        return a * tckd + b * nckd
    y = torch.tensor(Y)
    ours = dkd_loss(tt(S), tt(T_), y, 1.0, 8.0, 4.0).mean()
    assert ours.item() == pytest.approx(batch_dkd(tt(S), tt(T_), y, 1.0, 8.0, 4.0).item(), rel=1e-9)
    ls = dkd_loss(tt(S), tt(T_), y, 9.0, 72.0, 2.0, logit_stand=True).mean()
    ref = batch_dkd(tt(np_standardize(S)), tt(np_standardize(T_)), y, 9.0, 72.0, 2.0)
    assert ls.item() == pytest.approx(ref.item(), rel=1e-7)


def test_dkd_warmup_ramps_linearly_over_epochs():
    d = DISTILLERS["dkd"](ctx(default_options()))
    s, t = NetOutput([], tt(S)), NetOutput([], tt(T_))
    full = dkd_loss(tt(S), tt(T_), torch.tensor(Y), 1.0, 8.0, 4.0)
    for epoch, factor in ((1, 1 / 20), (10, 0.5), (20, 1.0), (100, 1.0)):
        d.epoch_begin(epoch, 240)
        term = d(s, t, Batch(tt(S), torch.tensor(Y), epoch=epoch))
        assert torch.allclose(term.per_sample, factor * full, rtol=1e-12)
        assert term.anchor is s.logits and term.per_sample.shape == (4,)
