"""Similarity-preserving distillation, ``--distill similarity`` (Tung & Mori, "Similarity-Preserving
Knowledge Distillation", ICCV 2019). RepDistiller's weight: ``-b 3000``.

Features: the last map before pooling, ``feats[-2]`` (post-ReLU), as RepDistiller. Each network's
map is flattened per sample to ``Q [B, D]``, its batch similarity ``G = Q Q^T [B, B]`` is
L2-normalised row by row, and the loss is ``||G_t - G_s||_F^2 / B^2`` (the paper's loss and
RepDistiller's value). Student and teacher may differ in channels and spatial size: only the
``B x B`` matrices are compared.

Per sample: row ``i`` of the difference, ``sum_j (G_t - G_s)[i, j]^2 / B``, so the per-sample losses
average to the batch loss exactly. The relation is defined on the batch: sample ``i``'s loss also
depends on the other samples' features (through ``G_s[i, j]``), and a per-sample weight scales row
``i`` of the relation. ``anchor`` is the student's ``feats[-2]``.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Distiller, TeacherLoss
from .connectors import full_precision, no_autocast
from .registry import register_distiller


def batch_similarity(f):
    """``[B, B]`` row-normalised Gram matrix of the flattened features."""
    q = f.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def similarity_loss(f_s, f_t):
    """Per-sample SP loss ``[B]``: row ``i``'s share of ``||G_t - G_s||_F^2 / B^2``."""
    diff = batch_similarity(f_t) - batch_similarity(f_s)
    return diff.pow(2).sum(1) / f_s.shape[0]


@register_distiller("similarity")
class Similarity(Distiller):
    kind = "feature"
    relational = True      # per-sample values depend on the batch (spot-adaptive routing: sub-batch)
    default_weight = 3000.0

    def __init__(self, ctx):
        super().__init__(ctx)
        self.layer = -2

    def forward(self, s, t, batch):
        f_s = s.feats[self.layer]
        with no_autocast(f_s):
            loss = similarity_loss(full_precision(f_s), full_precision(t.feats[self.layer].detach()))
        return TeacherLoss(loss, anchor=f_s)
