"""Spot-adaptive routing (Song et al., "Spot-adaptive Knowledge Distillation", IEEE TIP 2022) with
one teacher or several: decisions, graft pass, masked losses, the step order, M = 1 = the paper."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train_student
from distiller_zoo import ENSEMBLES
from distiller_zoo.AT import attention_loss
from distiller_zoo.KD import kd_loss
from distiller_zoo.base import Batch, BuildContext, Distiller, TeacherLoss, NetOutput
from distiller_zoo.routing import OUTPUT, distiller_rows, gumbel_softmax
from distiller_zoo.routing.gumbel import gumbel_noise
from distiller_zoo.routing.router import Routing, subset_batch, subset_output
from helper.checkpoint import ResumeError
from helper.spot_adaptive import same_family
from models import model_dict
from builders import forward, step_config, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights

NUM_CLASSES = 10
IMAGE = 16          # the CIFAR nets run on any size >= 8; 16 px keeps these tests fast


def options(**kw):
    return step_config(**dict(dict(spot_adaptive=True, learning_rate=0.05, lr_decay_epochs="100", gamma=1.0,
                                   alpha=1.0, beta=1.0, feat_dim=16, nce_k=50), **kw))


_BUILT = {}


def make_task(distill="attention", archs=("resnet8",), student="resnet8", method="AVERAGE_LOSS", seed=0, **kw):
    """A fresh spot-adaptive student task (built once per configuration, then deep-copied)."""
    key = (distill, tuple(archs), student, method, seed, repr(sorted(kw.items())))
    if key not in _BUILT:
        _BUILT[key] = build_task(distill, archs, student, method, seed, **kw)
    return copy.deepcopy(_BUILT[key])


def build_task(distill, archs, student, method, seed, **kw):
    args = options(distill=distill, ensemble_method=method, teacher_num=len(archs), **kw)
    task = student_task(args, archs, student, NUM_CLASSES, seed, num_data=64, image_size=IMAGE,
                        train_labels=torch.arange(64) % NUM_CLASSES)
    task.train_mode()
    task.epoch_begin(2, 10)
    return task


def data(B=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, IMAGE, IMAGE, generator=g), torch.randint(0, NUM_CLASSES, (B,), generator=g),
            torch.arange(B))


def outputs(task, x):
    s_feats, s_logits = task.model(x, is_feat=True)
    s_out = NetOutput(s_feats, s_logits, task.model.head, task.model)
    return s_out, task.teachers.outputs(x)


def term(task, key):
    return next(t for t in task.terms if t.key == key)


# -- decisions ---------------------------------------------------------------------------------------
def test_gumbel_decisions_are_one_hot_forward_with_straight_through_gradient():
    logits = torch.randn(64, 4, 3, requires_grad=True)
    noise = gumbel_noise(logits)
    y = gumbel_softmax(logits, 5.0, noise=noise)
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y.detach().sum(-1), torch.ones(64, 4))
    assert torch.equal(y.detach().argmax(-1), (logits + noise).argmax(-1))
    c = torch.randn(64, 4, 3)
    (grad,) = torch.autograd.grad((y * c).sum(), logits)
    soft = F.softmax((logits + noise) / 5.0, dim=-1)
    (expected,) = torch.autograd.grad((soft * c).sum(), logits)
    assert grad.abs().sum() > 0 and torch.allclose(grad, expected)
    # the hard sample follows softmax(logits) whatever the temperature
    p = torch.tensor([0.2, 0.8])
    draws = gumbel_softmax(p.log().expand(20000, 2), 5.0).detach().mean(0)
    assert torch.allclose(draws, p, atol=0.02)


def test_policy_decisions_are_one_hot_and_train_the_policy():
    task = make_task(policy_homo="no")
    x, y, _ = data()
    s_out, t_outs = outputs(task, x)
    d = task.routing.router.decide(s_out, t_outs)
    assert d.y.shape == (8, 4, 2)                                   # spots f1, f2, f3, out; teacher, student
    assert set(d.y.detach().unique().tolist()) <= {0.0, 1.0} and torch.equal(d.y.detach().sum(-1), torch.ones(8, 4))
    assert torch.equal(d.selected[:, 0], d.y.detach()[..., 0].t())  # selected = "teacher" option
    d.y[..., 0].sum().backward()
    assert task.routing.router.policy.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.model.parameters())     # policy input is detached


@pytest.mark.parametrize("archs, student, homo, favoured", [
    (("resnet8",), "resnet8", "auto", [0]),
    (("resnet14", "resnet8x4"), "resnet8", "auto", [0]),             # resnet8x4: same family, other widths
    (("resnet8x4",), "resnet8", "yes", [0]),
    (("resnet8",), "resnet8", "no", []),
])
def test_start_up_bias_towards_distilling_for_same_family_pairs(archs, student, homo, favoured):
    task = make_task("kd", archs=archs, student=student, policy_homo=homo, method="AVERAGE_LOSS")
    router = task.routing.router
    assert router.favoured == favoured
    bias = router.policy.fc.bias
    assert bias.is_leaf and bias.requires_grad                        # edited under no_grad (reference bug)
    b = bias.detach().view(len(router.plan.spots), len(archs) + 1)
    for m in range(len(archs)):
        assert (b[:, m] > 5).all() == (m in favoured)
    if favoured:                                                      # it starts distilling everywhere
        x, _, _ = data(B=32)
        s_out, t_outs = outputs(task, x)
        assert router.usage(router.decide(s_out, t_outs))["spot_out"] > 0.95


# -- spots -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distill, spots", [
    ("attention", ["f1", "f2", "f3", "out"]), ("nst", ["f1", "f2", "f3", "out"]),
    ("vid", ["f1", "f2", "f3", "out"]), ("kdsvd", ["f2", "f3", "out"]),
    ("hint", ["f2", "out"]), ("similarity", ["f3", "out"]), ("factor", ["f3", "out"]),
    ("rkd", ["pool", "out"]), ("pkt", ["pool", "out"]), ("correlation", ["pool", "out"]), ("crd", ["pool", "out"]),
    ("kd", ["out"]),
])
def test_spots_follow_where_each_loss_reads(distill, spots):
    task = make_task(distill)
    plan = task.routing.router.plan
    assert [s.label for s in plan.spots] == spots
    assert plan.term_rows["kd"] == [len(spots) - 1]
    if distill != "kd":
        assert [plan.spots[k].label for k in plan.term_rows[distill]] == spots[:-1]
    assert plan.relational.get(distill, False) == (distill in ("similarity", "rkd", "pkt", "correlation"))
    assert len(task.routing.router.hints) == len(spots) - 1


@pytest.mark.parametrize("pairing, spots", [
    ("first", [(1, (1,)), (2, (2,)), (3, (3,))]),                        # the default: RepDistiller's zip
    ("last", [(2, (1,)), (3, (2,)), (4, (3,))]),
])
def test_heterogeneous_spots_pair_each_network_own_index(pairing, spots):
    task = make_task("attention", archs=("resnet8",), student="vgg8",      # 4 student maps, 3 teacher maps
                     feat_pairing=pairing)
    assert [(s.student, s.teachers) for s in task.routing.router.plan.spots] == spots + [(OUTPUT, (OUTPUT,))]


def test_same_family_follows_the_reference_homo_configs():
    nets = {name: model_dict[name](num_classes=NUM_CLASSES) for name in
            ("resnet8", "resnet14", "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2", "vgg8", "vgg13")}
    shapes = {name: net.feature_shapes(IMAGE) for name, net in nets.items()}

    def same(a, b):
        return same_family(nets[a], nets[b], shapes[a], shapes[b])
    assert same("resnet8", "resnet14")                                   # resnet56 -> resnet20 style
    assert same("resnet8x4", "resnet32x4") and same("wrn_16_2", "wrn_40_2") and same("vgg8", "vgg13")
    assert not same("resnet8", "resnet32x4")                             # resnet32x4 -> resnet32: homo False
    assert not same("vgg8", "resnet8")


class TwoMapsInOneValue(Distiller):
    """Reads two student maps into one per-sample value, naming no rows."""

    def forward(self, s, t, batch):
        v = s.feats[1].flatten(1).mean(1) + s.feats[2].flatten(1).mean(1) - t.feats[2].flatten(1).mean(1)
        return TeacherLoss(v)


def test_loss_without_per_spot_rows_is_refused():
    shapes = model_dict["resnet8"](num_classes=NUM_CLASSES).feature_shapes(IMAGE)
    d = TwoMapsInOneValue(BuildContext(opt=options(), student_shapes=shapes, teacher_shapes=shapes,
                                       num_classes=NUM_CLASSES))
    with pytest.raises(ValueError, match="cannot be routed"):
        distiller_rows(d, shapes, shapes, num_classes=NUM_CLASSES, image_size=IMAGE)


# -- the graft pass ----------------------------------------------------------------------------------
def one_hot_decisions(choice, M):
    return F.one_hot(choice, M + 1).float()


@pytest.mark.parametrize("archs", [("resnet8",), ("resnet14", "wrn_16_2", "resnet8")])
def test_graft_is_the_plain_student_or_the_plain_teacher(archs):
    task = make_task("attention", archs=archs)
    router, M = task.routing.router, len(archs)
    x, _, _ = data()
    S = len(router.plan.spots)
    bn = {k: v.clone() for k, v in task.model.state_dict().items() if "running" in k}
    with torch.no_grad():
        task.model.eval()
        plain = task.model(x)
        task.model.train()
        student_path = router.graft(x, one_hot_decisions(torch.full((8, S), M), M), task.model, task.teachers.models)
        assert torch.allclose(student_path, plain, atol=1e-5)
        for m, teacher in enumerate(task.teachers.models):
            teacher_path = router.graft(x, one_hot_decisions(torch.full((8, S), m), M), task.model,
                                        task.teachers.models)
            assert torch.allclose(teacher_path, teacher(x), atol=1e-5)
    assert task.model.training                                        # mode restored
    assert all(torch.equal(v, task.model.state_dict()[k]) for k, v in bn.items())   # eval BN: stats untouched


def test_graft_switches_networks_at_the_spots_through_identity_adapters():
    """Same-shape pair, identity adapters: each segment runs the chosen network's stages."""
    task = make_task("attention", archs=("resnet8",))
    router = task.routing.router
    for lists in (router.hints, router.anti_hints):
        for k in range(len(lists)):
            lists[k] = nn.ModuleList([nn.Identity()])
    s, t = task.model, task.teachers.models[0]
    x, _, _ = data(B=6)
    choice = torch.randint(0, 2, (6, 4), generator=torch.Generator().manual_seed(3))
    choice[0], choice[1] = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    with torch.no_grad():
        got = router.graft(x, one_hot_decisions(choice, 1), s, [t])
        s.eval()
        for i in range(6):
            h, last = x[i:i + 1], -1
            for k, spot in enumerate(router.plan.feature_spots):
                net = t if choice[i, k] == 0 else s
                h, last = net.run_stages(h, last + 1, spot.student + 1), spot.student
            net = t if choice[i, -1] == 0 else s
            assert torch.allclose(got[i], net.head(net.run_stages(h, last + 1, net.num_stages))[0], atol=1e-5)


