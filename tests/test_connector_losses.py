"""VID, AB, FT, FSP and CRD: values against the papers' / RepDistiller's batch formulas transcribed
here on small hand-built tensors (connectors are re-run by hand from their parameters, never by
calling the code under test), per-sample shares that average to the batch loss, per-layer rows
that sum to them, gradients that reach the student and its connectors and never a teacher, a
cross-family pair and three teachers of different families under every ensemble strategy, the
connector init stage, and CRD's memory bank and negative sampling."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo import DISTILLERS
from distiller_zoo.base import Batch, BuildContext, NetOutput
from helper.init_stage import run_init_stage
from models import model_dict
from builders import forward, step_config, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights

NUM_CLASSES = 10
STRATEGIES = ["AVERAGE_LOSS", "EBKD", "CAMKD", "AEKD"]
LOSSES = {"vid": 1.0, "abound": 1.0, "factor": 200.0, "fsp": 50.0, "crd": 0.8}
INIT_STAGE = ("abound", "factor", "fsp")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def options(distill="vid", method="AVERAGE_LOSS", **kw):
    return step_config(**dict(dict(distill=distill, ensemble_method=method, gamma=1.0, alpha=1.0, beta=1.0,
                                   beta_delay_epochs=0, learning_rate=0.05, nce_k=16, feat_dim=8), **kw))


def context(s_shapes, t_shapes, opt, num_data=0, labels=None, num_teachers=1):
    return BuildContext(opt=opt, student_shapes=list(s_shapes), teacher_shapes=list(t_shapes),
                        num_classes=NUM_CLASSES, num_data=num_data, train_labels=labels,
                        num_teachers=num_teachers)


def outputs(shapes, B, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, *shape, generator=g).requires_grad_(grad) for shape in shapes]
    return NetOutput(feats=feats, logits=torch.randn(B, NUM_CLASSES, generator=g))


def by_hand(seq, x):
    """Run a Sequential of conv / transposed conv / BN (batch statistics) / (leaky) ReLU layers from
    their parameters with torch.nn.functional."""
    for m in seq.modules() if not isinstance(seq, (nn.Conv2d, nn.ConvTranspose2d)) else [seq]:
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(x, m.weight, m.bias, m.stride, m.padding)
        elif isinstance(m, nn.ConvTranspose2d):
            x = F.conv_transpose2d(x, m.weight, m.bias, m.stride, m.padding)
        elif isinstance(m, nn.BatchNorm2d):
            x = F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)
        elif isinstance(m, nn.LeakyReLU):
            x = F.leaky_relu(x, 0.1)
        elif isinstance(m, nn.ReLU):
            x = F.relu(x)
    return x


def pool_pair(a, b):
    """RepDistiller's rule: the larger map is average-pooled to the smaller one's size."""
    if a.shape[2] > b.shape[2]:
        a = F.adaptive_avg_pool2d(a, (b.shape[2], b.shape[2]))
    elif a.shape[2] < b.shape[2]:
        b = F.adaptive_avg_pool2d(b, (a.shape[2], a.shape[2]))
    return a, b


def check_term(term, expected_batch_loss, B):
    assert term.per_sample.shape == (B,)
    assert term.per_sample.mean().item() == pytest.approx(expected_batch_loss, rel=1e-5, abs=1e-6)
    if term.per_layer is not None:
        assert term.per_layer.shape[1] == B
        assert torch.allclose(term.per_layer.sum(0), term.per_sample, rtol=1e-5, atol=1e-6)


# -- values ------------------------------------------------------------------------------------------
S_SHAPES = [(4, 8, 8), (6, 8, 8), (8, 4, 4), (5, 4, 4), (5,)]
T_SHAPES = [(4, 8, 8), (6, 8, 8), (7, 4, 4), (9, 2, 2), (3, 2, 2), (9,)]   # one more map than the student


@pytest.mark.parametrize("pairing, pairs", [("first", [(1, 1), (2, 2), (3, 3)]), ("last", [(1, 2), (2, 3), (3, 4)])])
def test_vid_value(pairing, pairs):
    B = 5
    torch.manual_seed(0)
    d = DISTILLERS["vid"](context(S_SHAPES, T_SHAPES, options("vid", feat_pairing=pairing)))
    assert d.pairs == pairs                                               # the shared --feat_pairing rule
    var0 = F.softplus(d.layers[0].log_scale) + 1e-5
    assert torch.allclose(var0, torch.full_like(var0, 5.0))               # initial variance 5
    with torch.no_grad():
        for layer in d.layers:
            layer.log_scale.normal_()
    s, t = outputs(S_SHAPES, B, 1), outputs(T_SHAPES, B, 2)
    term = d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    expected = 0.0
    for layer, (i, j) in zip(d.layers, pairs):
        f_s, f_t = s.feats[i], t.feats[j]
        f_s, f_t = pool_pair(f_s, f_t)
        w = [m.weight for m in layer.regressor if isinstance(m, nn.Conv2d)]
        mean = F.conv2d(F.relu(F.conv2d(F.relu(F.conv2d(f_s, w[0])), w[1])), w[2])
        var = (torch.log(1.0 + torch.exp(layer.log_scale)) + 1e-5).view(1, -1, 1, 1)
        expected += torch.mean(0.5 * ((mean - f_t) ** 2 / var + torch.log(var))).item()
    check_term(term, expected, B)
    assert term.per_layer.shape == (3, B) and term.anchor is s.feats[1]



@pytest.mark.parametrize("name", ["attention", "nst", "kdsvd", "vid", "abound"])
def test_default_feat_pairing_is_repdistillers_zip(name):
    """Without --feat_pairing, a cross-architecture pair (the teacher has one more map) is paired as
    RepDistiller's ``zip(feat_s[1:-1], feat_t[1:-1])``: the first min(Ls, Lt) maps."""
    t_shapes = S_SHAPES[:-1] + [(5, 2, 2), (9,)]         # equal channels where zip pairs (kdsvd)
    opt = options(name)
    assert opt.feat_pairing == "first"
    d = DISTILLERS[name](context(S_SHAPES, t_shapes, opt))
    zipped = list(zip(range(1, len(S_SHAPES) - 1), range(1, len(t_shapes) - 1)))
    assert d.pairs == zipped == [(1, 1), (2, 2), (3, 3)]

