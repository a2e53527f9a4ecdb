"""Relational knowledge distillation, ``--distill rkd`` (Park, Kim, Lu, Cho, "Relational Knowledge
Distillation", CVPR 2019). RepDistiller's weight: ``-b 1``; inside, distance 25 and angle 50
(``--rkd_dist_weight``, ``--rkd_angle_weight``: the paper's lambda_D and lambda_A).

Features: the pooled vectors ``feats[-1]`` (any dimensions on either side).

- Distance: ``d[i, j] = ||x_i - x_j|| / mu`` with the squared distance clamped at 1e-12 before the
  root, the diagonal 0, and ``mu`` the mean of the positive entries (the mean over pairs of
  distinct samples), each network on its own; Huber (smooth L1, delta 1) between student and
  teacher, averaged over the ``B x B`` matrix.
- Angle: ``a[i, j, k] = <e(i->j), e(i->k)>`` with ``e(i->j)`` the unit vector from ``x_i`` to ``x_j``
  (zero when ``j = i``), i.e. the cosine of the angle at vertex ``i``; Huber averaged over
  ``B x B x B``.

``loss = 25 * distance + 50 * angle``: RepDistiller's value (and the paper's losses). Per sample:
sample ``i`` owns row ``i`` of the distance matrix (``mean_j``) and the angles with vertex ``i``
(``mean_{j,k}``), so the per-sample losses average to the batch loss exactly. ``anchor`` is the
student's ``feats[-1]``. With fewer than two samples there is no relation and the loss is 0
(RepDistiller's would be NaN); a batch of identical vectors has ``mu = 0`` and distance 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .argtypes import non_negative_float
from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import full_precision, no_autocast
from .registry import register_distiller


def pairwise_distance(x, eps: float = 1e-12):
    """``[B, B]`` Euclidean distances, squared distances clamped at ``eps``, diagonal 0."""
    sq = x.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def normalized_distance(x):
    d = pairwise_distance(x)
    positive = (d > 0).to(d.dtype)
    mu = (d * positive).sum() / positive.sum().clamp_min(1)
    return d / mu.clamp_min(1e-12)


def angles(x):
    """``[B, B, B]``: ``a[i, j, k]`` is the cosine of the angle at ``x_i`` between ``x_j`` and ``x_k``."""
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_loss(f_s, f_t, w_dist: float = 25.0, w_angle: float = 50.0):
    """Per-sample RKD loss ``[B]`` (row / vertex shares of the batch loss)."""
    s, t = f_s.flatten(1), f_t.flatten(1)
    if s.shape[0] < 2:
        return s.sum(1) * 0.0
    with torch.no_grad():
        t_d, t_a = normalized_distance(t), angles(t)
    dist = F.smooth_l1_loss(normalized_distance(s), t_d, reduction="none").mean(1)
    angle = F.smooth_l1_loss(angles(s), t_a, reduction="none").mean((1, 2))
    return w_dist * dist + w_angle * angle


@register_distiller("rkd")
class RKD(Distiller):
    kind = "feature"
    relational = True      # per-sample values depend on the batch (spot-adaptive routing: sub-batch)
    default_weight = 1.0

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--rkd_dist_weight", type=non_negative_float, default=25.0,
                          help="RKD: weight of the distance loss inside rkd (25)")
        add_argument_once(parser, "--rkd_angle_weight", type=non_negative_float, default=50.0,
                          help="RKD: weight of the angle loss inside rkd (50)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.w_dist = float(ctx.opt.rkd_dist_weight)
        self.w_angle = float(ctx.opt.rkd_angle_weight)

    def forward(self, s, t, batch):
        f_s = s.feats[-1]
        with no_autocast(f_s):
            loss = rkd_loss(full_precision(f_s), full_precision(t.feats[-1].detach()), self.w_dist, self.w_angle)
        return TeacherLoss(loss, anchor=f_s)