# -- masked losses -----------------------------------------------------------------------------------
def routed_term(task, key, x, y, idx, choice):
    s_out, t_outs = outputs(task, x)
    routing = Routing(task.routing.router, task.routing.router.decision(choice))
    loss, weights, _ = term(task, key)(s_out, t_outs, Batch(x, y, idx, 2), routing)
    return loss, weights, s_out, t_outs


def test_masked_losses_equal_the_masked_mean_times_the_selected_fraction():
    task = make_task("attention", archs=("resnet8x4",))
    x, y, idx = data(B=10)
    choice = torch.randint(0, 2, (10, 4), generator=torch.Generator().manual_seed(5))
    choice[:, 1] = 1                                                  # nobody distilled at f2: that layer adds 0
    loss_at, _, s_out, t_outs = routed_term(task, "attention", x, y, idx, choice)
    loss_kd, _, _, _ = routed_term(task, "kd", x, y, idx, choice)
    t = t_outs[0]
    expected_at = 0.0
    for k, (i, j) in enumerate(term(task, "attention").distillers[0].pairs):
        keep = choice[:, k] == 0
        if keep.any():
            expected_at += attention_loss(s_out.feats[i][keep], t.feats[j][keep]).mean() * keep.sum() / 10
    keep = choice[:, -1] == 0
    expected_kd = kd_loss(s_out.logits[keep], t.logits[keep], 4.0).mean() * keep.sum() / 10
    assert loss_at.item() == pytest.approx(float(expected_at.detach()), rel=1e-5)
    assert loss_kd.item() == pytest.approx(float(expected_kd.detach()), rel=1e-5)
    nobody = torch.ones(10, 4, dtype=torch.long)
    assert routed_term(task, "attention", x, y, idx, nobody)[0].item() == 0.0
    assert routed_term(task, "kd", x, y, idx, nobody)[0].item() == 0.0


