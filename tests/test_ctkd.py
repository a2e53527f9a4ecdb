"""CTKD (distiller_zoo/CTKD.py): the curriculum, the reversed temperature gradient, one temperature per teacher."""
import math

import pytest
import torch

from distiller_zoo import default_options, kd_loss
from distiller_zoo.base import Batch, NetOutput
from distiller_zoo.CTKD import CTKD, grl_lambda

from builders import forward, random_batch
from logit_cases import S, T_, Y, ctx, make_run, tt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ctkd_curriculum_follows_the_cosine_schedule():
    assert grl_lambda(0) == pytest.approx(0.0, abs=1e-12)
    assert grl_lambda(1) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert grl_lambda(5) == pytest.approx(0.5)
    assert grl_lambda(10) == pytest.approx(1.0) and grl_lambda(240) == pytest.approx(1.0)


def test_ctkd_temperature_receives_the_reversed_gradient_and_loss_is_kd_at_that_temperature():
    d = CTKD(ctx(default_options()))
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
    d = CTKD(ctx(default_options()))
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
