"""CTKD: "Curriculum Temperature for Knowledge Distillation" (Li, Li, Yang, Guo, Hu, Cheng, Yang,
AAAI 2023), global-temperature variant.

KD with a learnable temperature ``T = --t_start + --t_end * sigmoid(theta)`` (always inside
``(t_start, t_start + t_end)``, default (1, 21)); ``theta`` is one scalar per teacher, initialised
to 1, a parameter of this distiller: the student's optimiser trains it (with its weight decay, as
the reference's optimiser over student + temperature module), it is saved in the checkpoint with
the terms' state and resumed with it, and its epoch mean is logged as ``ctkd_t<m>_temp``.

Adversarial training: ``theta`` reaches the loss through a gradient-reversal layer
(``GradientReversal``: identity forward, ``-lambda * grad`` backward), so the student minimises the
KD loss while the temperature maximises it. The reversal strength follows the paper's cosine
curriculum over epochs ``e = 1, 2, ...``: the reference multiplies the gradient by
``m_e = decay_min + (decay_max - decay_min) * (1 + cos(pi * min(e, L) / L)) / 2`` with
``--decay_max 0 --decay_min -1 --decay_loops L=10``, i.e. ``lambda_e = -m_e`` rises from 0 to 1 over
the first 10 epochs and stays at 1 (logged as ``ctkd_t<m>_grl_lambda``).

Per sample ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (KD's per-sample loss, ``T`` differentiable).
The reference script's weights are ``-r 0.1 -a 9`` for its LS runs (``-r 0.1 -a 0.9`` in the CTKD
paper's scripts); here, as for KD, ``-r``/``-a`` default to 1 and ``--logit-stand`` sets them to 0.1
and ``--kd-weight``.

``--logit-stand`` means what it says: both logits are Z-scored per sample (``standardize``) before
the learned temperature is applied. (The authors' CTKD ``train_student.py`` has the flag inverted:
its standardized loss is used when the flag is *absent*, and its script omits the flag.)
With several teachers each teacher has its own temperature, trained through its own term.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .argtypes import finite_float, non_negative_float, positive_float
from .base import Distiller, TeacherLoss, add_argument_once
from .KD import kd_loss, logit_stand_weights
from .registry import register_distiller


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength`` (Ganin &
    Lempitsky 2015). ``strength`` is a number, not differentiated."""

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = float(strength)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    return GradientReversal.apply(x, strength)


def grl_lambda(epoch: int, loops: float = 10, decay_max: float = 0.0, decay_min: float = -1.0) -> float:
    """Reversal strength ``lambda_e = -m_e`` of CTKD's cosine curriculum (see the module docstring);
    with the defaults 0 at epoch 0, rising to 1 at epoch ``loops`` and staying there."""
    if loops <= 0:
        return -decay_min
    e = min(max(epoch, 0), loops)
    m = decay_min + (decay_max - decay_min) * (1.0 + math.cos(math.pi * e / loops)) / 2.0
    return -m


class GlobalTemperature(nn.Module):
    """``T = t_start + t_end * sigmoid(GRL(theta))``, one learnable scalar ``theta``."""

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, init: float = 1.0):
        super().__init__()
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.theta = nn.Parameter(torch.tensor(float(init)))

    def forward(self, strength: float) -> Tensor:
        return self.t_start + self.t_end * torch.sigmoid(reverse_gradient(self.theta, strength))

    def value(self) -> float:
        with torch.no_grad():
            return float(self.t_start + self.t_end * torch.sigmoid(self.theta))


@register_distiller("ctkd")
class CTKD(Distiller):
    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--t_start", type=positive_float, default=1.0,
                          help="CTKD: lowest temperature (T = t_start + t_end * sigmoid(theta))")
        add_argument_once(parser, "--t_end", type=non_negative_float, default=20.0,
                          help="CTKD: width of the temperature range (T < t_start + t_end)")
        add_argument_once(parser, "--decay_loops", type=non_negative_float, default=10,
                          help="CTKD: epochs of the cosine curriculum of the gradient reversal (0: full strength at once)")
        add_argument_once(parser, "--decay_max", type=finite_float, default=0.0,
                          help="CTKD: gradient multiplier at epoch 0 (reference: 0)")
        add_argument_once(parser, "--decay_min", type=finite_float, default=-1.0,
                          help="CTKD: gradient multiplier after --decay_loops epochs (reference: -1, reversed)")

    @classmethod
    def configure(cls, opts, given):
        return logit_stand_weights(opts, given, "CTKD", "the learned temperature (--base-temp unused)")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.logit_stand = bool(opt.logit_stand)
        self.temperature = GlobalTemperature(opt.t_start, opt.t_end)
        self.loops, self.decay_max, self.decay_min = opt.decay_loops, opt.decay_max, opt.decay_min

    def strength(self, epoch: int) -> float:
        return grl_lambda(epoch, self.loops, self.decay_max, self.decay_min)

    def forward(self, s, t, batch):
        lam = self.strength(batch.epoch)
        T = self.temperature(lam)
        loss = kd_loss(s.logits, t.logits, T, self.logit_stand)
        metrics = {"temp": T.detach(), "grl_lambda": torch.full((), lam, device=T.device)}
        return TeacherLoss(loss, anchor=s.logits, metrics=metrics)
