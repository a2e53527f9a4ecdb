"""Knowledge distillation with singular value decomposition, ``--distill kdsvd`` (Lee, Kim, Song,
"Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018).
``default_weight`` 1: RepDistiller implements the loss but its run scripts and tables give it no
``-b``; 1 is our choice, not a published setting.

Features: the intermediate maps ``feats[1:-1]`` (post-ReLU), paired by ``--feat_pairing`` as in
``attention`` (``distiller_zoo.AT``). Each map ``[B, C, H, W]`` is read as ``B`` matrices
``[H*W, C]`` and decomposed; its right singular vectors ``V [B, C, .]`` describe how the channels
co-vary over positions. As in RepDistiller (a port of the authors' TensorFlow code):

- teacher: the first ``k = 1`` right singular vector and singular value (non-finite entries set to
  0, vectors and the first ``k`` singular values L2-normalised); student: the first ``k + 3``;
- each teacher vector picks the student vector with the largest ``|cosine|``, with that cosine's
  sign (the student's ``k + 3`` candidates absorb reordering and sign flips);
- both sides' vectors are scaled by the teacher's normalised singular values;
- for consecutive paired layers ``l-1, l`` the distilled feature vector is the RBF
  ``exp(-(v_l[c] - v_{l-1}[c'])^2 / 8)`` over channel pairs ``(c, c')`` and components, and the loss
  is the sum of squared student-teacher differences (non-finite terms dropped), divided by ``B``.

Per sample: that sum over one sample's entries, so the batch mean is RepDistiller's value.
``per_layer`` is ``[L-1, B]``: row ``r`` is the relation between pairs ``r`` and ``r+1`` and belongs to
the deeper student map ``layer_ids[r]``; ``per_sample`` is its sum. ``anchor`` is the deepest student
map used.

The method compares channel-by-channel relations, so paired maps must have the same number of
channels in student and teacher (spatial sizes may differ); other pairs are refused when the run is
built, as they fail inside RepDistiller.

Deliberate difference from RepDistiller: a sample whose gradient through the SVD is not finite
(repeated singular values, e.g. several all-zero channels after a ReLU, make the SVD's derivative
infinite) has its gradient at the student map set to 0, as the authors' code does with its own SVD
gradient; RepDistiller lets the NaN reach the student's weights. Finite gradients are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .AT import PairedMapsLoss
from .base import TeacherLoss
from .connectors import full_precision, no_autocast
from .registry import register_distiller


def _finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _DropNonFiniteGrad(torch.autograd.Function):
    """Identity whose backward zeroes the gradient of every sample that has a non-finite entry."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ok = torch.isfinite(grad).flatten(1).all(1).view(-1, *([1] * (grad.dim() - 1)))
        return torch.where(ok, grad, torch.zeros_like(grad))


def leading_singular(f, n: int):
    """The first ``n`` singular values ``[B, n]`` and right singular vectors ``[B, C, n]`` of
    ``f`` read as ``[B, H*W, C]``, non-finite entries 0, both L2-normalised."""
    x = f.flatten(2).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_to_teacher(v_s, v_t):
    """For each teacher vector the student vector of largest ``|cosine|``, signed: ``[B, C, k]``."""
    cosine = v_s.transpose(1, 2) @ v_t                          # [B, k_s, k_t]
    best = cosine.abs().amax(1, keepdim=True)
    select = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ select


def rbf_relation(v, v_prev):
    """``[B, C_l, C_{l-1}, k]``: ``exp(-(v[c] - v_prev[c'])^2 / 8)``."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8)


def kdsvd_losses(maps_s, maps_t, k: int = 1):
    """Per-relation per-sample losses ``[L-1, B]`` for paired lists of maps (teacher maps detached)."""
    losses, prev = [], None
    for f_s, f_t in zip(maps_s, maps_t):
        with torch.no_grad():
            s_t, v_t = leading_singular(f_t, k)
        _, v_s = leading_singular(_DropNonFiniteGrad.apply(f_s), k + 3)
        v_s = align_to_teacher(v_s, v_t)
        scale = s_t.unsqueeze(1)
        v_s, v_t = v_s * scale, v_t * scale
        if prev is not None:
            diff = (rbf_relation(v_s, prev[0]) - rbf_relation(v_t, prev[1])).pow(2)
            losses.append(_finite(diff).sum((1, 2, 3)))
        prev = (v_s, v_t)
    return torch.stack(losses)


@register_distiller("kdsvd")
class KDSVD(PairedMapsLoss):
    default_weight = 1.0
    k = 1

    def __init__(self, ctx):
        super().__init__(ctx)
        if len(self.pairs) < 2:
            raise ValueError("kdsvd relates consecutive maps: it needs at least two paired maps")
        for i, j in self.pairs:
            if ctx.student_shapes[i][0] != ctx.teacher_shapes[j][0]:
                raise ValueError(
                    f"kdsvd compares channel-by-channel relations, so paired maps need equal channel "
                    f"counts: student feature {i} has {ctx.student_shapes[i][0]} channels, teacher "
                    f"feature {j} has {ctx.teacher_shapes[j][0]}")
        self.layer_ids = [i for i, _ in self.pairs[1:]]   # deeper student map of each per_layer row

    def forward(self, s, t, batch):
        anchor = s.feats[self.pairs[-1][0]]
        with no_autocast(anchor):
            per_layer = kdsvd_losses([full_precision(s.feats[i]) for i, _ in self.pairs],
                                     [full_precision(t.feats[j].detach()) for _, j in self.pairs], self.k)
        return TeacherLoss(per_layer.sum(0), anchor=anchor, per_layer=per_layer)
