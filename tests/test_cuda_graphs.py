"""``--cuda_graphs`` (helper/cuda_graphs.py) on the CPU: the step as restructured for capture
(batches copied into static buffers, the learning rate a device tensor written in place by the
schedule) computes bit for bit what the plain eager step computes, for a teacher and for students
under CAMKD and AEKD; capture itself falls back with a line naming why. The GPU comparison of
captured against eager steps is benchmarks/compare_graphs.py (scripts/gpu_check.sh)."""
import argparse

import pytest
import torch

from builders import as_if_on, random_batch, step_config, student_task
from helper import cuda_graphs
from helper.cuda_graphs import DeviceLRSGD, GraphedStep, capture_blockers, step_function
from helper.task import ClassifierTask
from helper.schedule import set_lr
from models import model_dict

STEPS = 3


def batches(n=STEPS, B=8):
    return [random_batch(B=B, seed=10 + k) for k in range(n)]


def run(task, optimizer, step, data, lrs, shares=None):
    """``len(data)`` steps; the lr changes between steps (the schedule writing it). ``shares``
    collects each step's teacher shares."""
    task.train_mode()
    losses = []
    for k, (batch, lr) in enumerate(zip(data, lrs)):
        set_lr(optimizer, lr)
        out = step(batch, 1, optimizer)
        losses.append(out.loss.detach().clone())
        if shares is not None:
            shares.append({key: v.clone() for key, v in out.shares.items()})
    return torch.stack(losses)


def sgd(task):
    return torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)


def params(task):
    return {k: v.detach().clone() for k, v in task.trainable().state_dict().items()}


def grads(task):
    return [p.grad.clone() for p in task.trainable().parameters() if p.grad is not None]


def assert_same(plain_task, plain_losses, graph_task, graph_losses):
    assert torch.equal(plain_losses, graph_losses)
    a, b = params(plain_task), params(graph_task)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ga, gb = grads(plain_task), grads(graph_task)
    assert len(ga) == len(gb) > 0
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))


def teacher_task():
    torch.manual_seed(0)
    return ClassifierTask(model_dict["resnet8"](num_classes=10))


def test_device_lr_sgd_matches_sgd_bit_for_bit():
    torch.manual_seed(0)
    for kw in [dict(momentum=0.9, weight_decay=5e-4), dict(momentum=0.9, nesterov=True, weight_decay=1e-4),
               dict(momentum=0.0), dict(momentum=0.9, dampening=0.1)]:
        w0 = torch.randn(1000)
        p1, p2 = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
        o1, o2 = torch.optim.SGD([p1], lr=0.05, **kw), DeviceLRSGD([p2], lr=0.05, device="cpu", **kw)
        assert isinstance(o2.param_groups[0]["lr"], torch.Tensor)
        for k in range(3):
            g = torch.randn(1000)
            p1.grad, p2.grad = g.clone(), g.clone()
            set_lr(o1, 0.05 * 0.1 ** k)
            set_lr(o2, 0.05 * 0.1 ** k)
            o1.step()
            o2.step()
            assert torch.equal(p1, p2), kw


def test_device_lr_is_written_in_place_and_checkpoints_hold_a_float():
    task = teacher_task()
    opt = DeviceLRSGD.from_sgd(sgd(task), "cpu")
    lr = opt.param_groups[0]["lr"]
    set_lr(opt, 0.0123)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.0123)
    state = opt.state_dict()
    assert isinstance(state["param_groups"][0]["lr"], float)
    plain = sgd(task)
    plain.load_state_dict(state)                          # resumes in an eager run
    assert plain.param_groups[0]["lr"] == pytest.approx(0.0123)
    set_lr(plain, 0.5)
    opt.load_state_dict(plain.state_dict())               # and back, into the same tensor
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.5


def test_teacher_static_step_is_bit_identical_to_eager():
    data, lrs = batches(), [0.05, 0.005, 0.005]
    plain = teacher_task()
    plain_losses = run(plain, sgd(plain), plain.train_step, data, lrs)
    graphed = teacher_task()
    opt = DeviceLRSGD.from_sgd(sgd(graphed), "cpu")
    step = GraphedStep(graphed.train_step, "static")
    graph_losses = run(graphed, opt, step, data, lrs)
    assert step.static is not None and step.static[0] is not data[-1][0]     # really the static buffers
    assert_same(plain, plain_losses, graphed, graph_losses)


