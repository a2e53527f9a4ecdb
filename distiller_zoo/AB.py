"""Activation-boundary distillation, ``--distill abound`` (Heo, Lee, Yun, Choi, "Knowledge Transfer
via Distillation of Activation Boundaries Formed by Hidden Neurons", AAAI 2019).

AB transfers where the teacher's neurons switch on and off. With the student's connected
pre-activation ``s`` and the teacher's pre-activation ``t`` (``needs_preact``), every element
contributes the alternative squared hinge of the paper (margin ``mu = 1``)::

    (s + mu)^2 * [s > -mu and t <= 0]  +  (s - mu)^2 * [s <= mu and t > 0]

summed over the elements of a layer. Layer ``l`` of ``L`` is weighted ``2^(l - L + 1)`` (the
deepest weighs 1), and each layer's sum is divided by the batch size and scaled by ``3/1000``,
RepDistiller's constants. Weight: ``-b 1`` (RepDistiller's script).

Features: the pre-ReLU stage outputs ``feats[1:-1]`` of student and teacher, paired by
``--feat_pairing`` (shared with attention, nst, kdsvd and vid; see ``distiller_zoo/AT.py``). Each
student map goes through a connector into the teacher's space: identity where channels and height
agree, otherwise RepDistiller's ``ConvReg`` without its ReLU (conv -> BN).

Two phases, as in the paper and RepDistiller:
- init stage (``--init_epochs``, 30 by default): the connectors and the student's feature modules
  (``get_feat_modules()``) are trained on the AB loss alone (``init_stage_*``), at ``--learning_rate``;
- main phase: RepDistiller uses ``loss_kd = 0`` for ``abound`` (the student is then trained by CE and
  KD only), and its published numbers come from that, so by default the main-phase ``per_sample``
  is zeros ``[B]`` (with a zero ``anchor_grad``). ``--main_phase_loss`` keeps the AB loss (with
  ``-b``) during the main phase too, the connectors training with the student.

Per sample: layer ``l``'s element sum for that sample times ``2^(l-L+1) * 3/1000`` (``per_layer``
``[L, B]``), summed over layers; the batch mean is RepDistiller's ``sum(ABLoss(g_s, g_t))``.

Deliberate differences from RepDistiller:
- Unequal layer counts: RepDistiller asserts equal counts; here the shared ``--feat_pairing`` rule
  pairs the maps (all rules but ``resolution`` coincide for equal counts, which every pair in
  RepDistiller's tables has), and ``L`` is the number of pairs.
- The hinge sums are computed in float32 with autocast off (a map's element sum exceeds the
  half-precision range).
- With several teachers the init stage trains one set of connectors per teacher on that
  teacher's loss, while the gradient reaching the shared student is scaled by ``1/M`` (the
  student's feature modules follow the mean over teachers; with one teacher this is exactly
  RepDistiller). ``helper.distill.run_init_stage`` sums the teachers' init losses.
- ``anchor`` (AEKD) is the student's first intermediate map ``feats[1]`` (pre-activation) under
  every pairing rule: every map the loss reads is computed from it, and it is the same tensor
  for every teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .AT import add_pairing_argument, paired_maps
from .connectors import ConvReg, full_precision, no_autocast
from .init_stage_loss import InitStageLoss, student_grad_share
from .registry import register_distiller


def ab_elementwise(source, target, margin=1.0):
    """The alternative squared hinge of AB, elementwise."""
    return ((source + margin).pow(2) * ((source > -margin) & (target <= 0)).to(source.dtype)
            + (source - margin).pow(2) * ((source <= margin) & (target > 0)).to(source.dtype))


@register_distiller("abound")
class ActivationBoundaries(InitStageLoss):
    default_weight = 1.0
    needs_preact = True
    margin = 1.0
    scale = 3.0 / 1000.0

    @classmethod
    def add_arguments(cls, parser):
        add_pairing_argument(parser)
        super().add_arguments(parser)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pairs = paired_maps("abound", ctx)
        self.layer_ids = [i for i, _ in self.pairs]     # student feature index of each per_layer row
        connectors = []
        for i, j in self.pairs:
            s_shape, t_shape = ctx.student_shapes[i], ctx.teacher_shapes[j]
            if s_shape[0] == t_shape[0] and s_shape[1] == t_shape[1]:
                connectors.append(nn.Identity())
            else:
                connectors.append(ConvReg(s_shape, t_shape, use_relu=False))
        self.connectors = nn.ModuleList(connectors)
        L = len(self.pairs)
        self.register_buffer("layer_weights", torch.tensor([2.0 ** (l - L + 1) for l in range(L)]),
                             persistent=False)
        self.num_layers = L

    def per_layer(self, s, t, share=1.0):
        """``[L, B]``: each layer's weighted, scaled element sum per sample."""
        rows = []
        for conn, (i, j) in zip(self.connectors, self.pairs):
            g_s = conn(student_grad_share(s.feats[i], share))
            with no_autocast(g_s):
                rows.append(ab_elementwise(full_precision(g_s), full_precision(t.feats[j].detach()),
                                           self.margin).flatten(1).sum(1))
        return torch.stack(rows) * (self.layer_weights[:, None] * self.scale)

    def anchor_of(self, s):
        return s.feats[1]
