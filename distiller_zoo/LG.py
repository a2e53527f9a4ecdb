"""Locality guidance, ``--distill lg`` (Li et al., "Locality Guidance for Improving Vision
Transformers on Tiny Datasets", ECCV 2022; the tiny-transformers code, ``pycls/models/distill.py``,
``INTER_TRANSFORM: linear``). Usual weight ``-b 2.5`` (``DISTILLATION.INTER_WEIGHT``).

A vision-transformer student's token maps after a few blocks (DeiT-Tiny: 0, 6, 11; the zoo's ViTs
report exactly those as their stage features) imitate a CNN teacher's stage outputs: each student
map goes through a learned 1x1 convolution (with bias) to the teacher's channel count; both maps
are resized bilinearly (``align_corners=False``) to the larger of the two heights and widths; the
loss is the mean squared difference, summed over the pairs. The reference's batch value is
``sum_pairs mean_{B,C,H,W}``; ours per sample is ``sum_pairs mean_{C,H,W}``, whose batch mean is
that value.

Pairs: the last ``n = min(K_s, K_t)`` maps of the student's ``feats[:-1]`` with the last ``n`` of
the teacher's, in order. For a ViT student (3 maps) and a CIFAR ResNet teacher (conv1, layer1,
layer2, layer3) that is blocks (0, 6, 11) with layer1..layer3, the reference's teacher indices
0, 1, 2 (its ResNet reports the three stage outputs). The connectors are built from the actual
shapes of each network at its own input size (the student may see larger images than the
teachers: ``--student_img_size``), one set per teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .base import Distiller, TeacherLoss
from .connectors import full_precision
from .registry import register_distiller


def guidance_pairs(s_shapes, t_shapes):
    """``[(student index, teacher index)]``: the last ``min(K_s, K_t)`` maps of each ``feats[:-1]``."""
    s_idx = [i for i, s in enumerate(s_shapes[:-1]) if len(s) == 3]
    t_idx = [i for i, s in enumerate(t_shapes[:-1]) if len(s) == 3]
    if not s_idx or not t_idx:
        raise ValueError("locality guidance needs feature maps in the student and the teacher")
    n = min(len(s_idx), len(t_idx))
    return list(zip(s_idx[-n:], t_idx[-n:]))


def guidance_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Per-sample ``[B]`` squared error of one (already projected) student map and a teacher map,
    both resized bilinearly to the larger height and width."""
    size = (max(f_s.shape[-2], f_t.shape[-2]), max(f_s.shape[-1], f_t.shape[-1]))
    if tuple(f_s.shape[-2:]) != size:
        f_s = F.interpolate(f_s, size, mode="bilinear", align_corners=False)
    if tuple(f_t.shape[-2:]) != size:
        f_t = F.interpolate(f_t, size, mode="bilinear", align_corners=False)
    return (full_precision(f_s) - full_precision(f_t)).pow(2).flatten(1).mean(1)


@register_distiller("lg")
class LocalityGuidance(Distiller):
    kind = "feature"
    default_weight = 2.5

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pairs = guidance_pairs(ctx.student_shapes, ctx.teacher_shapes)
        self.connectors = nn.ModuleList([nn.Conv2d(ctx.student_shapes[i][0], ctx.teacher_shapes[j][0], 1)
                                         for i, j in self.pairs])

    def forward(self, s, t, batch):
        per_layer = torch.stack([guidance_loss(conv(s.feats[i]), t.feats[j].detach())
                                 for conv, (i, j) in zip(self.connectors, self.pairs)])
        # anchor: the deepest student map read, the same tensor for every teacher (AEKD's gradients)
        return TeacherLoss(per_layer.sum(0), anchor=s.feats[self.pairs[-1][0]], per_layer=per_layer)