@pytest.mark.parametrize("distill", ["similarity", "rkd", "pkt", "correlation"])
def test_relational_losses_are_computed_on_the_routed_sub_batch(distill):
    task = make_task(distill, archs=("resnet8x4",))
    x, y, idx = data(B=12)
    choice = torch.randint(0, 2, (12, 2), generator=torch.Generator().manual_seed(2))
    loss, _, s_out, t_outs = routed_term(task, distill, x, y, idx, choice)
    keep = choice[:, 0] == 0
    d = term(task, distill).distillers[0]
    sub = d(subset_output(s_out, keep), subset_output(t_outs[0], keep), subset_batch(Batch(x, y, idx, 2), keep))
    assert loss.item() == pytest.approx((sub.per_sample.mean() * keep.sum() / 12).item(), rel=1e-5)
    # the samples the routing left out get no gradient from a relational loss (rows masking would give some)
    (grad,) = torch.autograd.grad(loss, s_out.feats[task.routing.router.plan.spots[0].student])
    assert grad[keep].abs().sum() > 0 and grad[~keep].abs().sum() == 0


def test_several_teachers_share_the_weight_mass_of_all():
    """Sample i distilled from teacher d_i alone: ``(1/B) sum_i M w[d_i, i] L[d_i, i]``."""
    task = make_task("kd", archs=("resnet8", "resnet14", "resnet8x4"), method="CAMKD")
    x, y, idx = data(B=12)
    choice = torch.randint(0, 4, (12, 1), generator=torch.Generator().manual_seed(4))
    loss, eff, s_out, t_outs = routed_term(task, "kd", x, y, idx, choice)
    t_logits = torch.stack([t.logits for t in t_outs])
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in t_logits])
    w = (1 - torch.softmax(ce, 0)) / 6
    L = torch.stack([kd_loss(s_out.logits, z, 4.0) for z in t_logits])
    expected = sum(3 * w[c, i] * L[c, i] for i, c in enumerate(choice[:, 0].tolist()) if c < 3) / 12
    assert loss.item() == pytest.approx(float(expected.detach()), rel=1e-5)


