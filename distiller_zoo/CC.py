"""Correlation congruence, ``--distill correlation`` (Peng, Jin, Liu, Zhou, Wu, Liu, Li, Zhang,
"Correlation Congruence for Knowledge Distillation", ICCV 2019). RepDistiller's weight: ``-b 0.02``.

Features: the pooled vectors ``feats[-1]`` of student and teacher, each mapped by its own
``LinearEmbed`` to ``--feat_dim`` (128) dimensions. Both embeddings belong to this distiller (one
pair per teacher) and are trained with the student; the teacher's feature is detached before its
embedding, so the teacher itself never receives gradient.

``--cc_form repdistiller`` (default): the formula of the code the CC authors shared with
RepDistiller, with which its published CIFAR numbers and ``-b 0.02`` were obtained. With
``delta = |e_s - e_t|`` (``[B, feat_dim]``) and samples taken in batch order,

    loss = mean_{i < B-1} sum_d delta[i, d] * delta[i+1, d]

a chain of relations between consecutive samples. Per sample: each link ``(i, i+1)`` is split
equally between its two samples and scaled by ``B / (B - 1)``, so sample ``i`` gets
``B / (B - 1) * (link[i-1] + link[i]) / 2`` (missing links are 0) and the per-sample losses average
to the batch loss exactly. A batch of one sample has no link: loss 0 (RepDistiller's is NaN).

``--cc_form paper``: the paper's correlation congruence, ``(1/B^2) ||psi(E_t) - psi(E_s)||_F^2``
where ``psi(E)[i, j]`` is the Gaussian RBF kernel between the L2-normalised embeddings,
approximated by its Taylor expansion of order ``P = 2`` with ``gamma = 0.4`` (class constants):
``psi = sum_{p=0..2} exp(-2 gamma) (2 gamma)^p / p! (e_i . e_j)^p``. Per sample: row ``i``,
``sum_j (...)^2 / B``. Its scale is unrelated to the default form's, so ``-b`` must then be chosen
by the user (no published weight exists for it in this setting).

Where a paper and RepDistiller's code disagree this zoo otherwise defaults to the paper; here the
default is the code's form on purpose, because the published numbers everyone compares against,
and the usual ``-b 0.02``, depend on it. ``anchor`` is the student's ``feats[-1]`` (before the embedding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .argtypes import positive_int
from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import LinearEmbed, full_precision, no_autocast
from .registry import register_distiller

CC_FORMS = ("repdistiller", "paper")


def cc_chain_loss(e_s, e_t):
    """Per-sample shares ``[B]`` of ``mean_i sum_d |e_s - e_t|[i] * |e_s - e_t|[i+1]``."""
    B = e_s.shape[0]
    if B < 2:
        return e_s.sum(1) * 0.0
    delta = (e_s - e_t).abs()
    links = (delta[:-1] * delta[1:]).sum(1)                 # [B-1]: link i joins samples i and i+1
    pad = links.new_zeros(1)
    return (torch.cat([links, pad]) + torch.cat([pad, links])) * (B / (2.0 * (B - 1)))


def taylor_rbf_correlation(e, gamma: float = 0.4, order: int = 2):
    """``[B, B]``: order-``order`` Taylor expansion of the Gaussian RBF kernel on normalised rows."""
    e = F.normalize(e, dim=1)
    sim = e @ e.t()
    corr = torch.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return corr


def cc_paper_loss(e_s, e_t, gamma: float = 0.4, order: int = 2):
    """Per-sample shares ``[B]`` of ``||psi_t - psi_s||_F^2 / B^2``."""
    diff = taylor_rbf_correlation(e_t, gamma, order) - taylor_rbf_correlation(e_s, gamma, order)
    return diff.pow(2).sum(1) / e_s.shape[0]


@register_distiller("correlation")
class Correlation(Distiller):
    kind = "feature"
    relational = True      # per-sample values depend on the batch (spot-adaptive routing: sub-batch)
    default_weight = 0.02
    gamma = 0.4
    order = 2

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--feat_dim", type=positive_int, default=128, help="embedding dimension (CRD, CC)")
        add_argument_once(parser, "--cc_form", type=str, default="repdistiller", choices=CC_FORMS,
                          help="CC: RepDistiller's (the authors' shared code, published numbers, -b 0.02) "
                               "or the paper's Taylor-RBF correlation matrices")

    def __init__(self, ctx):
        super().__init__(ctx)
        feat_dim = int(ctx.opt.feat_dim)
        self.form = ctx.opt.cc_form
        if self.form not in CC_FORMS:
            raise ValueError(f"unknown --cc_form {self.form!r}; expected one of {', '.join(CC_FORMS)}")
        self.embed_s = LinearEmbed(math.prod(ctx.student_shapes[-1]), feat_dim)
        self.embed_t = LinearEmbed(math.prod(ctx.teacher_shapes[-1]), feat_dim)

    def forward(self, s, t, batch):
        f_s = s.feats[-1]
        e_s = self.embed_s(f_s)
        e_t = self.embed_t(t.feats[-1].detach())
        with no_autocast(f_s):
            e_s, e_t = full_precision(e_s), full_precision(e_t)
            if self.form == "paper":
                loss = cc_paper_loss(e_s, e_t, self.gamma, self.order)
            else:
                loss = cc_chain_loss(e_s, e_t)
        return TeacherLoss(loss, anchor=f_s)
