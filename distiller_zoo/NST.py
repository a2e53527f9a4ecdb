"""Neuron selectivity transfer, ``--distill nst`` (Huang & Wang, "Like What You Like: Knowledge
Distill via Neuron Selectivity Transfer", arXiv 1707.01219, 2017). RepDistiller's weight: ``-b 50``.

Features: the intermediate maps ``feats[1:-1]`` (post-ReLU), paired by ``--feat_pairing`` exactly
as ``attention`` does (see ``distiller_zoo.AT``: default the last ``min(L_s, L_t)`` maps, identical to
RepDistiller's pairing for every pair it reports), and where a pair differs in spatial size the
larger map is average-pooled to the smaller one's size (RepDistiller's rule).

Each channel's map is flattened over positions and L2-normalised (``f_c / ||f_c||``); the loss of a
layer is the squared MMD between the student's and the teacher's channel distributions with the
paper's polynomial kernel ``k(x, y) = (x . y)^2`` (d = 2, c = 0):

    MMD^2 = mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c') - 2 mean_{c,c'} k(s_c, t_c')

computed per sample (the means run over channel pairs), so the batch mean is RepDistiller's value
(``full_loss=True``: the constant teacher-teacher term is kept, and so is the loss's value).
Channel counts may differ. ``per_layer`` is ``[L, B]``, ``per_sample`` its sum over layers, and the
``anchor`` is the deepest student map used. The kernels are computed as batched Gram matrices
(the same numbers as RepDistiller's broadcast, without its ``[B, C, C, H*W]`` intermediate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .AT import PairedMapsLoss, pool_to_smaller
from .base import TeacherLoss
from .connectors import full_precision, no_autocast
from .registry import register_distiller


def poly_kernel_mean(a, b):
    """``[B]``: the mean over channel pairs of ``(a_c . b_c')^2`` for ``a [B, Ca, N]``, ``b [B, Cb, N]``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean((1, 2))


def nst_loss(f_s, f_t):
    """Per-sample NST loss ``[B]`` of one pair of maps."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2 * poly_kernel_mean(s, t)


@register_distiller("nst")
class NST(PairedMapsLoss):
    default_weight = 50.0

    def forward(self, s, t, batch):
        anchor = s.feats[self.pairs[-1][0]]
        with no_autocast(anchor):
            per_layer = torch.stack([nst_loss(full_precision(s.feats[i]), full_precision(t.feats[j].detach()))
                                     for i, j in self.pairs])
        return TeacherLoss(per_layer.sum(0), anchor=anchor, per_layer=per_layer)
