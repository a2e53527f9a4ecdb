"""Flow of Solution Procedure, ``--distill fsp`` (Yim, Joo, Bae, Kim, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning", CVPR 2017).

FSP transfers how a network transforms features from one layer to the next: for consecutive maps
``F1`` (``C1 x H x W``) and ``F2`` (``C2 x H x W``) of the same network the FSP matrix is
``G[c2, c1] = mean_{h,w} F2[c2,h,w] * F1[c1,h,w]`` (when the two maps differ in size, the larger
is average-pooled to the smaller, as in RepDistiller). The loss between student and teacher is,
for every pair of consecutive layers, ``mean_{c2,c1} (G_s - G_t)^2``, summed over the pairs.
Weight: ``-b 50`` (RepDistiller's script).

Features: ``feats[:-1]``, every stage output of student and teacher (post-ReLU), stem included.

Two phases, as in the paper and RepDistiller:
- init stage (``--init_epochs``, 30 by default): the student's feature modules
  (``get_feat_modules()``) and any channel connectors (below) are trained on the FSP loss alone,
  at ``--learning_rate``;
- main phase: RepDistiller uses ``loss_kd = 0`` for ``fsp`` and its published numbers come from
  that, so by default the main-phase ``per_sample`` is zeros ``[B]`` (with a zero
  ``anchor_grad``); ``--main_phase_loss`` keeps the FSP loss (times ``-b``) in the main phase.

Per sample: each FSP pair's mean over ``(C2, C1)`` (``per_layer``, ``[P, B]``), summed over pairs;
the batch mean is RepDistiller's ``sum(FSP(g_s, g_t))``.

Deliberate differences from RepDistiller:
- Channel counts: RepDistiller raises unless every student map has the teacher's channel count
  (FSP matrices must have equal shapes). Here a student map whose channels differ from the
  teacher's goes through a connector (1x1 conv without bias -> BN, the OFD-style connector)
  into the teacher's channel count first, trained in the init stage with the student's feature
  modules (and with the student under ``--main_phase_loss``). Maps with equal channels are used as
  they are, so same-channel pairs (resnet110 -> resnet20, ...) are exactly RepDistiller's.
- Unequal layer counts: the first ``min(L_s, L_t)`` maps of each network are used (so
  ``min(L_s, L_t) - 1`` FSP pairs); RepDistiller asserts equal counts. Spatial sizes may differ
  between student and teacher: the FSP matrix does not depend on them.
- With several teachers the init stage scales the gradient reaching the shared student by ``1/M``
  (mean over teachers; exactly RepDistiller with one teacher); each teacher's connectors get
  their own loss's full gradient.
- FSP matrices and the loss are computed in float32 with autocast off.
- ``anchor`` (AEKD) is the shallowest student map read, ``feats[0]`` (the same for every teacher).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .connectors import full_precision, no_autocast
from .init_stage_loss import InitStageLoss, student_grad_share
from .registry import register_distiller
from .VID import match_spatial


def fsp_matrices(maps):
    """``[G_0, ..., G_{L-2}]``, ``G_k = fsp(maps[k], maps[k+1])`` of shape ``[B, C_{k+1}, C_k]``."""
    out = []
    for bot, top in zip(maps[:-1], maps[1:]):
        bot, top = match_spatial(bot, top)
        out.append(torch.einsum("bihw,bjhw->bji", bot, top) / (bot.shape[-2] * bot.shape[-1]))
    return out


def channel_connector(s_channels, t_channels):
    return nn.Sequential(nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(t_channels))


@register_distiller("fsp")
class FSP(InitStageLoss):
    default_weight = 50.0

    def __init__(self, ctx):
        super().__init__(ctx)
        s_maps = [shape for shape in ctx.student_shapes[:-1]]
        t_maps = [shape for shape in ctx.teacher_shapes[:-1]]
        n = min(len(s_maps), len(t_maps))
        if n < 2 or any(len(x) != 3 for x in s_maps[:n] + t_maps[:n]):
            raise ValueError("fsp needs at least two feature maps (C, H, W) in feats[:-1] of both networks")
        self.num_maps = n
        self.layer_ids = list(range(1, n))              # row k: FSP of maps k and k+1 (the deeper one)
        self.connectors = nn.ModuleList([
            nn.Identity() if s_maps[k][0] == t_maps[k][0] else channel_connector(s_maps[k][0], t_maps[k][0])
            for k in range(n)])
        self.num_layers = n - 1

    def per_layer(self, s, t, share=1.0):
        """``[P, B]``: each FSP pair's mean squared difference per sample."""
        s_maps = [conn(student_grad_share(f, share)) for conn, f in zip(self.connectors, s.feats[:self.num_maps])]
        with no_autocast(s_maps[0]):
            s_maps = [full_precision(f) for f in s_maps]
            t_maps = [full_precision(f.detach()) for f in t.feats[:self.num_maps]]
            return torch.stack([(gs - gt).pow(2).flatten(1).mean(1)
                                for gs, gt in zip(fsp_matrices(s_maps), fsp_matrices(t_maps))])

    def anchor_of(self, s):
        return s.feats[0]
