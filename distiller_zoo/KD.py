"""Hinton KD: "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals, Dean, 2015).

Per sample ``T^2 * KL(softmax(t/T) || softmax(s/T))``; its batch mean is RepDistiller's
``DistillKL`` (``KLDivLoss(reduction='batchmean') * T^2``). With ``--logit-stand`` both logits are
first Z-scored per sample (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024)
and the temperature is ``--base-temp``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Distiller, LossTerm, add_argument_once
from .registry import register_distiller


def standardize(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample Z-score over classes: ``(z - mean) / (std + eps)``, unbiased std (C - 1), eps
    added to the std, no affine parameters (Sun et al. 2024, Algorithm 1 and the authors' code)."""
    z = z.float()
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def kd_loss(s: Tensor, t: Tensor, T: float, logit_stand: bool = False) -> Tensor:
    """Per-sample KD loss ``[B]``: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    ``logit_stand`` Z-scores both sides first (the teacher side carries no gradient)."""
    s = s.float()
    t = t.detach().float()
    if logit_stand:
        s, t = standardize(s), standardize(t)
    log_p_s = F.log_softmax(s / T, dim=1)
    log_p_t = F.log_softmax(t / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)


def kd_logit_grad(s: Tensor, t: Tensor, T: float) -> Tensor:
    """Closed-form gradient of the batch-mean KD loss w.r.t. the student logits:
    ``T * (softmax(s/T) - softmax(t/T)) / B`` (no backward pass needed)."""
    return T * (F.softmax(s.detach().float() / T, dim=1) - F.softmax(t.detach().float() / T, dim=1)) / s.shape[0]


def kd_temperature(opt) -> float:
    return opt.base_temp if getattr(opt, "logit_stand", False) else opt.kd_T


@register_distiller("kd")
class KD(Distiller):
    """The KD term itself. With ``--distill kd`` it is the only distillation term (weight ``-a``);
    with a feature loss it is the ``-a`` term next to it, as in RepDistiller and CA-MKD."""

    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--kd_T", type=float, default=4, help="KD temperature")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.T = kd_temperature(ctx.opt)
        self.logit_stand = bool(getattr(ctx.opt, "logit_stand", False))

    def forward(self, s, t, batch):
        loss = kd_loss(s.logits, t.logits, self.T, self.logit_stand)
        grad = None if self.logit_stand else kd_logit_grad(s.logits, t.logits, self.T)
        return LossTerm(loss, anchor=s.logits, anchor_grad=grad)
