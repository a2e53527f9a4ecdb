"""Attention transfer, ``--distill attention`` (Zagoruyko & Komodakis, "Paying More Attention to
Attention: Improving the Performance of Convolutional Neural Networks via Attention Transfer",
ICLR 2017). RepDistiller's weight: ``-b 1000``.

Features: the intermediate maps ``feats[1:-1]`` (post-ReLU, as RepDistiller), paired between
student and teacher by ``--feat_pairing`` (below). For a map ``f`` of shape ``[B, C, H, W]`` the
attention map is ``Q = mean_c f_c^2`` flattened to ``H*W`` and L2-normalised per sample. A layer's
loss for sample ``i`` is ``mean_hw (Q_s[i] - Q_t[i])^2``, so its batch mean is the mean over batch
and positions, RepDistiller's (and the authors' code's) value; the loss is the sum over layers.
``per_layer`` holds the per-layer per-sample losses ``[L, B]``, ``per_sample`` their sum.
The paper writes the distance as a (non-squared) p-norm with ``beta/2``; its authors' code, whose
runs give the published numbers, uses the mean squared difference, as here.

Spatial sizes: where a pair of maps differs, the larger map is average-pooled
(``adaptive_avg_pool2d``) to the smaller one's size, whichever side it is on, exactly as
RepDistiller does (the student map is pooled when it is larger; the detached teacher map when the
teacher's is larger). Channel counts may differ: the attention map averages them out.

Layer pairing (``--feat_pairing``, shared with ``nst``, ``kdsvd``, ``vid`` and ``abound``):
  ``first`` (default): the first ``min(L_s, L_t)`` maps of each network, in order: RepDistiller's
  ``zip(feat_s[1:-1], feat_t[1:-1])``, so RepDistiller's command lines give RepDistiller's losses
  and the published tables (CRD's, and the CA-MKD and logit-standardization tables built on
  RepDistiller) are reproduced with it, cross-architecture pairs included;
  ``last``: the last ``min(L_s, L_t)`` maps of each network, in order;
  ``resolution``: at every spatial size both networks have, the deepest map of each
  (the paper's rule: transfer where the resolutions agree).
``last`` and ``first`` coincide whenever both networks report the same number of maps (same-family
pairs such as resnet32x4/resnet8x4); they differ for cross-architecture pairs with unequal counts
(e.g. vgg8 from resnet32x4). ``last`` always reads the student's last map when the student has
more maps than a teacher: the ``anchor`` (the deepest student map used, where AEKD takes its
gradient) is then the same tensor for every teacher, which AEKD needs when teachers of different
families with fewer maps than the student are mixed. Under ``first``/``resolution`` the anchor may
then be a different map for different teachers, and AEKD cannot compare such gradients (use
``last`` there).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import average_pool_to, full_precision, no_autocast
from .registry import register_distiller

PAIRINGS = ("first", "last", "resolution")


def add_pairing_argument(parser):
    add_argument_once(parser, "--feat_pairing", type=str, default="first", choices=PAIRINGS,
                      help="how the intermediate maps feats[1:-1] of student and teacher are paired "
                           "(attention, nst, kdsvd, vid, abound): the first min(Ls, Lt) (default, "
                           "RepDistiller's zip: reproduces the published tables), the last min(Ls, Lt), "
                           "or the deepest map at each shared resolution")


def pair_feature_maps(s_shapes: Sequence[tuple[int, ...]], t_shapes: Sequence[tuple[int, ...]],
                      rule: str = "first") -> list[tuple[int, int]]:
    """Pairs ``(student feature index, teacher feature index)`` among the maps of ``feats[1:-1]``,
    shallow to deep, by ``rule`` (see the module docstring)."""
    s_idx = [i for i in range(1, len(s_shapes) - 1) if len(s_shapes[i]) == 3]
    t_idx = [i for i in range(1, len(t_shapes) - 1) if len(t_shapes[i]) == 3]
    if not s_idx or not t_idx:
        raise ValueError("needs intermediate feature maps (feats[1:-1]) in student and teacher")
    n = min(len(s_idx), len(t_idx))
    if rule == "last":
        return list(zip(s_idx[-n:], t_idx[-n:]))
    if rule == "first":
        return list(zip(s_idx[:n], t_idx[:n]))
    if rule == "resolution":
        deepest_s = {tuple(s_shapes[i][1:]): i for i in s_idx}      # later maps overwrite earlier
        deepest_t = {tuple(t_shapes[i][1:]): i for i in t_idx}
        pairs = sorted((deepest_s[size], deepest_t[size]) for size in deepest_s if size in deepest_t)
        if not pairs:
            raise ValueError("--feat_pairing resolution: student and teacher share no map resolution")
        return pairs
    raise ValueError(f"unknown --feat_pairing {rule!r}; expected one of {', '.join(PAIRINGS)}")


def pool_to_smaller(f_s, f_t):
    """Average-pool whichever of the two maps is spatially larger to the other's size."""
    s_size, t_size = tuple(f_s.shape[-2:]), tuple(f_t.shape[-2:])
    if s_size == t_size:
        return f_s, f_t
    if f_s.shape[-2] > f_t.shape[-2]:
        return average_pool_to(f_s, t_size), f_t
    return f_s, average_pool_to(f_t, s_size)


def attention_map(f, p: int = 2):
    """``[B, H*W]``: the channel mean of ``f^p``, L2-normalised per sample."""
    return F.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def attention_loss(f_s, f_t, p: int = 2):
    """Per-sample attention-transfer loss ``[B]`` of one pair of maps."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean(1)


def paired_maps(name, ctx):
    """``[(student index, teacher index)]`` of ``feats[1:-1]`` by the run's ``--feat_pairing`` rule;
    errors name the loss."""
    try:
        return pair_feature_maps(ctx.student_shapes, ctx.teacher_shapes, ctx.opt.feat_pairing)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


class PairedMapsLoss(Distiller):
    """Base of the losses that compare paired intermediate maps (attention, nst, kdsvd, vid): owns
    ``--feat_pairing`` and sets ``pairs`` and ``layer_ids`` (the student feature index of each
    ``per_layer`` row, which spot-adaptive routing reads)."""
    kind = "feature"

    @classmethod
    def add_arguments(cls, parser):
        add_pairing_argument(parser)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pairs = paired_maps(self.name, ctx)
        self.layer_ids = [i for i, _ in self.pairs]


@register_distiller("attention")
class Attention(PairedMapsLoss):
    default_weight = 1000.0
    p = 2

    def forward(self, s, t, batch):
        anchor = s.feats[self.pairs[-1][0]]
        with no_autocast(anchor):
            per_layer = torch.stack([
                attention_loss(full_precision(s.feats[i]), full_precision(t.feats[j].detach()), self.p)
                for i, j in self.pairs])
        return TeacherLoss(per_layer.sum(0), anchor=anchor, per_layer=per_layer)
