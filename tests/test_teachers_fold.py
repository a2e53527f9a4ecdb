"""Frozen teachers with their BatchNorm folded into the convolutions (issue 28, item 3):
``models.fold_bn`` and ``helper.teachers.TeacherEnsemble(fold_bn=True)``, and the operator counter
``benchmarks/op_count.py``.

Tolerance of folded vs unfolded outputs: a relative 1e-4 of each output's largest value. Folding
changes only float32 rounding (the products ``W * s`` and the folded bias are rounded once, and a
convolution with the scale inside sums in another order); over the zoo's deepest networks with
random BN statistics the largest deviation measured is about 4e-6 of an output's scale, so 1e-4
leaves a margin of 25, while a wrong fold (a BN removed whose input something else also reads)
changes outputs by the order of the outputs themselves.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helper.teachers import TeacherEnsemble
from models import imagenet_model_dict, model_cfg, model_dict
from models.base import ZooModel
from models.fold_bn import VERIFY_RTOL, conv_bn_pairs, dry_images, fold, fold_checked, fold_conv_bn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from op_count import count_ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")      # a loaded 2-core machine

RTOL = 1e-4
# ImageNet-zoo entries that are the CIFAR zoo's entry of the same name (one constructor): tested there
SAME_AS_CIFAR = {"ResNet10", "ResNet34x2", "wrn_50_2", "vgg8_imagenet", "MobileNetV2_Imagenet",
                 "ShuffleV2_Imagenet", "shufflenet_v2_x0_5"}
# 224-px layouts in the CIFAR zoo: they need at least 32 px; the other CIFAR nets are compared at 16
CIFAR_AT_32 = SAME_AS_CIFAR


def assert_close_scaled(a, b, rtol=RTOL):
    assert a.shape == b.shape
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * scale + 1e-6, f"differs by {err:.3g} at scale {scale:.3g}"


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding changes every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


# -- the fold itself -------------------------------------------------------------------------------
def test_fold_conv_bn_hand_computed():
    """A 1x1 conv with two output channels: W' = W * gamma / sqrt(var + eps), b' = (b - mean) * s + beta."""
    bn = nn.BatchNorm2d(2, eps=0.0).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.weight.copy_(torch.tensor([3.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.5, 1.0]))
    w = torch.tensor([[[[2.0]], [[1.0]]], [[[-1.0]], [[4.0]]]])          # [2 out, 2 in, 1, 1]
    b = torch.tensor([1.0, 0.0])
    # channel 0: s = 3 / 2 = 1.5, bias (1 - 1) * 1.5 + 0.5 = 0.5; channel 1: s = 0.5 / 0.5 = 1, bias (0 + 2) * 1 + 1 = 3
    fw, fb = fold_conv_bn(w, b, bn)
    assert torch.equal(fw, torch.tensor([[[[3.0]], [[1.5]]], [[[-1.0]], [[4.0]]]]))
    assert torch.equal(fb, torch.tensor([0.5, 3.0]))
    fw0, fb0 = fold_conv_bn(w, None, bn)                                    # no conv bias
    assert torch.equal(fw0, fw) and torch.equal(fb0, torch.tensor([-1.0, 3.0]))
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(F.conv2d(x, fw, fb), bn(F.conv2d(x, w, b)))


def test_fold_keeps_dtype_device_and_memory_format():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4).eval()
    w = conv.weight.detach().double().to(memory_format=torch.channels_last)
    fw, fb = fold_conv_bn(w, None, bn)
    assert fw.dtype == torch.float64 and fw.is_contiguous(memory_format=torch.channels_last)
    assert fb.shape == (4,) and fb.device == w.device


class Tiny(ZooModel):
    """Two stages; ``kind`` adds the uses of a conv output that forbid folding its BN."""

    num_stages = 2

    def __init__(self, kind="plain"):
        super().__init__()
        self.kind = kind
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.side = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        y = self.conv2(x)
        out = self.bn2(y)
        if self.kind == "functional":               # the conv output is also read by a function
            out = out + y
        elif self.kind == "module":                 # ... or by another module
            out = out + self.side(y)
        elif self.kind == "feature":                # ... or reported as the feature
            return F.relu(out), y
        return F.relu(out), out if preact else F.relu(out)


def tiny(kind="plain"):
    torch.manual_seed(0)
    return trained_like(Tiny(kind))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_pairs_found_without_knowing_the_architecture():
    assert conv_bn_pairs(tiny(), X) == [("conv1", "bn1"), ("conv2", "bn2")]
    assert conv_bn_pairs(tiny("module"), X) == [("conv1", "bn1")]          # conv2's output has two readers
    assert conv_bn_pairs(tiny("feature"), X) == [("conv1", "bn1")]         # ... or is a reported feature
    # a function reading it is invisible to the hooks: the check after folding refuses that model
    assert conv_bn_pairs(tiny("functional"), X) == [("conv1", "bn1"), ("conv2", "bn2")]
    f = fold_checked(tiny("functional"), X)
    assert f.model is None and f.pairs == [] and f.reason.startswith("folded feature 1 (preact=False) deviates by")


def test_folded_copy_shares_the_unfolded_tensors_and_leaves_the_model_alone():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = fold(model, conv_bn_pairs(model, X))
    assert isinstance(twin.bn1, nn.Identity) and isinstance(twin.bn2, nn.Identity)
    assert twin.fc.weight is model.fc.weight and twin.side.weight is model.side.weight   # shared
    assert twin.conv1.weight is not model.conv1.weight and twin.conv1.bias is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(model.bn1, nn.BatchNorm2d)
    with torch.no_grad():
        for preact in (False, True):
            (fa, la), (fb, lb) = twin(X, is_feat=True, preact=preact), model(X, is_feat=True, preact=preact)
            for a, b in zip(fa + [la], fb + [lb]):
                assert_close_scaled(a, b)


def test_verification_refuses_a_wrong_fold(monkeypatch):
    """The check after folding refuses a fold whose arithmetic is wrong (here: the BN's shift lost)."""
    import models.fold_bn as fold_bn
    model = tiny()
    good = fold_checked(model, X)
    assert good.model is not None and good.pairs == [("conv1", "bn1"), ("conv2", "bn2")] and good.reason == ""
    assert 0 < good.deviation < RTOL
    right = fold_bn.fold_conv_bn
    monkeypatch.setattr(fold_bn, "fold_conv_bn", lambda w, b, bn: (right(w, b, bn)[0], torch.zeros(w.shape[0])))
    bad = fold_checked(model, X)
    assert bad.model is None and bad.reason.startswith("folded feature 0 (preact=False) deviates by")
    assert VERIFY_RTOL < 1e-2


# -- the ensemble ----------------------------------------------------------------------------------
def test_ensemble_folds_when_asked_and_logs_a_refusal():
    lines = []
    ens = TeacherEnsemble([tiny(), tiny("functional")], ["ok", "odd"], fold_bn=True, log=lines.append)
    assert [f.pairs for f in ens.folding] == [[("conv1", "bn1"), ("conv2", "bn2")], []]
    assert ens.networks[0] is not ens.models[0] and ens.networks[1] is ens.models[1]
    assert len(lines) == 1 and lines[0].startswith("==> teacher odd: BatchNorm not folded (")
    assert "runs unfolded" in lines[0] and "\n" not in lines[0]
    out = ens.outputs(X)
    with torch.no_grad():
        assert torch.equal(out[1].logits, ens.models[1](X))                 # unfolded: exactly the model
        assert_close_scaled(out[0].logits, ens.models[0](X))
    assert out[0].model is ens.networks[0] and out[0].head == ens.networks[0].head


def test_fold_off_is_the_plain_forward_bit_for_bit():
    model = trained_like(model_dict["resnet8"](num_classes=10))
    ens = TeacherEnsemble([model], ["a"], fold_bn=False)
    assert ens.networks[0] is model and ens.folding[0].pairs == [] and ens.folding[0].model is None
    x = torch.randn(2, 3, 16, 16)
    out = ens.outputs(x, preact=True)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True, preact=True)
    assert torch.equal(out[0].logits, logits) and all(torch.equal(a, b) for a, b in zip(out[0].feats, feats))


