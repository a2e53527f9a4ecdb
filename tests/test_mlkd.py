"""MLKD (distiller_zoo/MLKD.py): the authors' sum, the hand-computed 2x2 case, its weights, both --mlkd_mask readings."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import DISTILLERS, default_options
from distiller_zoo.base import Batch, BuildContext, NetOutput
from distiller_zoo.MLKD import MASKINGS, mlkd_loss, mlkd_temperatures, mlkd_terms

from logit_cases import ctx, parse, tt
from references import np_kd, np_softmax, np_standardize
from sync_guard import NoHostSync

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- MLKD
def np_mlkd(sw, tw, ss, ts, temps, logit_stand):
    """MLKD as the authors' KD_ours.forward_train adds it up, with the masks as documented, in
    numpy (independent of the module): weak instance (masked) + "strong" instance (strong view at
    the first three temperatures, weak view at 2 and 6) + weak batch (masked) + weak class levels."""
    B, C = sw.shape
    conf = np_softmax(tw).max(1)
    mask = (conf <= np.percentile(conf, 50)).astype(float)
    cconf = np_softmax(tw).sum(0)
    cmask = (cconf <= np.percentile(cconf, 50)).astype(float)
    kd_in = (lambda z: np_standardize(z)) if logit_stand else (lambda z: z)
    ins = np.zeros(B)
    bc = np.zeros(B)
    cc = 0.0
    for k, T in enumerate(temps):
        s_v, t_v = (ss, ts) if k < 3 else (sw, tw)
        ins += mask * np_kd(kd_in(sw), kd_in(tw), T) + np_kd(kd_in(s_v), kd_in(t_v), T)
        ps, pt = np_softmax(sw / T), np_softmax(tw / T)
        bc += mask * ((pt @ pt.T - ps @ ps.T) ** 2).sum(1)
        cc += (((pt.T @ pt - ps.T @ ps) ** 2) * cmask[None, :]).sum() / C
    return ins, bc, cc


@pytest.mark.parametrize("logit_stand", [False, True])
def test_mlkd_matches_the_authors_sum(logit_stand):
    g = np.random.default_rng(0)
    sw, tw, ss, ts = (g.normal(size=(6, 5)) * 3 for _ in range(4))
    temps = mlkd_temperatures(2.0 if logit_stand else 4.0)
    assert temps == ((2.0 if logit_stand else 4.0), 3.0, 5.0, 2.0, 6.0)
    terms = mlkd_terms(tt(sw), tt(tw), tt(ss), tt(ts), temps, logit_stand)
    ins, bc, cc = np_mlkd(sw, tw, ss, ts, temps, logit_stand)
    assert np.allclose(terms["instance"].numpy(), ins, rtol=1e-9)
    assert np.allclose(terms["batch"].numpy(), bc, rtol=1e-9)
    assert np.allclose(terms["class"].numpy(), cc, rtol=1e-9)
    total = mlkd_loss(tt(sw), tt(tw), tt(ss), tt(ts), temps[0], logit_stand)
    # the per-sample mean is the batch loss: masked instance mean + masked Gram losses / B + class loss
    assert total.mean().item() == pytest.approx(ins.mean() + bc.sum() / 6 + cc, rel=1e-9)


def test_mlkd_mask_selects_samples_and_the_strong_view_enters_only_the_instance_sum_at_t0_3_5():
    g = np.random.default_rng(1)
    sw, tw, ss, ts = (g.normal(size=(6, 5)) * 3 for _ in range(4))
    conf = np_softmax(tw).max(1)
    dropped = int(np.argmax(conf))            # the teacher's most confident sample is masked out
    ins = mlkd_terms(tt(sw), tt(tw), tt(ss), tt(ts), (4.0,))["instance"]
    strong_only = np_kd(ss, ts, 4.0)
    assert ins[dropped].item() == pytest.approx(strong_only[dropped], rel=1e-9)
    temps = mlkd_temperatures(4.0)
    a = mlkd_terms(tt(sw), tt(tw), tt(ss), tt(ts), temps)
    b = mlkd_terms(tt(sw), tt(tw), tt(ss + g.normal(size=ss.shape)), tt(ts), temps)
    assert not torch.allclose(a["instance"], b["instance"])       # T0, 3, 5 read the strong view
    for name in ("batch", "class"):                              # the authors never add strong ones
        assert torch.equal(a[name], b[name])
    # at the 4th and 5th temperatures (2 and 6) the "strong" sum reads the weak view, as the authors' code
    late = (9.0, 9.0, 9.0, 2.0, 6.0)
    only_late = mlkd_terms(tt(sw), tt(tw), tt(ss), tt(ts), late)["instance"] - \
        mlkd_terms(tt(sw), tt(tw), tt(ss), tt(ts), late[:3])["instance"]
    weak_kd = np_kd(sw, tw, 2.0) + np_kd(sw, tw, 6.0)
    keep = conf <= np.percentile(conf, 50)
    assert np.allclose(only_late.numpy(), keep * weak_kd + weak_kd, rtol=1e-9)


def test_mlkd_hand_computed_two_by_two():
    """B = 2, C = 2, one temperature T = 1, every number by hand. Weak student logits 0 (p_s = 1/2
    everywhere), weak teacher logits (ln 3, 0) and (0, 0): p_t = (3/4, 1/4) and (1/2, 1/2). The
    teacher's top probabilities 3/4, 1/2 have median 5/8: only sample 2 is kept; class sums
    (5/4, 3/4) have median 1: only class 2 is kept.
    Batch level: G_t = [[5/8, 1/2], [1/2, 1/2]], G_s = 1/2 everywhere, rows (1/8)^2 = 1/64 and 0;
    the mask keeps row 2: (0, 0). Class level: M_t = [[13/16, 7/16], [7/16, 5/16]], M_s = 1/2
    everywhere; column 2 of (M_t - M_s)^2 holds (1/16)^2 and (3/16)^2: (1 + 9)/256 / C = 5/256.
    Instance level: the weak term is 0 (sample 1 masked, sample 2 equal); strong view: logits
    (5, -5) for both teacher rows, student (5, -5) and (-5, 5): KL 0 and
    (s(10) - s(-10)) * 10 = 10 tanh 5 (s the logistic function).
    The strong view's own correlations (teacher all class 1, student one of each) are far from the
    teacher's and must not enter: the authors' code never adds them."""
    ln3 = math.log(3.0)
    sw = torch.zeros(2, 2, dtype=torch.float64)
    tw = torch.tensor([[ln3, 0.0], [0.0, 0.0]], dtype=torch.float64)
    ss = torch.tensor([[5.0, -5.0], [-5.0, 5.0]], dtype=torch.float64)
    ts = torch.tensor([[5.0, -5.0], [5.0, -5.0]], dtype=torch.float64)
    terms = mlkd_terms(sw, tw, ss, ts, (1.0,))
    assert terms["batch"].tolist() == pytest.approx([0.0, 0.0], abs=1e-15)
    assert terms["class"].tolist() == pytest.approx([5 / 256, 5 / 256], rel=1e-12)
    assert terms["instance"].tolist() == pytest.approx([0.0, 10 * math.tanh(5.0)], rel=1e-12, abs=1e-12)


def test_mlkd_uses_the_authors_weights_unless_given():
    args, line = parse("--distill", "mlkd")
    assert (args.gamma, args.alpha) == (0.1, 0.9) and "authors' weights" in line
    args, _ = parse("--distill", "mlkd", "-r", "1", "-a", "2")
    assert (args.gamma, args.alpha) == (1.0, 2.0)


def test_mlkd_distiller_takes_the_strong_view_of_its_own_teacher():
    opt = default_options()
    d = DISTILLERS["mlkd"](ctx(opt, teacher_index=1))
    assert d.views == ("strong",)
    g = torch.Generator().manual_seed(3)
    sw, ss = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    tw = [torch.randn(6, 5, generator=g) for _ in range(2)]
    ts = [torch.randn(6, 5, generator=g) for _ in range(2)]
    b = Batch(sw, torch.zeros(6, dtype=torch.long),
              view_outputs=[(NetOutput([], ss), [NetOutput([], z) for z in ts])])
    term = d(NetOutput([], sw), NetOutput([], tw[1]), b)
    assert torch.allclose(term.per_sample, mlkd_loss(sw, tw[1], ss, ts[1], 4.0), rtol=1e-6)
    with pytest.raises(ValueError, match="strong"):
        d(NetOutput([], sw), NetOutput([], tw[1]), Batch(sw, torch.zeros(6, dtype=torch.long)))


# ``--mlkd_mask reference``: MLKD's confidence masks as the authors' code applies them (issue 27
# item 5). Their ``KD_ours.forward_train`` multiplies a batch-averaged loss by the mask and averages
# again; the batch mean of our per-sample terms must equal that value exactly. The authors' way is
# written out here on its own (numpy percentiles, batch-mean losses, ``(loss * mask).mean()``), not
# with the module's functions.
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