def test_mode_all_is_plain_distillation_and_anti_reverses_the_policy():
    task = make_task("attention", spot_mode="all")
    x, y, idx = data()
    s_out, t_outs = outputs(task, x)
    b = Batch(x, y, idx, 2)
    d = task.routing.router.decide(s_out, t_outs)
    assert d.y is None and torch.equal(d.masks, torch.ones_like(d.masks))
    for key in ("kd", "attention"):
        routed, _, _ = term(task, key)(s_out, t_outs, b, task.routing.router.step(d))
        plain, _, _ = term(task, key)(s_out, t_outs, b)
        assert routed.item() == pytest.approx(plain.item(), rel=1e-6)
    adaptive = make_task("attention", policy_homo="no")
    anti = make_task("attention", policy_homo="no", spot_mode="anti")
    s_out, t_outs = outputs(adaptive, x)
    noise = gumbel_noise(torch.zeros(8, 4, 2))
    a = adaptive.routing.router.decide(s_out, t_outs, noise=noise)
    r = anti.routing.router.decide(s_out, t_outs, noise=noise)
    assert torch.equal(r.selected, 1 - a.selected) and 0 < a.selected.mean() < 1
    rnd = make_task("kd", archs=("resnet8", "resnet14"), method="CAMKD", spot_mode="random").routing.router
    d = rnd.decide(NetOutput(feats=[], logits=torch.zeros(4000, NUM_CLASSES)), [])   # uniform over 3 options
    usage = rnd.usage(d)
    assert d.y is None and usage["spot_out"].item() == pytest.approx(2 / 3, abs=0.03)
    assert usage["spot_out_t0"].item() == pytest.approx(1 / 3, abs=0.03)


