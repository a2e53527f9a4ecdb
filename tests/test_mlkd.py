"""``--mlkd_mask reference``: MLKD's confidence masks as the authors' code applies them (issue 27
item 5). Their ``KD_ours.forward_train`` multiplies a batch-averaged loss by the mask and averages
again; the batch mean of our per-sample terms must equal that value exactly. The authors' way is
written out here on its own (numpy percentiles, batch-mean losses, ``(loss * mask).mean()``), not
with the module's functions."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import DISTILLERS, default_options
from distiller_zoo.base import Batch, BuildContext, NetOutput
from distiller_zoo.MLKD import MASKINGS, mlkd_loss, mlkd_temperatures, mlkd_terms

from sync_guard import NoHostSync


# ------------------------------------------------------------ the authors' computation, re-derived
def authors_kd(s, t, T):                       # batch mean of T^2 KL(p_t || p_s)
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="none").sum(1).mean() * T * T


def authors_bc(s, t, T):                       # ||G_t - G_s||^2 / B, G = p p^T
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]


def authors_cc(s, t, T):                       # ||M_t - M_s||^2 / C, M = p^T p
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]


def authors_mlkd(sw, tw, ss, ts, T0):
    """(kd_weak + kd_strong, bc_weak, cc_weak) with the KD weight 1, the way ``KD_ours`` adds them."""
    p = F.softmax(tw, 1)
    conf = p.max(1).values
    mask = torch.from_numpy(conf.numpy() <= np.percentile(conf.numpy(), 50))
    class_conf = p.sum(0)
    class_mask = torch.from_numpy(class_conf.numpy() <= np.percentile(class_conf.numpy(), 50))
    temps = (T0, 3.0, 5.0, 2.0, 6.0)
    kd_weak = sum((authors_kd(sw, tw, T) * mask).mean() for T in temps)
    kd_strong = (sum(authors_kd(ss, ts, T) for T in temps[:3])
                 + sum(authors_kd(sw, tw, T) for T in temps[3:]))
    bc_weak = sum((authors_bc(sw, tw, T) * mask).mean() for T in temps)
    cc_weak = sum((authors_cc(sw, tw, T) * class_mask).mean() for T in temps)
    return kd_weak + kd_strong, bc_weak, cc_weak


def logits(seed, B=16, C=10, sharp=6.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B,), generator=g)
    tw = torch.randn(B, C, generator=g, dtype=torch.float64) * 2 + \
        sharp * F.one_hot(y, C).double() * torch.rand(B, 1, generator=g, dtype=torch.float64)
    sw = torch.randn(B, C, generator=g, dtype=torch.float64) + 0.5 * tw
    ss = sw + torch.randn(B, C, generator=g, dtype=torch.float64)
    ts = tw + torch.randn(B, C, generator=g, dtype=torch.float64)
    return sw, tw, ss, ts


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed, B, C", [(0, 16, 10), (1, 64, 100), (2, 7, 5)])
def test_reference_batch_means_are_the_authors_values(seed, B, C):
    sw, tw, ss, ts = logits(seed, B, C)
    terms = mlkd_terms(sw, tw, ss, ts, mlkd_temperatures(4.0), masking="reference")
    kd, bc, cc = authors_mlkd(sw, tw, ss, ts, 4.0)
    for name in ("instance", "batch", "class"):
        assert terms[name].shape == (B,)
    assert terms["instance"].mean().item() == pytest.approx(kd.item(), rel=1e-12)
    assert terms["batch"].mean().item() == pytest.approx(bc.item(), rel=1e-12)
    assert terms["class"].mean().item() == pytest.approx(cc.item(), rel=1e-12)
    total = mlkd_loss(sw, tw, ss, ts, 4.0, masking="reference")
    assert total.mean().item() == pytest.approx((kd + bc + cc).item(), rel=1e-12)


def test_reference_spreads_the_kept_fraction_over_every_sample():
    """Per sample: f * KD_i and f * row_i (f the kept fraction), every sample the same class value;
    a sample the paper's reading drops still carries its share."""
    sw, tw, ss, ts = logits(3, B=8, C=6)
    T = (4.0,)
    ref = mlkd_terms(sw, tw, ss, ts, T, masking="reference")
    paper = mlkd_terms(sw, tw, ss, ts, T, masking="paper")
    conf = F.softmax(tw, 1).max(1).values
    keep = torch.from_numpy(conf.numpy() <= np.percentile(conf.numpy(), 50))   # the authors' median
    f = keep.double().mean()
    kd_i = F.kl_div(F.log_softmax(sw / 4, 1), F.softmax(tw / 4, 1), reduction="none").sum(1) * 16
    kd_strong = F.kl_div(F.log_softmax(ss / 4, 1), F.softmax(ts / 4, 1), reduction="none").sum(1) * 16
    assert torch.allclose(ref["instance"], f * kd_i + kd_strong, rtol=1e-12)
    assert torch.allclose(paper["instance"], keep.double() * kd_i + kd_strong, rtol=1e-12)
    assert bool((ref["class"] == ref["class"][0]).all())
    dropped = ~keep
    assert bool((ref["batch"][dropped] > 0).all()) and bool((paper["batch"][dropped] == 0).all())


def test_paper_stays_the_default_and_the_readings_differ():
    sw, tw, ss, ts = logits(4, B=32, C=100, sharp=10.0)
    temps = mlkd_temperatures(4.0)
    default = mlkd_terms(sw, tw, ss, ts, temps)
    paper = mlkd_terms(sw, tw, ss, ts, temps, masking="paper")
    ref = mlkd_terms(sw, tw, ss, ts, temps, masking="reference")
    for name in default:
        assert torch.equal(default[name], paper[name])
    assert ref["batch"].mean() > 2 * paper["batch"].mean()
    assert ref["class"].mean() > 2 * paper["class"].mean()
    assert set(MASKINGS) == {"paper", "reference"} and default_options().mlkd_mask == "paper"


def test_the_flag_reaches_the_distiller():
    g = torch.Generator().manual_seed(5)
    sw, ss = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    tw, ts = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    batch = Batch(sw, torch.zeros(6, dtype=torch.long), view_outputs=[(NetOutput([], ss), [NetOutput([], ts)])])
    for reading in ("paper", "reference"):
        opt = default_options(mlkd_mask=reading)
        d = DISTILLERS["mlkd"](BuildContext(opt=opt, student_shapes=[], teacher_shapes=[], num_classes=5))
        out = d(NetOutput([], sw), NetOutput([], tw), batch)
        assert torch.allclose(out.per_sample, mlkd_loss(sw, tw, ss, ts, 4.0, masking=reading), rtol=1e-6)


def test_reference_reading_has_gradients_and_no_host_sync():
    sw, tw, ss, ts = logits(6, B=8, C=5)
    sw.requires_grad_(True)
    with NoHostSync():
        loss = mlkd_loss(sw, tw, ss, ts, 4.0, masking="reference").mean()
    loss.backward()
    assert sw.grad is not None and bool(torch.isfinite(sw.grad).all()) and sw.grad.abs().sum() > 0
