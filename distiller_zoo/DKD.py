"""DKD: "Decoupled Knowledge Distillation" (Zhao, Cui, Song, Qiu, Liang, CVPR 2022).

KD at temperature ``T`` splits, per sample, into a target-class term and a non-target-class term:

- TCKD: ``T^2 * KL(b_t || b_s)`` with ``b = [p_gt, 1 - p_gt]``, the binary (target vs. all
  others) probabilities of ``p = softmax(z / T)``;
- NCKD: ``T^2 * KL(q_t || q_s)`` with ``q = softmax`` of the non-target logits ``/ T`` only (the
  distribution among the other classes).

(``KD = TCKD + (1 - p_t,gt) * NCKD``.) The loss is ``alpha * TCKD + beta * NCKD`` per sample,
scaled by ``min(epoch / --dkd_warmup, 1)`` (epochs count from 1, so the first epoch has 1/20).
Defaults are the paper's CIFAR-100 ones: ``--dkd_alpha 1 --dkd_beta 8 --dkd_T 4 --dkd_warmup 20``
with CE weight 1; the paper's per-pair beta values are in ``scripts/run_logit_stand.sh`` (6 for
vgg13->vgg8, wrn_40_2->wrn_16_2/wrn_40_1, vgg13->MobileNetV2; 2 for resnet56->resnet20,
resnet110->resnet32). ``--distill dkd`` takes the ``-a`` slot (default 1) in place of KD.

``--logit-stand`` (Sun et al., CVPR 2024): both logits are Z-scored per sample first and ``T`` is
``--base-temp``; ``configure`` multiplies ``--dkd_alpha`` and ``--dkd_beta`` by ``--kd-weight``
(the authors' DKD command: alpha 9, beta 9 * beta) and leaves the CE weight at 1.

The warm-up and the ``T^2`` factor are mdistiller's (``min(epoch / warmup, 1)`` with epochs from
1; both terms times ``T^2``). NCKD carries ``beta = 8`` where KD weighs it by the teacher's
``1 - p_t``, so the gradient on the logits stays several times KD's (digits, epoch 6: 2.4x), and in
a short run at a constant learning rate the student's BatchNorm running statistics lag its weights and eval-mode test accuracy can
sit far below training accuracy (digits, one teacher, epoch 5 at 0.05: 36.9% test, 68.4% train;
the same weights with recomputed statistics 67.3%);
a learning-rate decay closes it (``--lr_decay_epochs 4`` of 6: 69.7% train, 77.5% test). Issue 16.

Computed in log space (the binary log-probabilities from ``logsumexp`` over the non-target
classes, the non-target distribution by gathering the C-1 other logits) instead of the reference's
``log`` of summed probabilities and ``-1000`` mask: the same quantities, finite for any logits.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .argtypes import non_negative_float, positive_float
from .base import Distiller, TeacherLoss, add_argument_once
from .KD import as_float, logit_stand_scale, standardize
from .registry import register_distiller


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``[B, C-1]`` indices of every class but the label, in increasing order (no host sync)."""
    k = torch.arange(num_classes - 1, device=labels.device)
    return k[None, :] + (k[None, :] >= labels[:, None]).long()


def dkd_terms(s: Tensor, t: Tensor, y: Tensor, T: float, logit_stand: bool = False) -> Tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)``, each ``[B]`` and already multiplied by ``T^2``."""
    s = as_float(s)
    t = as_float(t.detach())
    if logit_stand:
        s, t = standardize(s), standardize(t)
    B, C = s.shape
    y = y.view(-1, 1)
    others = other_classes(y.view(-1), C)
    log_p_s, log_p_t = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
    # binary distribution [p_gt, 1 - p_gt], in log space
    log_b_s = torch.cat([log_p_s.gather(1, y), torch.logsumexp(log_p_s.gather(1, others), 1, keepdim=True)], 1)
    log_b_t = torch.cat([log_p_t.gather(1, y), torch.logsumexp(log_p_t.gather(1, others), 1, keepdim=True)], 1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    # distribution among the non-target classes
    log_q_s = F.log_softmax(s.gather(1, others) / T, dim=1)
    log_q_t = F.log_softmax(t.gather(1, others) / T, dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1)
    return tckd * (T * T), nckd * (T * T)


def dkd_loss(s: Tensor, t: Tensor, y: Tensor, alpha: float, beta: float, T: float,
             logit_stand: bool = False) -> Tensor:
    """Per-sample DKD loss ``[B]``: ``alpha * TCKD + beta * NCKD`` (each ``T^2`` times a KL), before
    warm-up scaling. ``s``/``t``: student/teacher logits ``[B, C]``; ``y``: labels ``[B]``;
    ``logit_stand`` Z-scores both sides first (the teacher side carries no gradient)."""
    tckd, nckd = dkd_terms(s, t, y, T, logit_stand)
    return alpha * tckd + beta * nckd


def warmup_factor(epoch: int, warmup: float) -> float:
    """``min(epoch / warmup, 1)``; 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@register_distiller("dkd")
class DKD(Distiller):
    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--dkd_alpha", type=non_negative_float, default=1.0, help="DKD weight of TCKD (paper: 1)")
        add_argument_once(parser, "--dkd_beta", type=non_negative_float, default=8.0,
                          help="DKD weight of NCKD (paper: 8; 6 or 2 for some pairs, see scripts/run_logit_stand.sh)")
        add_argument_once(parser, "--dkd_T", type=positive_float, default=4.0, help="DKD temperature (paper: 4)")
        add_argument_once(parser, "--dkd_warmup", type=non_negative_float, default=20,
                          help="epochs over which the DKD loss ramps in linearly (paper: 20; 0: no warm-up)")

    @classmethod
    def configure(cls, opts, given):
        return logit_stand_scale(opts, ("dkd_alpha", "dkd_beta"), ", CE weight unchanged")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.logit_stand = bool(opt.logit_stand)
        self.T = opt.base_temp if self.logit_stand else opt.dkd_T
        self.alpha, self.beta, self.warmup = opt.dkd_alpha, opt.dkd_beta, opt.dkd_warmup

    def forward(self, s, t, batch):
        factor = warmup_factor(batch.epoch, self.warmup)
        tckd, nckd = dkd_terms(s.logits, t.logits, batch.labels, self.T, self.logit_stand)
        loss = factor * (self.alpha * tckd + self.beta * nckd)
        return TeacherLoss(loss, anchor=s.logits, metrics={"tckd": tckd.detach().mean(), "nckd": nckd.detach().mean()})