# -- the paper with one teacher ---------------------------------------------------------------------
def paper_step(task, router, x, y, noise):
    """Song et al.'s single-teacher step written out (two-way decisions, index 0 = distil)."""
    s, t = task.model, task.teachers.models[0]
    f_s, z_s = s(x, is_feat=True)
    with torch.no_grad():
        f_t, z_t = t(x, is_feat=True)
    logits = router.policy.fc(torch.cat([f_t[-1], f_s[-1]], 1).detach()).view(x.shape[0], -1, 2)
    act = gumbel_softmax(logits, 5.0, noise=noise)
    a = [act[:, k, 0] for k in range(act.shape[1])]
    B = x.shape[0]
    loss_kd = 0.0
    for k, (i, j) in enumerate(term(task, "attention").distillers[0].pairs):
        keep = a[k].detach() > 0.5
        if keep.any():
            loss_kd = loss_kd + attention_loss(f_s[i][keep], f_t[j][keep]).mean() * keep.sum() / B
    keep = a[-1].detach() > 0.5
    loss_div = kd_loss(z_s[keep], z_t[keep], 4.0).mean() * keep.sum() / B if keep.any() else 0.0
    student_loss = F.cross_entropy(z_s, y) + loss_div + 1.0 * loss_kd
    # graft
    s.eval()
    x_s = x_t = x
    begin = 0
    for k, spot in enumerate(router.plan.feature_spots):
        h_s = s.run_stages(x_s, begin, spot.student + 1)
        h_t = t.run_stages(x_t, begin, spot.student + 1)
        ak = a[k].view(-1, 1, 1, 1)
        x_t = (1 - ak) * router.hints[k][0](h_s) + ak * h_t
        x_s = (1 - ak) * h_s + ak * router.anti_hints[k][0](h_t)
        begin = spot.student + 1
    out_s, out_t = s.head(s.run_stages(x_s, begin, 4)), t.head(t.run_stages(x_t, begin, 4))
    s.train()
    graft = out_s * (1 - a[-1].view(-1, 1)) + out_t * a[-1].view(-1, 1)
    ce_g = F.cross_entropy(graft, y)
    policy_loss = ce_g + max(0, B / 2 - a[-1].sum())                 # classify weight 1
    return student_loss, policy_loss


def test_m1_routing_is_the_single_teacher_method():
    """The M-teacher code with one teacher reproduces the paper's equations: the student loss, the
    policy loss, and the policy step (SGD, momentum, weight decay, lr x 0.5)."""
    task = make_task("attention", archs=("resnet8",), policy_homo="no")
    x, y, idx = data(B=16)
    reference = copy.deepcopy(task)
    torch.manual_seed(11)
    noise = gumbel_noise(torch.zeros(16, 4, 2))
    student_ref, policy_ref = paper_step(reference, reference.routing.router, x, y, noise)
    params = list(reference.routing.router.parameters())
    grads = torch.autograd.grad(policy_ref, params, allow_unused=True)
    torch.manual_seed(11)
    out = forward(task, x, y, idx, epoch=2)
    task.routing.update_policy(out)                       # the policy's part of train_step
    assert out.loss.item() == pytest.approx(student_ref.item(), rel=1e-5)
    assert out.metrics["policy_loss"].item() == pytest.approx(policy_ref.item(), rel=1e-5)
    lr, wd = 0.05 * 0.5, 1e-3
    for p_new, p_old, g in zip(task.routing.router.parameters(), params, grads):
        g = torch.zeros_like(p_old) if g is None else g
        assert torch.allclose(p_new, p_old - lr * (g + wd * p_old), atol=1e-6)


