"""Probabilistic knowledge transfer, ``--distill pkt`` (Passalis & Tefas, "Learning Deep
Representations with Probabilistic Knowledge Transfer", ECCV 2018). RepDistiller's weight:
``-b 30000``.

Features: the pooled vectors ``feats[-1]`` (any dimensions on either side). Each vector is divided
by ``(||x|| + 1e-7)`` (non-finite entries set to 0), cosine similarities are mapped to
``[0, 1]`` by ``(cos + 1) / 2`` and normalised per row into conditional probabilities
``p(j | i)``, and the loss is the KL divergence of the student's from the teacher's, as the
authors' code (and RepDistiller's copy of it) computes it:

    mean_{i,j} p_t(j|i) * log((p_t(j|i) + 1e-7) / (p_s(j|i) + 1e-7))       over the B x B matrix

Two deliberate choices, both the authors' code against the paper's text, kept because the
published numbers and ``-b 30000`` come from the code: the diagonal ``j = i`` is part of each row
(the paper's sums exclude it), and the KL terms are averaged over ``B^2`` rather than summed.

Per sample: row ``i``'s share, ``mean_j`` of its terms, so the per-sample losses average to the
batch loss exactly (the relation is defined on the batch; sample ``i`` owns row ``i``).
``anchor`` is the student's ``feats[-1]``.
"""
from __future__ import annotations

import torch

from .base import Distiller, TeacherLoss
from .connectors import full_precision, no_autocast
from .registry import register_distiller

EPS = 1e-7


def conditional_probabilities(f):
    """``[B, B]``: rows of ``(cos + 1) / 2`` over the batch, normalised to sum to 1."""
    x = f.flatten(1)
    x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(f_s, f_t):
    """Per-sample PKT loss ``[B]``: row ``i``'s mean of the KL terms."""
    p_s = conditional_probabilities(f_s)
    p_t = conditional_probabilities(f_t)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean(1)


@register_distiller("pkt")
class PKT(Distiller):
    kind = "feature"
    relational = True      # per-sample values depend on the batch (spot-adaptive routing: sub-batch)
    default_weight = 30000.0

    def forward(self, s, t, batch):
        f_s = s.feats[-1]
        with no_autocast(f_s):
            loss = pkt_loss(full_precision(f_s), full_precision(t.feats[-1].detach()))
        return TeacherLoss(loss, anchor=f_s)
