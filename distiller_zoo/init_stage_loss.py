"""Losses that RepDistiller uses only to pre-train connectors and the student's feature modules
(AB and FSP: ``loss_kd = 0`` after ``--init_epochs``), with ``--main_phase_loss`` to keep them.

A subclass defines ``per_layer(s, t, share) -> [L, B]`` (its weighted per-layer loss per sample),
``num_layers`` and ``anchor_of(s)`` (the student tensor every map it reads is computed from, the
same for every teacher, for AEKD). This class provides the two phases:

- init stage: the connectors and ``student.get_feat_modules()`` train on the loss alone. With M
  teachers the gradient reaching the shared student is scaled by ``1/M`` (the student's feature
  modules follow the mean over teachers, exactly RepDistiller with one teacher), while each
  teacher's connectors get their own loss's full gradient; ``helper.distill.run_init_stage`` sums
  the teachers' init losses.
- main phase: ``per_sample`` zeros ``[B]`` with a zero ``anchor_grad`` (RepDistiller's published
  numbers), or with ``--main_phase_loss`` the loss itself (times ``-b``).
"""
from __future__ import annotations

import torch

from .base import Distiller, TeacherLoss, add_argument_once


def student_grad_share(x, share: float):
    """``x`` in value, ``share * d/dx`` in gradient (a student tensor shared by M teachers' losses)."""
    if share == 1.0:
        return x
    detached = x.detach()
    return detached + (x - detached) * share


class InitStageLoss(Distiller):
    kind = "feature"
    num_layers: int = 0

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--main_phase_loss", action="store_true",
                          help="abound/fsp: keep the loss (times -b) after the init stage; RepDistiller "
                               "(default) uses it only in the --init_epochs stage")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.main_phase = bool(ctx.opt.main_phase_loss)
        self.student_share = 1.0 / max(ctx.num_teachers, 1)

    def per_layer(self, s, t, share: float = 1.0):
        raise NotImplementedError

    def anchor_of(self, s):
        raise NotImplementedError

    def forward(self, s, t, batch):
        anchor = self.anchor_of(s)
        if not self.main_phase:
            B = anchor.shape[0]
            return TeacherLoss(anchor.new_zeros(B), anchor=anchor, anchor_grad=torch.zeros_like(anchor),
                            per_layer=anchor.new_zeros(self.num_layers, B))
        per_layer = self.per_layer(s, t)
        return TeacherLoss(per_layer.sum(0), anchor=anchor, per_layer=per_layer)

    def init_stage_modules(self, student):
        return [self.connectors, student.get_feat_modules()]

    def init_stage_loss(self, s, t, batch):
        return self.per_layer(s, t, share=self.student_share).sum(0).mean()