@pytest.mark.parametrize("method", ["CAMKD", "AEKD"])
def test_student_static_step_is_bit_identical_to_eager(method):
    args = step_config(distill="inter", ensemble_method=method, beta=50.0, beta_delay_epochs=0, teacher_num=2,
                       cuda_graphs="static")
    data, lrs = batches(), [0.05, 0.005, 0.005]
    plain = student_task(args, ("resnet8", "resnet8"))
    plain.epoch_begin(1, 2)
    plain_shares, graph_shares = [], []
    plain_losses = run(plain, sgd(plain), plain.train_step, data, lrs, plain_shares)
    graphed = student_task(args, ("resnet8", "resnet8"))
    graphed.epoch_begin(1, 2)
    step, opt = step_function(graphed, sgd(graphed), args, lambda m: None)
    assert isinstance(opt, DeviceLRSGD) and isinstance(step, GraphedStep)
    graph_losses = run(graphed, opt, step, data, lrs, graph_shares)
    assert_same(plain, plain_losses, graphed, graph_losses)
    assert len(plain_shares) == STEPS and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                                              for a, b in zip(plain_shares, graph_shares))


def test_capture_falls_back_on_cpu_with_one_line_naming_why():
    task = teacher_task()
    lines = []
    step, opt = step_function(task, sgd(task), step_config(cuda_graphs="capture"), lines.append)
    assert step == task.train_step                        # the eager step
    assert isinstance(opt, DeviceLRSGD)
    assert len(lines) == 1 and "runs eagerly" in lines[0] and "not CUDA" in lines[0]


def test_uncapturable_losses_and_routing_are_named(monkeypatch):
    args = step_config(distill="inter", ensemble_method="CAMKD", beta=50.0, teacher_num=2)
    task = student_task(args, ("resnet8", "resnet8"))
    opt = DeviceLRSGD.from_sgd(sgd(task), "cpu")
    cuda = as_if_on(args, "cuda")
    assert capture_blockers(task, opt, cuda) == []
    inter = type(task.terms[1].distillers[0])
    monkeypatch.setattr(inter, "capturable", False)
    monkeypatch.setattr(inter, "not_capturable_because", "reads the host")
    assert capture_blockers(task, opt, cuda) == [f"{inter.__name__}: reads the host"]
    from distiller_zoo.CRD import CRD
    from helper.spot_adaptive import SpotRouting
    assert CRD.capturable is False and "multinomial" in CRD.not_capturable_because
    assert SpotRouting.capturable is False and "relational" in SpotRouting.not_capturable_because
    assert any("SGD only" in r for r in capture_blockers(
        task, torch.optim.Adam(task.trainable().parameters()), cuda))
    assert capture_blockers(task, opt, args)[0] == "device cpu is not CUDA"
    assert any("--compile" in r for r in capture_blockers(task, opt, cuda.replace(compile=True)))


def test_eval_batch_size_default_keeps_cpu_batches():
    ns = argparse.Namespace(eval_batch_size=None, device="cpu", batch_size=64)
    assert cuda_graphs.eval_batch_size(ns) == 64
    ns.device = "cuda:0"
    assert cuda_graphs.eval_batch_size(ns) == 1024
    ns.eval_batch_size = 200
    assert cuda_graphs.eval_batch_size(ns) == 200


def test_group_member_step_reads_the_shared_buffers_in_place():
    """A group member's GraphedStep (shared_inputs) copies nothing: the tensors of its first batch
    are its inputs (the group's static buffers), a batch of other tensors runs eagerly on those,
    and in capture mode it captures only once the group says its teacher outputs are static."""
    seen = []

    def step(batch, epoch, optimizer, scaler=None, autocast=None):
        seen.append(batch)
        return "eager"

    shared = (torch.zeros(2, 3), torch.zeros(2))
    g = GraphedStep(step, "static", shared_inputs=True)
    g(shared, 1, None)
    other = (torch.ones(1, 3), torch.ones(1))
    g(other, 1, None)
    g((shared[0], shared[1]), 1, None)                    # a new tuple of the same tensors: the static batch
    assert seen[0] is shared and seen[1] is other and seen[2] is shared and g.static is shared
    waiting = GraphedStep(step, "capture", warmup=0, shared_inputs=True, ready=lambda: False)
    assert waiting(shared, 1, None) == "eager" and waiting.captures == 0 and waiting.graph is None


def test_static_batches_and_stage_modes():
    from helper.cuda_graphs import StaticBatches, stage_mode
    buffers = StaticBatches()
    a = {("standard",): (torch.ones(2, 3), torch.zeros(2, dtype=torch.long))}
    first = buffers(a)
    assert first[("standard",)][0] is not a[("standard",)][0] and buffers.holds(first) and not buffers.holds(a)
    second = buffers({("standard",): (torch.full((2, 3), 2.0), torch.ones(2, dtype=torch.long))})
    assert second[("standard",)][0] is first[("standard",)][0] and second[("standard",)][0].eq(2).all()
    config = step_config()
    assert [stage_mode(config.replace(cuda_graphs=m)) for m in ("off", "static", "capture", "compile")] == \
        ["off", "static", "static", "off"]                 # on a CPU capture cannot be
    cuda = as_if_on(config, "cuda")
    assert stage_mode(cuda.replace(cuda_graphs="capture")) == "capture"
    assert stage_mode(cuda.replace(cuda_graphs="capture"), distributed=True) == "static"