def test_making_the_ensemble_draws_no_random_numbers():
    models = [trained_like(model_dict["resnet8"](num_classes=10)) for _ in range(2)]
    big = imagenet_model_dict["ResNet18"](num_classes=10)
    state = torch.get_rng_state()
    TeacherEnsemble(models, ["a", "b"], fold_bn=True)
    assert torch.equal(torch.get_rng_state(), state)
    batch = dry_images(models[0])                                   # a fixed batch of its own
    assert batch.shape == (1, 3, 32, 32) and torch.equal(batch, dry_images(models[1]))
    assert dry_images(big).shape == (1, 3, 32, 32)                  # a 224-px network: at most 32 px
    assert torch.equal(torch.get_rng_state(), state)


def archs():
    out = [("cifar", n) for n in sorted(model_dict)]
    out += [("imagenet", n) for n in sorted(imagenet_model_dict) if n not in SAME_AS_CIFAR]
    return out


@pytest.mark.parametrize("table,name", archs())
def test_every_architecture_folds_to_the_same_outputs_and_head_gradients(table, name):
    torch.manual_seed(0)
    build = (model_dict if table == "cifar" else imagenet_model_dict)[name]
    model = trained_like(build(num_classes=10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ens = TeacherEnsemble([model], [name], log=pytest.fail, fold_bn=True)   # no teacher of the zoo is refused
    folding = ens.folding[0]
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):   # the vision transformers
        assert ens.networks[0] is model and folding.model is None and folding.reason == ""
        return
    assert folding.pairs and folding.model is ens.networks[0]
    left = [n for n, m in ens.networks[0].named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert not left or model_cfg[name].family == "wrn"                  # WRN: its pre-activation BNs stay
    # the check on the dry batch (32 px, preact False and True): within float rounding
    assert folding.deviation <= RTOL
    # and on another batch and size, independently
    size = 32 if table == "imagenet" or name in CIFAR_AT_32 else 16
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    out = ens.outputs(x, preact=True)[0]
    with torch.no_grad():
        feats, logits = model(x, is_feat=True, preact=True)
    assert len(out.feats) == len(feats)
    for a, b in zip(out.feats + [out.logits], feats + [logits]):
        assert_close_scaled(a, b)
    # CA-MKD passes student features through a teacher's head: same values and input gradients
    fmap = (feats[-2] + 0.1 * torch.randn_like(feats[-2])).requires_grad_()
    results = []
    for head in (out.head, model.head):
        fmap.grad = None
        value = head(fmap)
        (value * torch.linspace(-1, 1, value.shape[1])).sum().backward()
        results.append((value.detach(), fmap.grad.clone()))
    assert_close_scaled(results[0][0], results[1][0])
    assert_close_scaled(results[0][1], results[1][1])
    assert all(p.grad is None for net in (model, ens.networks[0]) for p in net.parameters())
    # the teachers as given are untouched: state_dict-based checks read the original weights
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wrn_keeps_its_preactivation_batchnorms():
    ens = TeacherEnsemble([trained_like(model_dict["wrn_16_1"](num_classes=10))], ["w"], log=pytest.fail,
                          fold_bn=True)
    folded_bns = {bn for _, bn in ens.folding[0].pairs}
    assert folded_bns == {f"block{g}.layer.{b}.bn2" for g in (1, 2, 3) for b in (0, 1)}   # conv1 -> bn2 in each block


def test_fused_folded_teachers_equal_separate_unfolded_forwards():
    models = [trained_like(model_dict[a](num_classes=10), seed=s) for s, a in enumerate(("resnet8", "wrn_16_1", "resnet8"))]
    fused = TeacherEnsemble(models, ["a", "b", "c"], fuse=True, fold_bn=True)
    assert fused.groups() == [[0, 2], [1]]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for preact in (False, True):
        got = fused.outputs(x, preact)
        with torch.no_grad():
            want = [m(x, is_feat=True, preact=preact) for m in models]
        for o, (feats, logits) in zip(got, want):
            for a, b in zip(o.feats + [o.logits], feats + [logits]):
                assert_close_scaled(a, b)


def test_folded_teachers_move_and_keep_folding():
    model = trained_like(model_dict["resnet8"](num_classes=10))
    ens = TeacherEnsemble([model], ["a"], fold_bn=True).to("cpu", memory_format=torch.channels_last)
    assert ens.networks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_scaled(ens.outputs(x)[0].logits, model(x))


def test_folded_teacher_under_torch_compile():
    model = trained_like(model_dict["resnet8"](num_classes=10))
    ens = TeacherEnsemble([model], ["a"], fold_bn=True)
    compiled = torch.compile(ens.networks[0], backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats, logits = compiled(x, is_feat=True, preact=True)
        assert_close_scaled(logits, model(x))
        assert_close_scaled(feats[2], model(x, is_feat=True, preact=True)[0][2])


class _GradWatch(TorchDispatchMode):
    """Records every operator that runs with grad mode on or makes a tensor that requires grad."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        if torch.is_grad_enabled() or any(isinstance(t, torch.Tensor) and t.requires_grad for t in flat):
            self.seen.append(str(func))
        return out


@pytest.mark.parametrize("fuse", [False, True])
def test_teacher_forward_keeps_no_autograd_bookkeeping(fuse):
    models = [trained_like(model_dict["resnet8"](num_classes=10), seed=s) for s in range(2)]
    ens = TeacherEnsemble(models, ["a", "b"], fuse=fuse, fold_bn=True)
    assert not any(p.requires_grad for net in ens.networks for p in net.parameters())
    x = torch.randn(2, 3, 16, 16)
    watch = _GradWatch()
    with watch:
        outs = ens.outputs(x, preact=True)
    assert watch.seen == []
    for o in outs:
        assert all(t.grad_fn is None and not t.requires_grad for t in o.feats + [o.logits])


# -- the operator counter ---------------------------------------------------------------------------
def test_count_ops_on_hand_countable_functions():
    a, b = torch.ones(3), torch.ones(3)
    total, per_op = count_ops(lambda: (a + b) * 2)
    assert total == 2 and per_op == {"aten.add.Tensor": 1, "aten.mul.Tensor": 1}
    x = torch.ones(3, requires_grad=True)
    # forward: mul, sum; backward: the seed (ones_like), sum's expand, mul's two input gradients,
    # their sum into x's gradient, and the detach that stores it in x.grad
    total, per_op = count_ops(lambda: (x * x).sum().backward())
    assert total == 8
    assert per_op == {"aten.mul.Tensor": 3, "aten.sum.default": 1, "aten.ones_like.default": 1,
                      "aten.expand.default": 1, "aten.add.Tensor": 1, "aten.detach.default": 1}


def test_folding_removes_the_batchnorm_operators_of_a_teacher_forward():
    model = trained_like(model_dict["resnet8"](num_classes=10))
    x = torch.randn(2, 3, 16, 16)
    plain, folded = TeacherEnsemble([model], ["a"], fold_bn=False), TeacherEnsemble([model], ["a"], fold_bn=True)
    for ens in (plain, folded):
        ens.outputs(x)                                         # first calls do one-time work
    n_plain, ops_plain = count_ops(lambda: plain.outputs(x))
    n_folded, ops_folded = count_ops(lambda: folded.outputs(x))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ops_plain["aten.native_batch_norm.default"] == n_bn and "aten.native_batch_norm.default" not in ops_folded
    assert ops_folded["aten.convolution.default"] == ops_plain["aten.convolution.default"]
    assert n_folded < n_plain


def test_bench_student_counts_the_operators_of_our_step_unfolded_and_folded(capsys):
    """``bench_student.py --count-ops`` at a tiny size: per method, one step of ours with the teachers
    unfolded and folded; folding removes the two operators of each teacher BatchNorm (resnet8: 9)."""
    import bench_student
    rows = bench_student.main(["--count-ops", "--teachers", "resnet8", "resnet8", "--student", "resnet8",
                               "--classes", "10", "--size", "16", "--batch_size", "8",
                               "--methods", "AVERAGE_LOSS,CAMKD"])
    assert [r[0] for r in rows] == ["AVERAGE_LOSS", "CAMKD"]
    for _, unfolded, folded in rows:
        assert unfolded - folded == 2 * 2 * 9
    out = capsys.readouterr().out
    assert "aten operators of one step" in out and "AVERAGE_LOSS   unfolded" in out


def test_fold_bn_defaults_to_the_device_and_the_run_uses_it():
    """--fold_bn: on for CUDA, off on the CPU (bit-reproducible runs there); not a result setting."""
    from builders import as_if_on, student_config, student_name
    from helper.run_identity import NOT_RESULT
    assert student_config().fold_bn is False and student_config(fold_bn=True).fold_bn is True
    assert "fold_bn" in NOT_RESULT
    assert student_name(student_config(fold_bn=True), ["resnet8"]) == student_name(student_config(), ["resnet8"])
    assert as_if_on(student_config(), "cuda").device == "cuda"
