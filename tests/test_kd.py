"""The logit family: logit standardization, KD, DKD, CTKD, MLKD and MLKD's strong view.

Every loss is compared with values computed independently here (numpy, plain loops) on
hand-built logits; the strong augmentation's operations are compared pixel by pixel with Pillow."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset import DataSpec, DeviceLoader
from dataset.augment import (AUGMENTATIONS, CUTOUT_FILL, RANDAUG_OPS, RANDAUG_RANGES, crop_flip, cutout,
                             randaugment_round, strong_params)
from distiller_zoo import DISTILLERS, default_options, dkd_loss, kd_loss, standardize
from distiller_zoo.base import Batch, BuildContext, NetOutput
from distiller_zoo.CTKD import CTKD, grl_lambda
from distiller_zoo.DKD import dkd_terms
from distiller_zoo.KD import kd_logit_grad
from distiller_zoo.MLKD import mlkd_loss, mlkd_terms, mlkd_temperatures

from helper.objective import loader_views

from builders import forward, random_batch, step_config, student_plan, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights


# ------------------------------------------------------------------ independent references (numpy)
def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_standardize(z):
    z = np.asarray(z, dtype=np.float64)
    C = z.shape[-1]
    mean = z.sum(-1, keepdims=True) / C
    std = np.sqrt(((z - mean) ** 2).sum(-1, keepdims=True) / (C - 1))
    return (z - mean) / (std + 1e-7)


def np_kl(p, q):
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def np_kd(s, t, T):
    return np.array([T * T * np_kl(np_softmax(ti / T), np_softmax(si / T)) for si, ti in zip(s, t)])


def np_dkd_terms(s, t, y, T):
    tckd, nckd = [], []
    for si, ti, yi in zip(s, t, y):
        ps, pt = np_softmax(si / T), np_softmax(ti / T)
        tckd.append(T * T * np_kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]]))
        keep = [c for c in range(len(si)) if c != yi]
        nckd.append(T * T * np_kl(np_softmax(ti[keep] / T), np_softmax(si[keep] / T)))
    return np.array(tckd), np.array(nckd)


S = np.array([[2.0, -1.0, 0.5, 3.0, 0.0],
              [0.1, 0.2, -0.3, 0.4, 1.5],
              [-2.0, 4.0, 1.0, -1.0, 0.5],
              [1.0, 1.0, 1.0, 2.0, -3.0]])
T_ = np.array([[3.0, -2.0, 1.0, 5.0, -1.0],
               [0.0, 1.0, -1.0, 2.0, 3.0],
               [-1.0, 6.0, 0.0, -2.0, 1.0],
               [2.0, 0.5, 1.5, 4.0, -2.0]])
Y = np.array([3, 4, 1, 0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tt(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


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


# ---------------------------------------------------------------------------------------------- DKD
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


def _ctx(opt, num_classes=5, teacher_index=0):
    return BuildContext(opt=opt, student_shapes=[], teacher_shapes=[], num_classes=num_classes,
                        teacher_index=teacher_index)


def _opt(**kw):
    return default_options(**kw)


def test_dkd_warmup_ramps_linearly_over_epochs():
    d = DISTILLERS["dkd"](_ctx(_opt()))
    s, t = NetOutput([], tt(S)), NetOutput([], tt(T_))
    full = dkd_loss(tt(S), tt(T_), torch.tensor(Y), 1.0, 8.0, 4.0)
    for epoch, factor in ((1, 1 / 20), (10, 0.5), (20, 1.0), (100, 1.0)):
        d.epoch_begin(epoch, 240)
        term = d(s, t, Batch(tt(S), torch.tensor(Y), epoch=epoch))
        assert torch.allclose(term.per_sample, factor * full, rtol=1e-12)
        assert term.anchor is s.logits and term.per_sample.shape == (4,)


# --------------------------------------------------------------------------------------------- CTKD
def test_ctkd_curriculum_follows_the_cosine_schedule():
    assert grl_lambda(0) == pytest.approx(0.0, abs=1e-12)
    assert grl_lambda(1) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert grl_lambda(5) == pytest.approx(0.5)
    assert grl_lambda(10) == pytest.approx(1.0) and grl_lambda(240) == pytest.approx(1.0)


def test_ctkd_temperature_receives_the_reversed_gradient_and_loss_is_kd_at_that_temperature():
    d = CTKD(_ctx(_opt()))
    d.epoch_begin(5, 240)                         # lambda = 0.5
    s = tt(S).float().requires_grad_(True)
    term = d(NetOutput([], s), NetOutput([], tt(T_).float()), Batch(s, torch.tensor(Y), epoch=5))
    theta = d.temperature.theta
    T_value = 1 + 20 * torch.sigmoid(theta.detach())
    assert torch.allclose(term.per_sample, kd_loss(s.detach(), tt(T_).float(), T_value), rtol=1e-5)
    assert term.metrics["temp"].item() == pytest.approx(T_value.item(), rel=1e-6)
    term.per_sample.mean().backward()
    # independent derivative of the same loss w.r.t. theta, without the reversal layer
    th = theta.detach().clone().requires_grad_(True)
    (direct,) = torch.autograd.grad(kd_loss(s.detach(), tt(T_).float(), 1 + 20 * torch.sigmoid(th)).mean(), th)
    assert theta.grad.item() == pytest.approx(-0.5 * direct.item(), rel=1e-4)
    assert s.grad is not None and s.grad.abs().sum() > 0     # the student is trained normally


def test_ctkd_temperature_stays_in_range_under_adversarial_updates():
    d = CTKD(_ctx(_opt()))
    d.epoch_begin(20, 240)
    theta = d.temperature.theta
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(20):                          # huge plain gradient steps on theta
        s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) * 4
        term = d(NetOutput([], s), NetOutput([], t), Batch(s, torch.zeros(8, dtype=torch.long), epoch=20))
        theta.grad = None
        term.per_sample.mean().backward()
        with torch.no_grad():
            theta -= 1e4 * theta.grad
        seen.append(term.metrics["temp"].item())
    assert all(1.0 <= T <= 21.0 for T in seen)
    assert abs(theta.item() - 1.0) > 10          # the parameter did move far; T stayed bounded
    assert 1.0 <= d.temperature.value() <= 21.0


def test_ctkd_one_temperature_per_teacher_saved_and_resumed():
    task, _ = make_run(distill="ctkd", ensemble_method="CAMKD")
    temps = [d.temperature.theta for d in task.terms[0].distillers]
    assert len(temps) == 3 and len({id(p) for p in temps}) == 3
    assert all(any(p is q for q in task.trainable().parameters()) for p in temps)
    with torch.no_grad():
        for m, p in enumerate(temps):
            p.fill_(0.1 * m - 1)
    state = task.extra_state()
    task2, _ = make_run(distill="ctkd", ensemble_method="CAMKD")
    task2.load_extra_state(state)
    assert [d.temperature.theta.item() for d in task2.terms[0].distillers] == pytest.approx([-1.0, -0.9, -0.8])


def test_ctkd_step_reports_temperatures_per_teacher():
    task, _ = make_run(distill="ctkd", ensemble_method="AVERAGE_LOSS", logit_stand=True)
    task.train_mode()
    task.epoch_begin(3, 10)
    x, y = random_batch()
    out = forward(task, x, y, epoch=3)
    out.loss.backward()
    for m in range(3):
        assert 1.0 < out.metrics[f"ctkd_t{m}_temp"].item() < 21.0
    assert all(d.temperature.theta.grad is not None for d in task.terms[0].distillers)


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
    opt = _opt()
    d = DISTILLERS["mlkd"](_ctx(opt, teacher_index=1))
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


# ------------------------------------------------------------------- flags, weights, student step
def parse(*argv):
    member = student_plan(*argv).members[0]
    return member.config, member.notes[0]


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
    d = DISTILLERS["dkd"](_ctx(args))
    assert d.T == 2.0 and (d.alpha, d.beta) == (9.0, 54.0)


def test_logit_stand_next_to_a_feature_loss_configures_the_kd_term():
    args, line = parse("--distill", "hint", "--logit-stand")
    assert (args.gamma, args.alpha, args.beta) == (0.1, 9.0, 100.0)


def options(**kw):
    return step_config(**{"beta_delay_epochs": 0, "epochs": 10, **kw})


def make_run(archs=("resnet8", "resnet14", "resnet8"), student="resnet8", num_classes=10, seed=0, **kw):
    args = options(teacher_num=len(archs), **kw)
    return student_task(args, archs, student, num_classes, seed), args


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


# ---------------------------------------------------------------------------- the 'strong' view
def test_strong_view_is_deterministic_for_a_seed_and_in_unit_range():
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fn = AUGMENTATIONS["strong"]
    a = fn(images, torch.Generator().manual_seed(7))
    b = fn(images, torch.Generator().manual_seed(7))
    c = fn(images, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, AUGMENTATIONS["standard"](images, torch.Generator().manual_seed(7)))


def test_loader_serves_weak_and_strong_views_and_replays_an_epoch():
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    spec = DataSpec("toy", 10, 32, 3, (0.5,) * 3, (0.25,) * 3, 40, 0)
    loader = DeviceLoader(images, torch.arange(40) % 10, spec, batch_size=16, device="cpu", seed=3,
                          views=("standard", "strong"))
    loader.set_epoch(2)
    first = [(w.clone(), s.clone()) for (w, s), _ in loader]
    loader.set_epoch(2)
    again = [(w, s) for (w, s), _ in loader]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert all(w.shape == s.shape and not torch.equal(w, s) for w, s in first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_strong_view_is_the_same_on_cpu_and_cuda():
    """dataset/augment.py's promise: the same images and seed give bit-identical strong views on
    CPU and CUDA, for every operation (one batch per operation, so each runs on every sample)."""
    from dataset.augment import affine_fixed_point, affine_matrices, strong_params
    images = _test_images(16)
    for seed in range(8):
        cpu = AUGMENTATIONS["strong"](images, torch.Generator().manual_seed(seed))
        gpu = AUGMENTATIONS["strong"](images.cuda(), torch.Generator().manual_seed(seed))
        assert torch.equal(cpu, gpu.cpu()), seed
    for k in range(len(RANDAUG_OPS)):
        op = torch.full((len(images),), k)
        v = strong_params(len(images), torch.Generator().manual_seed(k), 32, 32)[4][0]
        fixed = affine_fixed_point(affine_matrices(op, v, 32, 32))   # from the draws, on the CPU
        cpu = randaugment_round(images, op, v, fixed)
        gpu = randaugment_round(images.cuda(), op.cuda(), v.cuda(), fixed)
        assert torch.equal(cpu, gpu.cpu()), RANDAUG_OPS[k]


def _pil_ops():
    pytest.importorskip("PIL")          # Pillow is optional (the 'vision' extra)
    from PIL import Image, ImageEnhance, ImageOps
    return {
        "autocontrast": lambda im, v: ImageOps.autocontrast(im),
        "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
        "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
        "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
        "equalize": lambda im, v: ImageOps.equalize(im),
        "identity": lambda im, v: im,
        "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
        "rotate": lambda im, v: im.rotate(v),
        "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
        "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda im, v: ImageOps.solarize(im, v),
        "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
        "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
    }


def to_pil(x):
    from PIL import Image
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(im):
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _test_images(n=12):
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    blocky = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8).repeat_interleave(4, 2) \
        .repeat_interleave(4, 3)
    narrow = (noise.int() // 3 + 60).to(torch.uint8)
    return torch.cat([noise, blocky, narrow])


@pytest.mark.parametrize("name", RANDAUG_OPS)
def test_each_randaugment_operation_matches_pillow_pixel_for_pixel(name):
    images = _test_images()
    lo, hi = RANDAUG_RANGES[name]
    v = lo + (hi - lo) * torch.rand(len(images), generator=torch.Generator().manual_seed(1))
    ours = randaugment_round(images, torch.full((len(images),), RANDAUG_OPS.index(name)), v)
    op = _pil_ops()[name]
    ref = torch.stack([from_pil(op(to_pil(x), float(vi))) for x, vi in zip(images, v)])
    assert torch.equal(ours, ref)


def test_strong_view_equals_the_reference_recipe_in_pillow_with_the_same_draws():
    ops = _pil_ops()
    from PIL import ImageDraw
    images = _test_images(4)
    g_seed = 11
    ours = AUGMENTATIONS["strong"](images, torch.Generator().manual_seed(g_seed))
    top, left, flip, op, mag, frac, cx, cy = strong_params(len(images), torch.Generator().manual_seed(g_seed), 32, 32)
    cropped = crop_flip(images, top, left, flip)
    for i in range(len(images)):
        im = to_pil(cropped[i])
        for r in range(op.shape[0]):
            im = ops[RANDAUG_OPS[op[r, i]]](im, float(mag[r, i]))
        s = float(frac[i]) * 32                  # the reference's CutoutAbs with our centre draw
        if s > 0:
            x0, y0 = int(max(0, float(cx[i]) - s / 2)), int(max(0, float(cy[i]) - s / 2))
            im = im.copy()
            ImageDraw.Draw(im).rectangle((x0, y0, min(32, x0 + s), min(32, y0 + s)), CUTOUT_FILL)
        assert torch.equal(torch.round(ours[i] * 255).to(torch.uint8), from_pil(im)), i
    # cutout on its own: nothing happens for a zero size
    assert torch.equal(cutout(images, torch.zeros(len(images)), cx, cy), images)
