"""Variational Information Distillation, ``--distill vid`` (Ahn, Hu, Damianou, Lawrence, Dai,
"Variational Information Distillation for Knowledge Transfer", CVPR 2019).

VID maximises a variational lower bound on the mutual information between teacher and student
features: for every distilled layer the teacher's map ``t`` is modelled as a Gaussian whose mean
is regressed from the student's map ``s`` (``mu = r(s)``, three 1x1 convolutions without bias,
``C_s -> C_t -> C_t -> C_t`` with ReLUs in between) and whose variance is one learned value per
teacher channel (``sigma^2 = softplus(alpha_c) + eps``, initialised to 5). The loss is the
negative log-likelihood without its constant::

    L_layer = mean_{c,h,w} 1/2 * ((mu - t)^2 / sigma^2 + log sigma^2)

summed over layers. Weight: ``-b 1`` (RepDistiller's script).

Features: the stage outputs ``feats[1:-1]`` of student and teacher (post-ReLU; RepDistiller's
``g_s = feat_s[1:-1]``), paired by ``--feat_pairing`` (shared with attention, nst, kdsvd and abound;
see ``distiller_zoo/AT.py``). Where the spatial sizes of a pair differ, the larger map (student's
or teacher's) is average-pooled to the smaller one, as RepDistiller does.

Per sample: the mean over ``(C, H, W)`` of each layer's negative log-likelihood (``per_layer``,
``[L, B]``), summed over layers; the batch mean is RepDistiller's ``sum_l VIDLoss_l``.

Deliberate differences from RepDistiller:
- Unequal layer counts (e.g. a vgg teacher with 4 maps in ``feats[1:-1]`` and a resnet student
  with 3): RepDistiller's ``zip`` pairs the first ``min(L_s, L_t)``, which is the toolkit's
  default (``--feat_pairing first``); ``last`` and ``resolution`` are alternatives.
- Pooling to the smaller map uses its actual ``(H, W)``, not ``(H, H)`` (same for square maps).
- The likelihood is computed in float32 with autocast off (logarithms, divisions).
- ``anchor`` (for AEKD's gradients) is the student's first intermediate map ``feats[1]`` under
  every pairing rule: every map the loss reads is computed from it, so its gradient carries the
  pull of every layer, and it is the same tensor for every teacher (AEKD compares them).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .AT import PairedMapsLoss
from .base import TeacherLoss
from .connectors import average_pool_to, full_precision, no_autocast
from .registry import register_distiller


def match_spatial(s, t):
    """Average-pool the larger of two maps to the spatial size of the smaller one."""
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if s.shape[-2] * s.shape[-1] > t.shape[-2] * t.shape[-1]:
        return average_pool_to(s, tuple(t.shape[-2:])), t
    return s, average_pool_to(t, tuple(s.shape[-2:]))


class VIDRegressor(nn.Module):
    """One layer of VID: the mean regressor (1x1 convs) and the per-channel variance."""

    def __init__(self, s_channels, t_channels, mid_channels=None, init_pred_var=5.0, eps=1e-5):
        super().__init__()
        mid = mid_channels or t_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, mid, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False))
        # softplus^-1(init_pred_var - eps), so that the initial variance is init_pred_var
        self.log_scale = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def variance(self):
        return F.softplus(self.log_scale) + self.eps

    def forward(self, s, t):
        """Per-sample negative log-likelihood ``[B]`` (mean over C, H, W)."""
        s, t = match_spatial(s, t)
        mean = self.regressor(s)
        with no_autocast(mean):
            mean, t = full_precision(mean), full_precision(t)
            var = self.variance().float().view(1, -1, 1, 1)
            nll = 0.5 * ((mean - t).pow(2) / var + torch.log(var))
            return nll.flatten(1).mean(1)


@register_distiller("vid")
class VID(PairedMapsLoss):
    default_weight = 1.0

    def __init__(self, ctx):
        super().__init__(ctx)
        self.layers = nn.ModuleList([VIDRegressor(ctx.student_shapes[i][0], ctx.teacher_shapes[j][0])
                                     for i, j in self.pairs])

    def forward(self, s, t, batch):
        anchor = s.feats[1]
        per_layer = torch.stack([layer(s.feats[i], t.feats[j].detach())
                                 for layer, (i, j) in zip(self.layers, self.pairs)])
        return TeacherLoss(per_layer.sum(0), anchor=anchor, per_layer=per_layer)
