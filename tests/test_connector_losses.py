"""VID, AB, FT and FSP (distiller_zoo/VID.py, AB.py, FT.py, FSP.py) by hand; these and CRD on real networks."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo import DISTILLERS
from distiller_zoo.base import Batch
from models import model_dict

from builders import forward
from conftest import assert_shares_are_the_step_weights, recording_term_weights
from connector_cases import NUM_CLASSES, check_term, context, make_task, options, outputs

STRATEGIES = ["AVERAGE_LOSS", "EBKD", "CAMKD", "AEKD"]
LOSSES = {"vid": 1.0, "abound": 1.0, "factor": 200.0, "fsp": 50.0, "crd": 0.8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# -- real networks: gradients, families, strategies ----------------------------------------------------
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
