"""AEKT: "Adaptive Explicit Knowledge Transfer for Knowledge Distillation" (Park & Lee,
arXiv:2409.01679, 2024), ``--distill aekt``.

What the paper's text says (its abstract and third-party summaries are all that could be read; no
code was found; a summary confirms the ratio-based weight and the FC "task serialization" layer): (i) a gradient analysis shows that DKD's decoupled non-target term adaptively controls how
much *implicit* knowledge (the teacher's distribution over the non-target classes) is learned;
(ii) a new loss makes the student also learn *explicit* knowledge, the teacher's confidence in the
target class, adaptively, with a weight set by the ratio of the teacher's to the student's target
confidence; (iii) an extra fully connected layer after the student's classifier separates the
classification task from the distillation task (the summary calls it task serialization) and
models inter-class relations.

Reconstructed here ([REC]; each choice is a flag). With ``p = softmax(z / T)`` and ``t`` the label:

- implicit term: ``T^2 * KL(phat_t || phat_s)`` over the non-target classes, ``phat_i = p_i / (1 - p_t)``
  (DKD's NCKD; its gradient on ``z_i^s`` is proportional to ``phat_i^s - phat_i^t``, i.e. ``p_i^s`` is
  pulled to ``p_i^t (1 - p_t^s) / (1 - p_t^t)``: the adaptive control of (i));
- explicit term: ``T^2 * KL([p_t^t, 1 - p_t^t] || [p_t^s, 1 - p_t^s])`` (DKD's TCKD form), weighted
  per sample by ``w = sg(p_t^t / p_t^s)`` (no gradient), clipped to ``[0, --aekt_wmax]`` (5; 0 = no
  clip). ``--aekt_weight none`` sets ``w = 1`` (ablation);
- per sample ``L = ramp * (--aekt_alpha * w * explicit + --aekt_beta * implicit)``, ``ramp =
  min(epoch / --aekt_warmup, 1)``; defaults ``--aekt_alpha 1 --aekt_beta 8 --aekt_T 4
  --aekt_warmup 20`` (DKD's CIFAR-100 values, the usual mdistiller convention);
- distillation layer (iii): the student's logits ``z`` (trained by the step's CE, ``-r``) go
  through a ``C x C`` linear layer initialised to the identity with zero bias, ``z_dis = W z + b``,
  and only ``z_dis`` enters the two terms above. It is parametrised as ``W = I + D`` (``D`` starts
  at 0), so the student optimiser's weight decay pulls it towards the identity rather than towards
  zero. It learns at ``--aekt_layer_lr`` (0.1) times the student's learning rate [REC]: at the
  student's own rate ``W`` ran away under the loss's ``beta * T^2 = 128`` scale (its top singular
  value 1 -> 3.3 in 24 steps on digits, the student's weights then changing 11% a step) and the
  student failed in eval mode, its BatchNorm running statistics unable to follow (issue 16). It is a parameter of this distiller: trained with the student, saved in the checkpoint
  with the terms' state (``--resume`` restores it), not part of the student network, so inference
  and evaluation use the student's own logits. ``--aekt_layer separate`` (default): one layer per
  teacher, each absorbing its teacher's own inter-class relations (one distiller per teacher owns
  its connectors, as everywhere in mtkd); ``shared``: one layer for all teachers; ``none``: no
  layer (``z_dis = z``). The EKD authors' code carries the same pattern, commented out
  (identity-initialised ``Linear(100, 100)``).
- ``--logit-stand`` as for DKD: both logits (``z_dis`` and the teacher's) are Z-scored per sample,
  ``T`` is ``--base-temp``, and ``configure`` multiplies ``--aekt_alpha``/``--aekt_beta`` by
  ``--kd-weight`` (a toolkit convention, not the paper's). The weight ``w`` is read from the same
  (standardized) distributions.

Loss weights: ``-r`` (softmax CE on ``z``) and ``-a`` stay 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .argtypes import non_negative_float, positive_float
from .base import Distiller, TeacherLoss, add_argument_once
from .DKD import dkd_terms, warmup_factor
from .KD import as_float, logit_stand_scale, standardize
from .registry import register_distiller

class DistillationLayer(nn.Module):
    """``z -> z + z D^T + b`` = ``W z + b`` with ``W = I + D``; identity at initialisation.

    ``lr_scale`` (``--aekt_layer_lr``) makes the layer learn that many times slower than the
    student: ``D`` and ``b`` are stored as ``c * delta`` and ``c * bias`` with ``c = sqrt(lr_scale)``,
    so one SGD step moves ``D`` by ``lr_scale`` times its gradient step (weight decay still pulls it
    towards the identity at the student's rate). Why: ``W z`` is a product of two trained factors
    under a loss of scale ``beta * T^2 = 128``; at the student's own learning rate ``W``'s largest
    singular value grew from 1 to 3.3 in 24 steps on digits (full loss scale), the gradient reaching
    ``z`` through ``W^T`` grew with it, and the per-step weight change of the student reached 11%:
    its BatchNorm running statistics could not follow and the student failed in eval mode (issue
    16). Under AdamW (scale-free steps) the factor is ``sqrt(lr_scale)`` instead."""

    def __init__(self, num_classes: int, lr_scale: float = 1.0):
        super().__init__()
        if not lr_scale > 0:
            raise ValueError(f"--aekt_layer_lr must be positive, got {lr_scale}")
        self.scale = math.sqrt(lr_scale)
        self.delta = nn.Parameter(torch.zeros(num_classes, num_classes))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def matrix(self) -> Tensor:
        eye = torch.eye(self.delta.shape[0], device=self.delta.device, dtype=self.delta.dtype)
        return eye + self.scale * self.delta

    def offset(self) -> Tensor:
        return self.scale * self.bias

    def forward(self, z: Tensor) -> Tensor:
        z = as_float(z)
        return z + F.linear(z, (self.scale * self.delta).to(z.dtype), self.offset().to(z.dtype))


def target_log_probs(z: Tensor, labels: Tensor, T: float) -> Tensor:
    """``log softmax(z / T)[label]`` ``[B]``."""
    return F.log_softmax(as_float(z) / T, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def adaptive_weight(s: Tensor, t: Tensor, labels: Tensor, T: float, w_max: float = 5.0) -> Tensor:
    """``sg(p_t^teacher / p_t^student)`` ``[B]`` at temperature ``T``, clipped to ``[0, w_max]``
    (``w_max <= 0``: only kept finite, ratio below ``e^30``). No gradient."""
    with torch.no_grad():
        log_ratio = target_log_probs(t, labels, T) - target_log_probs(s.detach(), labels, T)
        cap = math.log(w_max) if w_max > 0 else 30.0
        return torch.exp(log_ratio.clamp_max(cap))


def aekt_terms(z_dis: Tensor, t: Tensor, labels: Tensor, T: float = 4.0, logit_stand: bool = False,
               w_max: float = 5.0, adaptive: bool = True):
    """Per-sample ``(explicit, implicit, w)``, each ``[B]``; explicit and implicit already times
    ``T^2``; ``w`` carries no gradient (1 when not ``adaptive``)."""
    s_in, t_in = as_float(z_dis), as_float(t.detach())
    if logit_stand:
        s_in, t_in = standardize(s_in), standardize(t_in)
    explicit, implicit = dkd_terms(s_in, t_in, labels, T)
    w = adaptive_weight(s_in, t_in, labels, T, w_max) if adaptive else torch.ones_like(explicit)
    return explicit, implicit, w


@register_distiller("aekt")
class AEKT(Distiller):
    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--aekt_alpha", type=non_negative_float, default=1.0, help="AEKT: weight of the explicit term")
        add_argument_once(parser, "--aekt_beta", type=non_negative_float, default=8.0, help="AEKT: weight of the implicit term")
        add_argument_once(parser, "--aekt_T", type=positive_float, default=4.0, help="AEKT temperature")
        add_argument_once(parser, "--aekt_warmup", type=non_negative_float, default=20,
                          help="AEKT: epochs over which the loss ramps in linearly")
        add_argument_once(parser, "--aekt_wmax", type=non_negative_float, default=5.0,
                          help="AEKT: clip of the adaptive weight p_t^T / p_t^S (0: no clip) [reconstructed]")
        add_argument_once(parser, "--aekt_weight", type=str, default="ratio", choices=("ratio", "none"),
                          help="AEKT: explicit-term weight, teacher/student target-confidence ratio or 1")
        add_argument_once(parser, "--aekt_layer", type=str, default="separate", choices=("separate", "shared", "none"),
                          help="AEKT: identity-initialised distillation layer per teacher, one shared, or none")
        add_argument_once(parser, "--aekt_layer_lr", type=positive_float, default=0.1,
                          help="AEKT: the distillation layer learns at this times the student's learning rate "
                               "(1: as fast as the student, which ran away on digits; issue 16) [reconstructed]")

    @classmethod
    def configure(cls, opts, given):
        return logit_stand_scale(opts, ("aekt_alpha", "aekt_beta"))

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.logit_stand = bool(opt.logit_stand)
        self.T = float(opt.base_temp if self.logit_stand else opt.aekt_T)
        self.alpha = float(opt.aekt_alpha)
        self.beta = float(opt.aekt_beta)
        self.warmup = float(opt.aekt_warmup)
        self.w_max = float(opt.aekt_wmax)
        self.adaptive = opt.aekt_weight == "ratio"
        if opt.aekt_layer == "none":
            self.layer = None
        elif opt.aekt_layer == "shared":
            # one layer for the term's teachers: the first distiller builds it, the others of the
            # same term find it in the term's shared dict; every distiller holds it as a submodule,
            # so it is trained and checkpointed with the terms (no state outside them)
            self.layer = ctx.shared.setdefault("aekt_layer", DistillationLayer(ctx.num_classes, opt.aekt_layer_lr))
        else:
            self.layer = DistillationLayer(ctx.num_classes, opt.aekt_layer_lr)

    def distill_logits(self, z: Tensor) -> Tensor:
        """The logits the distillation terms read: ``W z + b`` (``z`` without a layer)."""
        return z if self.layer is None else self.layer(z)

    def forward(self, s, t, batch):
        ramp = warmup_factor(batch.epoch, self.warmup)
        z_dis = self.distill_logits(s.logits)
        explicit, implicit, w = aekt_terms(z_dis, t.logits, batch.labels, self.T, self.logit_stand,
                                           self.w_max, self.adaptive)
        loss = ramp * (self.alpha * w * explicit + self.beta * implicit)
        metrics = {"explicit": explicit.detach().mean(), "implicit": implicit.detach().mean(),
                   "weight": w.mean()}
        return TeacherLoss(loss, anchor=s.logits, metrics=metrics)