def ab_reference(connected, targets, B, margin=1.0):
    L = len(connected)
    total = 0.0
    for i, (src, tgt) in enumerate(zip(connected, targets)):
        loss = ((src + margin) ** 2 * ((src > -margin) & (tgt <= 0)).float()
                + (src - margin) ** 2 * ((src <= margin) & (tgt > 0)).float()).abs().sum()
        total += (2 ** (i - L + 1)) * loss / B / 1000 * 3
    return total


def test_abound_value_and_default_zero_main_phase():
    B = 4
    torch.manual_seed(0)
    d = DISTILLERS["abound"](context(S_SHAPES, T_SHAPES, options("abound", main_phase_loss=True,
                                                                 feat_pairing="first")))
    assert DISTILLERS["abound"].needs_preact
    assert isinstance(d.connectors[0], nn.Identity)                       # same channels and size
    s, t = outputs(S_SHAPES, B, 1), outputs(T_SHAPES, B, 2)
    term = d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    connected = [s.feats[1]] + [by_hand(c, f) for c, f in zip(d.connectors[1:], s.feats[2:4])]
    check_term(term, ab_reference(connected, t.feats[1:4], B).item(), B)
    assert term.per_layer.shape == (3, B)
    assert d.init_stage_loss(s, t, None).item() == pytest.approx(term.per_sample.mean().item(), rel=1e-6)

    # RepDistiller's default: no AB loss after the init stage (zeros, still [B], zero anchor gradient)
    d0 = DISTILLERS["abound"](context(S_SHAPES, T_SHAPES, options("abound", feat_pairing="first")))
    term0 = d0(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    assert term0.per_sample.shape == (B,) and not term0.per_sample.any()
    assert term0.anchor_grad is not None and not term0.anchor_grad.any()
    assert d0.init_stage_loss(s, t, None).item() > 0


def fsp_reference(maps):
    out = []
    for i in range(len(maps) - 1):
        bot, top = pool_pair(maps[i], maps[i + 1])
        Bn = bot.shape[0]
        bot = bot.unsqueeze(1).reshape(Bn, 1, bot.shape[1], -1)
        top = top.unsqueeze(2).reshape(Bn, top.shape[1], 1, -1)
        out.append((bot * top).mean(-1))
    return out


def test_fsp_value_equal_channels_and_with_connectors():
    B = 4
    torch.manual_seed(0)
    same_t = [(4, 16, 16), (6, 16, 16), (8, 8, 8), (5, 2, 2), (5,)]      # student's channels, other sizes
    d = DISTILLERS["fsp"](context(S_SHAPES, same_t, options("fsp", main_phase_loss=True)))
    assert all(isinstance(c, nn.Identity) for c in d.connectors)
    s, t = outputs(S_SHAPES, B, 1), outputs(same_t, B, 2)
    term = d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    expected = sum((gs - gt).pow(2).mean() for gs, gt in zip(fsp_reference(s.feats[:-1]), fsp_reference(t.feats[:-1])))
    check_term(term, expected.item(), B)
    assert term.per_layer.shape == (3, B)

    d = DISTILLERS["fsp"](context(S_SHAPES, T_SHAPES, options("fsp", main_phase_loss=True)))
    assert [isinstance(c, nn.Identity) for c in d.connectors] == [True, True, False, False]
    t = outputs(T_SHAPES, B, 3)
    term = d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    s_maps = [s.feats[0], s.feats[1]] + [by_hand(c, f) for c, f in zip(d.connectors[2:], s.feats[2:4])]
    expected = sum((gs - gt).pow(2).mean() for gs, gt in zip(fsp_reference(s_maps), fsp_reference(t.feats[:4])))
    check_term(term, expected.item(), B)

    d0 = DISTILLERS["fsp"](context(S_SHAPES, T_SHAPES, options("fsp")))
    term0 = d0(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    assert term0.per_sample.shape == (B,) and not term0.per_sample.any() and not term0.anchor_grad.any()


def test_factor_value_and_init_loss():
    B = 4
    torch.manual_seed(0)
    s_shapes = [(4, 8, 8), (6, 4, 4), (6,)]
    t_shapes = [(4, 8, 8), (8, 2, 2), (8,)]
    d = DISTILLERS["factor"](context(s_shapes, t_shapes, options("factor")))
    s, t = outputs(s_shapes, B, 1), outputs(t_shapes, B, 2)
    term = d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    factor_s = by_hand(d.translator, s.feats[-2])
    factor_t = by_hand(d.paraphraser.encoder, t.feats[-2])
    assert factor_s.shape[1] == factor_t.shape[1] == 4                   # int(0.5 * C_t)
    factor_s, factor_t = pool_pair(factor_s, factor_t)

    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
    check_term(term, (factor(factor_s) - factor(factor_t)).abs().mean().item(), B)
    assert term.anchor is s.feats[-2]
    rec = by_hand(d.paraphraser.decoder, by_hand(d.paraphraser.encoder, t.feats[-2]))
    assert d.init_stage_loss(s, t, None).item() == pytest.approx(((rec - t.feats[-2]) ** 2).mean().item(), rel=1e-5)
    student = model_dict["resnet8"](num_classes=NUM_CLASSES)
    assert d.init_stage_lr(options("factor", learning_rate=0.05), student) == 0.01     # RepDistiller's rule
    assert d.init_stage_lr(options("factor", learning_rate=0.05),
                           model_dict["MobileNetV2"](num_classes=NUM_CLASSES)) == 0.05


def crd_setup(N=40, mode="exact", K=6, B=5, seed=0):
    torch.manual_seed(seed)
    labels = torch.arange(N) % 4
    opt = options("crd", nce_k=K, feat_dim=5, mode=mode)
    d = DISTILLERS["crd"](context([(3, 4, 4), (7,)], [(3, 4, 4), (9,)], opt, num_data=N, labels=labels))
    return d, labels


def contrast_loss_reference(x, N):
    bsz, m = x.shape[0], x.size(1) - 1
    Pn = 1 / float(N)
    P_pos = x[:, 0]
    log_D1 = torch.log(P_pos / (P_pos + m * Pn + 1e-7))
    P_neg = x[:, 1:]
    log_D0 = torch.log((m * Pn) / (P_neg + m * Pn + 1e-7))
    return -(log_D1.sum() + log_D0.sum()) / bsz


def test_crd_value_memory_update_and_constant_Z():
    N, B, K, T = 40, 5, 6, 0.07
    d, labels = crd_setup(N=N, K=K, B=B)
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    idx = torch.tensor([3, 17, 22, 8, 39])
    mem_s, mem_t = d.memory_s.clone(), d.memory_t.clone()
    torch.manual_seed(5)
    contrast = d.contrast_indices(idx)
    assert contrast.shape == (B, K + 1) and torch.equal(contrast[:, 0], idx)
    term = d(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast)

    def embed(lin, f):
        x = F.linear(f.view(f.shape[0], -1), lin.weight, lin.bias)
        return x / x.pow(2).sum(1, keepdim=True).pow(0.5)
    v1, v2 = embed(d.embed_s.linear, s.feats[-1]), embed(d.embed_t.linear, t.feats[-1])
    out_v2 = torch.exp(torch.bmm(mem_s[contrast.view(-1)].view(B, K + 1, -1), v2.view(B, -1, 1)) / T)
    out_v1 = torch.exp(torch.bmm(mem_t[contrast.view(-1)].view(B, K + 1, -1), v1.view(B, -1, 1)) / T)
    Z1, Z2 = out_v1.mean() * N, out_v2.mean() * N
    expected = contrast_loss_reference(out_v1 / Z1, N) + contrast_loss_reference(out_v2 / Z2, N)
    check_term(term, expected.item(), B)
    assert term.anchor is s.feats[-1]
    assert torch.allclose(d.z, torch.stack([Z1, Z2]).detach())
    # momentum update of the batch's rows only
    upd = 0.5 * mem_s[idx] + 0.5 * v1.detach()
    assert torch.allclose(d.memory_s[idx], upd / upd.norm(dim=1, keepdim=True), atol=1e-6)
    others = torch.ones(N, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(d.memory_s[others], mem_s[others]) and torch.equal(d.memory_t[others], mem_t[others])
    assert not torch.equal(d.memory_t[idx], mem_t[idx])
    # Z is estimated once (first batch), then kept
    z = d.z.clone()
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    assert torch.equal(d.z, z)
    # eval mode leaves the banks alone
    d.eval()
    before = d.memory_s.clone()
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    assert torch.equal(d.memory_s, before)


# -- CRD machinery ------------------------------------------------------------------------------------
def test_crd_sampling_exact_and_relax():
    N, K = 40, 12
    d, labels = crd_setup(N=N, K=K)
    idx = torch.arange(N).repeat(5)
    c = d.contrast_indices(idx)
    assert torch.equal(c[:, 0], idx)                                      # exact: the sample itself
    assert (labels[c[:, 1:]] != labels[idx][:, None]).all()               # never the anchor's class
    assert all(len(set(row.tolist())) == K for row in c[:, 1:])           # without replacement
    assert len(set(c[:, 1:].flatten().tolist())) == N                     # every sample can be a negative
    d, labels = crd_setup(N=N, K=K, mode="relax")
    c = d.contrast_indices(idx)
    assert (labels[c[:, 0]] == labels[idx]).all() and not torch.equal(c[:, 0], idx)
    assert (labels[c[:, 1:]] != labels[idx][:, None]).all()


def test_crd_nce_k_clipped_with_warning_and_needs_indices():
    with pytest.warns(UserWarning, match="nce_k 100 exceeds the 30 negatives"):
        d, labels = crd_setup(N=40, K=100)
    assert d.K == 30
    B = 4
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    with pytest.raises(ValueError, match="indices"):
        d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels"):
        DISTILLERS["crd"](context([(3, 4, 4), (7,)], [(3, 4, 4), (9,)], options("crd"), num_data=40))
    assert DISTILLERS["crd"].needs_index


def test_crd_bank_is_checkpointed_and_round_trips():
    N, B = 40, 5
    d, labels = crd_setup(N=N)
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    idx = torch.tensor([0, 5, 9, 21, 33])
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    state = d.state_dict()
    assert {"memory_s", "memory_t", "z"} <= set(state) and "labels" not in state
    d2, _ = crd_setup(N=N, seed=7)
    assert not torch.equal(d2.memory_s, d.memory_s)
    d2.load_state_dict(state)
    assert torch.equal(d2.memory_s, d.memory_s) and torch.equal(d2.memory_t, d.memory_t) and torch.equal(d2.z, d.z)
    contrast = d.contrast_indices(idx)
    l1 = d(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast).per_sample
    l2 = d2(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast).per_sample
    assert torch.allclose(l1, l2)
    # the index decides which bank rows are the positives
    other = (idx + 1) % N
    contrast2 = contrast.clone()
    contrast2[:, 0] = other
    l3 = d2(s, t, Batch(torch.zeros(B), labels[idx], index=other), contrast=contrast2).per_sample
    assert not torch.allclose(l1, l3)


def test_crd_objective_falls_as_embeddings_and_bank_learn():
    """A linear 'student' on fixed inputs against class-structured 'teacher' features: a few
    epochs of SGD on the CRD loss alone bring it well down (the e2e test only checks it stays
    finite: on real networks the bank-fill phase makes it rise first)."""
    N, B, K = 40, 10, 20
    torch.manual_seed(0)
    labels = torch.arange(N) % 4
    d = DISTILLERS["crd"](context([(8,)], [(6,)], options("crd", nce_k=K, feat_dim=8), num_data=N, labels=labels))
    X = torch.randn(N, 8)
    T = torch.randn(4, 6)[labels] + 0.3 * torch.randn(N, 6)
    student = nn.Linear(8, 8)
    opt = torch.optim.SGD(list(student.parameters()) + list(d.parameters()), lr=0.05, momentum=0.9)
    epochs = []
    for _ in range(12):
        total = 0.0
        for idx in torch.randperm(N).split(B):
            s = NetOutput(feats=[student(X[idx])], logits=torch.zeros(B, 4))
            t = NetOutput(feats=[T[idx]], logits=torch.zeros(B, 4))
            loss = d(s, t, Batch(X[idx], labels[idx], index=idx)).per_sample.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        epochs.append(total / (N // B))
    assert epochs[-1] < 0.6 * epochs[0], epochs


# -- real networks: gradients, families, strategies ----------------------------------------------------
def make_task(distill, archs, student="resnet8", method="AVERAGE_LOSS", seed=0, **kw):
    args = options(distill, method, teacher_num=len(archs), **kw)
    labels = torch.arange(64) % NUM_CLASSES
    task = student_task(args, archs, student, NUM_CLASSES, seed, num_data=64, train_labels=labels)
    return task, labels, args


def batch_of(labels, B=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(labels), generator=g)[:B]
    return torch.randn(B, 3, 32, 32, generator=g), labels[idx], idx


def connector_params(distill, d):
    return {"vid": lambda: [d.layers], "abound": lambda: [d.connectors], "fsp": lambda: [d.connectors],
            "factor": lambda: [d.translator], "crd": lambda: [d.embed_s, d.embed_t]}[distill]()


def nonzero_grads(modules):
    params = [p for m in modules for p in m.parameters() if p.dim() > 1]
    return bool(params) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("distill", list(LOSSES))
def test_gradients_reach_student_and_connectors_not_teachers(distill):
    task, labels, _ = make_task(distill, ("resnet8x4",), gamma=0.0, alpha=0.0, main_phase_loss=True)
    assert DISTILLERS[distill].default_weight == LOSSES[distill] and DISTILLERS[distill].kind == "feature"
    task.train_mode()
    teacher = task.teachers.models[0]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = forward(task, *batch_of(labels), epoch=1)
    assert torch.isfinite(out.loss) and out.loss.item() != 0
    out.loss.backward()
    d = task.terms[1].distillers[0]
    assert task.model.conv1.weight.grad.abs().sum() > 0
    assert nonzero_grads(connector_params(distill, d))
    if distill == "vid":
        assert all(layer.log_scale.grad.abs().sum() > 0 for layer in d.layers)
    if distill == "factor":                                               # frozen paraphraser
        assert all(p.grad is None for p in d.paraphraser.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("distill", list(LOSSES))
@pytest.mark.parametrize("pair", [("MobileNetV2", "vgg8"), ("ShuffleV1", "resnet8x4")])
def test_cross_family_pair(distill, pair):
    student, teacher = pair
    task, labels, _ = make_task(distill, (teacher,), student=student, main_phase_loss=True)
    task.train_mode()
    out = forward(task, *batch_of(labels, B=4), epoch=1)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in task.teachers.models[0].parameters())


@pytest.mark.parametrize("method", STRATEGIES)
@pytest.mark.parametrize("distill", list(LOSSES))
def test_three_teachers_of_different_families_under_every_strategy(distill, method):
    task, labels, _ = make_task(distill, ("vgg8", "MobileNetV2", "ShuffleV1"), method=method, main_phase_loss=True)
    task.train_mode()
    with recording_term_weights(task) as seen:
        out = forward(task, *batch_of(labels, B=4), epoch=1)
    assert torch.isfinite(out.loss) and f"loss_{distill}" in out.metrics
    out.loss.backward()
    assert task.model.conv1.weight.grad.abs().sum() > 0
    for t in task.teachers.models:
        assert all(p.grad is None for p in t.parameters())
    assert_shares_are_the_step_weights([out], seen, steps=1)


@pytest.mark.parametrize("distill", ["vid", "abound"])
def test_aekd_when_the_student_maps_pair_differently_per_teacher(distill):
    """MobileNetV2 has 4 maps in feats[1:-1], resnet8x4 3 and vgg8 4: the pairs differ per teacher,
    the anchor (feats[1]) does not, so AEKD can compare the teachers' gradients."""
    task, labels, _ = make_task(distill, ("resnet8x4", "vgg8"), student="MobileNetV2", method="AEKD",
                             main_phase_loss=True)
    ds = task.terms[1].distillers
    assert [i for i, _ in ds[0].pairs] != [i for i, _ in ds[1].pairs]
    task.train_mode()
    with recording_term_weights(task) as seen:
        out = forward(task, *batch_of(labels, B=4), epoch=1)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    w = seen[distill][0]
    assert w.shape == (2, 4) and torch.allclose(w.sum(0), torch.ones(4)) and w.min() >= 0   # AEKD: a simplex point per sample
    assert_shares_are_the_step_weights([out], seen, steps=1)


@pytest.mark.parametrize("method", ["CAMKD", "AEKD"])
@pytest.mark.parametrize("distill", ["abound", "fsp"])
def test_init_stage_methods_default_to_no_main_phase_loss(distill, method):
    task, labels, _ = make_task(distill, ("resnet8x4", "vgg8"), method=method)
    task.train_mode()
    out = forward(task, *batch_of(labels, B=4), epoch=1)
    assert out.metrics[f"loss_{distill}"].item() == 0.0
    out.loss.backward()
    for d in task.terms[1].distillers:
        assert all(p.grad is None for p in d.connectors.parameters())


# -- init stage ---------------------------------------------------------------------------------------
class TinyLoader:
    def __init__(self, labels, batches=2, B=8, seed=3):
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(batches):
            idx = torch.randperm(len(labels), generator=g)[:B]
            self.batches.append((torch.randn(B, 3, 32, 32, generator=g), labels[idx], idx))

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@torch.no_grad()
def init_losses(task, loader):
    """Every teacher's init-stage loss over the loader, in the init stage's modes."""
    task.model.eval()
    pairs = [(m, d) for m, d in enumerate(task.terms[1].distillers)]
    for _, d in pairs:
        for mod in d.init_stage_modules(task.model):
            mod.train()
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    for x, y, idx in loader:
        s_out, t_outs = task.objective.outputs(x)
        sums += torch.stack([d.init_stage_loss(s_out, t_outs[m], Batch(x, y, idx)) for m, d in pairs]).double()
    return (sums / len(loader)).tolist()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("distill", INIT_STAGE)
def test_init_stage_trains_connectors_and_lowers_the_init_loss(distill):
    task, labels, args = make_task(distill, ("resnet8x4", "vgg8"), init_epochs=4, momentum=0.9, weight_decay=5e-4)
    ds = task.terms[1].distillers
    init_mods = {"abound": lambda d: d.connectors, "fsp": lambda d: d.connectors, "factor": lambda d: d.paraphraser}
    before_conn = [snapshot(init_mods[distill](d)) for d in ds]
    before_student = snapshot(task.model)
    before_teachers = [snapshot(t) for t in task.teachers.models]
    before_translator = [snapshot(d.translator) for d in ds] if distill == "factor" else []
    loader = TinyLoader(labels)
    first = init_losses(task, loader)
    lines = []
    run_init_stage(task.objective, loader, args, lines.append)
    assert len([line for line in lines if "init epoch" in line]) == 4
    last = init_losses(task, loader)
    assert all(b < a for a, b in zip(first, last)), (first, last)
    assert all(changed(b, init_mods[distill](d)) for b, d in zip(before_conn, ds))
    if distill == "factor":
        assert "lr 0.01" in lines[0]
        assert not changed(before_student, task.model)                   # only the paraphraser trains
        assert not any(changed(b, d.translator) for b, d in zip(before_translator, ds))
    else:                                  # the student's feature modules train, its classifier does not
        feat_params = {id(p) for p in task.model.get_feat_modules().parameters()}
        moved = {name: not torch.equal(before_student[name], p) for name, p in task.model.named_parameters()}
        assert any(moved[n] for n, p in task.model.named_parameters() if id(p) in feat_params)
        assert not any(moved[n] for n, p in task.model.named_parameters() if id(p) not in feat_params)
    assert not any(changed(b, t) for b, t in zip(before_teachers, task.teachers.models))


def test_student_gradient_share_in_init_stage():
    """With M teachers the shared student gets the mean of the teachers' init gradients."""
    B = 3
    s_shapes, t_shapes = [(4, 8, 8), (6, 8, 8), (8, 4, 4), (8,)], [(4, 8, 8), (6, 8, 8), (8, 4, 4), (8,)]
    grads = []
    for M in (1, 2):
        torch.manual_seed(0)
        d = DISTILLERS["fsp"](context(s_shapes, t_shapes, options("fsp"), num_teachers=M))
        s, t = outputs(s_shapes, B, 1, grad=True), outputs(t_shapes, B, 2)
        loss = d.init_stage_loss(s, t, None)
        loss.backward()
        grads.append((loss.item(), s.feats[0].grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert torch.allclose(grads[0][1] / 2, grads[1][1], atol=1e-8)
