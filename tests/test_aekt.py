"""AEKT (distiller_zoo/AEKT.py): the per-sample loss by hand, the adaptive weight, the distillation layer, its rate."""
import numpy as np
import pytest
import torch

from distiller_zoo.AEKT import AEKT, DistillationLayer, adaptive_weight, aekt_terms
from distiller_zoo.base import Batch, NetOutput
from helper.student_step import build_terms
from helper.teachers import TeacherEnsemble
from models import model_dict

from builders import forward, student_config, student_task
from evidential_cases import C, ctx, labels, logits, options
from references import binary_kl, np_softmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def aekt_by_hand(zs, zt, y, T, alpha, beta, w_max):
    """Per-sample AEKT from the formulas of the docstring, numpy, sample by sample."""
    out = []
    for i in range(zs.shape[0]):
        ps, pt = np_softmax(zs[i] / T), np_softmax(zt[i] / T)
        t = int(y[i])
        exp_ = T * T * binary_kl(pt[t], ps[t])
        mask = np.arange(len(ps)) != t
        qs, qt = ps[mask] / ps[mask].sum(), pt[mask] / pt[mask].sum()
        imp = T * T * float(np.sum(qt * np.log(qt / qs)))
        w = min(pt[t] / ps[t], w_max)
        out.append(alpha * w * exp_ + beta * imp)
    return np.array(out)


def test_aekt_per_sample_matches_hand_formula_and_layer_starts_at_identity():
    zs, zt, y = logits(seed=1, scale=2.0), logits(seed=2, scale=3.0), labels()
    d = AEKT(ctx(options("aekt")))
    term = d(NetOutput(feats=[], logits=zs.float()), NetOutput(feats=[], logits=zt.float()),
             Batch(images=None, labels=y, epoch=30))
    assert term.per_sample.shape == (6,)
    expected = aekt_by_hand(zs.numpy(), zt.numpy(), y.numpy(), 4.0, 1.0, 8.0, 5.0)
    np.testing.assert_allclose(term.per_sample.detach().numpy(), expected, rtol=1e-4)
    assert term.per_sample.mean().item() == pytest.approx(float(expected.mean()), rel=1e-4)
    half = d(NetOutput(feats=[], logits=zs.float()), NetOutput(feats=[], logits=zt.float()),
             Batch(images=None, labels=y, epoch=5))
    np.testing.assert_allclose(half.per_sample.detach().numpy(), expected * 5 / 20, rtol=1e-4)


def test_aekt_adaptive_weight_carries_no_gradient():
    zs = logits(dtype=torch.float32).requires_grad_()
    zt, y = logits(seed=7, dtype=torch.float32), labels()
    w = adaptive_weight(zs, zt, y, 4.0)
    assert not w.requires_grad
    explicit, implicit, w2 = aekt_terms(zs, zt, y, 4.0)
    assert not w2.requires_grad and torch.equal(w, w2)
    loss = (w2 * explicit + 8 * implicit).mean()
    g_loss = torch.autograd.grad(loss, zs)[0]
    # the same loss with w as a constant copy: identical gradient (no path through w)
    explicit, implicit, _ = aekt_terms(zs, zt, y, 4.0)
    g_const = torch.autograd.grad((w.clone() * explicit + 8 * implicit).mean(), zs)[0]
    assert torch.equal(g_loss, g_const)
    ratio = torch.softmax(zt / 4, 1).gather(1, y[:, None]).squeeze(1) / torch.softmax(zs.detach() / 4, 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(w, ratio.clamp_max(5.0), rtol=1e-5)


def test_aekt_layer_gets_gradient_teacher_none_saved_and_not_used_at_inference():
    torch.manual_seed(0)
    student = model_dict["resnet8"](num_classes=C)
    teachers = TeacherEnsemble([model_dict["resnet8"](num_classes=C) for _ in range(2)], ["a", "b"])
    args = options("aekt", method="AVERAGE_LOSS", teacher_num=2)
    task = student_task(args, (), student=student, teachers=teachers, num_classes=C)
    terms = task.terms
    task.train_mode()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = forward(task, x, y, epoch=25)
    out.loss.backward()
    layers = [d.layer for d in terms[0].distillers]
    assert layers[0] is not layers[1]                                  # one per teacher (default)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for l in layers for p in l.parameters())
    assert all(p.grad is None for t in teachers.models for p in t.parameters())
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    state = task.extra_state()["distill"]
    assert any(k.endswith("layer.delta") for k in state) and any(k.endswith("layer.bias") for k in state)
    assert all(id(p) not in {id(q) for q in student.parameters()} for l in layers for p in l.parameters())
    student.eval()
    with torch.no_grad():                                              # inference: the student alone
        before = student(x)
        layers[0].delta.add_(1.0)
        assert torch.equal(student(x), before)
    shared = build_terms(options("aekt", method="AVERAGE_LOSS", aekt_layer="shared", teacher_num=2), student,
                         teachers, C, num_data=100, image_size=32)
    assert shared[0].distillers[0].layer is shared[0].distillers[1].layer
    none = build_terms(options("aekt", method="AVERAGE_LOSS", aekt_layer="none", teacher_num=2), student,
                       teachers, C, num_data=100, image_size=32)
    assert none[0].distillers[0].layer is None and len(list(none.parameters())) == 0
    layer = DistillationLayer(C)
    z = logits(dtype=torch.float32)
    assert torch.equal(layer(z), z) and torch.equal(layer.matrix(), torch.eye(C))


def aekt_layer_step(aekt_layer_lr=None, lr=0.05):
    """One plain SGD step (no momentum, no decay) of a fresh AEKT distiller at full loss scale:
    ``(W after - W before, dL/dW)`` with ``dL/dW`` from the same loss written with an explicit
    matrix ``W`` (autograd on ``z W^T + b``, not through the distiller's parametrisation)."""
    kw = {} if aekt_layer_lr is None else {"aekt_layer_lr": aekt_layer_lr}
    d = AEKT(ctx(options("aekt", **kw)))
    zs, zt, y = logits(seed=11, scale=2.0, dtype=torch.float32), logits(seed=12, scale=3.0, dtype=torch.float32), labels()
    W = torch.eye(C, requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    explicit, implicit, w = aekt_terms(zs @ W.T + b, zt, y, 4.0)
    grad_W = torch.autograd.grad((w * explicit + 8.0 * implicit).mean(), W)[0]
    before = d.layer.matrix().detach().clone()
    opt = torch.optim.SGD(d.parameters(), lr=lr)
    d(NetOutput(feats=[], logits=zs), NetOutput(feats=[], logits=zt), Batch(images=None, labels=y, epoch=30)).per_sample.mean().backward()
    opt.step()
    return d.layer.matrix().detach() - before, grad_W


def test_aekt_layer_learns_at_a_tenth_of_the_students_rate():
    """Issue 16: at the student's own rate the layer ran away (W's top singular value 1 -> 3.3 in
    24 steps on digits) and the student failed in eval mode; by default it learns 10x slower."""
    assert options("aekt").aekt_layer_lr == 0.1
    step, grad_W = aekt_layer_step()
    assert grad_W.abs().max() > 1e-3                          # a real gradient to scale
    torch.testing.assert_close(step, -0.05 * 0.1 * grad_W, rtol=1e-4, atol=1e-7)
    step, grad_W = aekt_layer_step(aekt_layer_lr=1.0)         # the old behaviour, still available
    torch.testing.assert_close(step, -0.05 * grad_W, rtol=1e-4, atol=1e-7)
    with pytest.raises(SystemExit):                           # a one-line argparse error
        student_config("--distill", "aekt", "--aekt_layer_lr", "0")