# -- gradients and the step order ---------------------------------------------------------------------
def test_student_and_policy_get_gradient_from_their_own_losses_only():
    task = make_task("hint", archs=("resnet8", "resnet14"), method="CAMKD", policy_homo="no")
    router_before = [p.detach().clone() for p in task.routing.router.parameters()]
    x, y, idx = data(B=16)
    out = forward(task, x, y, idx, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(router_before, task.routing.router.parameters()))   # forward only
    task.routing.update_policy(out)
    # the policy step happened: the policy and adapters moved, from L_p alone
    assert any(not torch.equal(a, b) for a, b in zip(router_before, task.routing.router.parameters()))
    assert all(p.grad is not None for p in task.routing.router.policy.parameters())
    assert all(p.grad is None for p in task.terms.parameters())          # L_p never reaches the connectors
    assert all(p.grad is None for p in task.model.parameters())          # ... nor the student (backward(inputs=))
    for t in task.teachers.models:                                        # and teachers get none
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    # then train_step's zero_grad of the main optimiser, backward of the student loss
    router_grads = [p.grad.clone() for p in task.routing.router.parameters()]
    assert all(g is None for g in torch.autograd.grad(out.loss, list(task.routing.router.parameters()), retain_graph=True,
                                                       allow_unused=True))
    task.model.zero_grad(set_to_none=True)
    out.loss.backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(router_grads, task.routing.router.parameters()))
    assert task.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term(task, "hint").parameters())
    for t in task.teachers.models:
        assert all(p.grad is None for p in t.parameters())
    assert set(out.metrics) >= {"spot_f2", "spot_out", "spot_f2_t0", "spot_out_t1", "policy_loss", "graft_ce"}
    assert all(0 <= out.metrics[k].item() <= 1 for k in out.metrics if k.startswith("spot_"))


@pytest.mark.parametrize("method", sorted(m for m, cls in ENSEMBLES.items() if cls.min_teachers <= 3))
def test_every_strategy_with_routing(method):
    task = make_task("attention", archs=("resnet8", "resnet14", "resnet8"), method=method)
    x, y, idx = data(B=8)
    with recording_term_weights(task) as seen:
        out = forward(task, x, y, idx, epoch=2)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert task.model.conv1.weight.grad is not None
    assert_shares_are_the_step_weights([out], seen, steps=1)


def test_policy_lr_follows_the_schedule():
    task = make_task("kd", lr_decay_epochs=[3], policy_lr_ratio=0.5)
    task.epoch_begin(5, 10)
    assert task.routing.policy_optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.1 * 0.5)


def test_policy_and_adapters_are_saved_and_restored_strictly():
    task = make_task("attention", policy_homo="no")
    x, y, idx = data()
    task.routing.update_policy(forward(task, x, y, idx, epoch=2))
    state = copy.deepcopy(task.extra_state())
    fresh = make_task("attention", policy_homo="no", seed=5)
    fresh.load_extra_state(state)
    for (k, a), b in zip(task.routing.router.state_dict().items(), fresh.routing.router.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.routing.policy_optimizer.state_dict()["state"].keys() == task.routing.policy_optimizer.state_dict()["state"].keys()
    with pytest.raises(ResumeError, match="spot-adaptive"):
        fresh.load_extra_state({k: v for k, v in state.items() if k != "spot_router"})
    other = make_task("hint")                                             # other spots: does not fit
    with pytest.raises(ResumeError, match="does not fit"):
        other.load_extra_state({**other.extra_state(), "spot_router": state["spot_router"]})


@pytest.mark.parametrize("argv, needle", [
    (["--spot_adaptive", "--policy_tau", "0"], "argument --policy_tau: expected a finite number > 0"),
    (["--spot_adaptive", "--classify_weight", "-1"], "argument --classify_weight: expected a finite number > 0"),
    (["--spot_adaptive", "--spot_mode", "sometimes"], "--spot_mode"),
])
def test_bad_spot_flags_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
