"""Hinton KD: "Distilling the Knowledge in a Neural Network" (Hinton, Vinyals, Dean, 2015).

Per sample ``T^2 * KL(softmax(t/T) || softmax(s/T))``; its batch mean is RepDistiller's
``DistillKL`` (``KLDivLoss(reduction='batchmean') * T^2``).

Logit standardization (``--logit-stand``; Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024). Both logits are Z-scored per sample over the classes before the softmax
(``standardize``: unbiased std, epsilon added to the std, no affine parameters), then divided by
``--base-temp`` (default 2) instead of ``--kd_T``; ``T^2`` is kept. Gradients flow through the
student's mean and std; the teacher side carries none. The flags are declared here once (KD is
always registered) and every logit loss reads them: ``kd``, ``dkd``, ``ctkd``, ``mlkd``. With the
flag, ``configure`` makes the KD weight ``-a`` equal to ``--kd-weight`` (default 9) and the CE weight
``-r`` 0.1, the authors' command line for KD (and MLKD/CTKD), unless ``-a``/``-r`` are given.

Under every ensemble strategy each teacher's logits are standardized on their own (one distiller
per teacher). What the strategies read (their own definitions, unchanged by the flag):
EBKD the entropy of each teacher's *raw* softmax at temperature 1; CA-MKD the cross-entropy of each
teacher's *raw* logits with the label; AEKD the gradient of each teacher's (standardized) loss with
respect to the student's *raw* logits, here in closed form (``kd_logit_grad``), chained through the
standardization when the flag is on.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .argtypes import non_negative_float, positive_float
from .base import Configured, Distiller, TeacherLoss, add_argument_once
from .registry import register_distiller

STD_EPS = 1e-7
LOGIT_STAND_CE_WEIGHT = 0.1     # the authors' CE weight for KD/MLKD/CTKD with --logit-stand


def as_float(z: Tensor) -> Tensor:
    """Half/bfloat16 -> float32 (losses are computed in at least single precision); float32 and
    float64 are kept."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def standardize(z: Tensor, eps: float = STD_EPS) -> Tensor:
    """Per-sample Z-score over classes: ``(z - mean) / (std + eps)``, unbiased std (C - 1), eps
    added to the std, no affine parameters (Sun et al. 2024, Algorithm 1 and the authors' code).

    ``z``: ``[B, C]`` logits; returns ``[B, C]``. Invariant to adding a per-sample constant and
    (up to ``eps``) to multiplying by a positive per-sample constant."""
    z = as_float(z)
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def kd_loss(s: Tensor, t: Tensor, T: Union[float, Tensor], logit_stand: bool = False) -> Tensor:
    """Per-sample KD loss ``[B]``: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    ``s``/``t``: student/teacher logits ``[B, C]``; ``T``: a number or a 0-dim tensor (CTKD's
    learned temperature, which then receives gradients). ``logit_stand`` Z-scores both sides first
    (``standardize``); the teacher side carries no gradient. The batch mean is the usual loss."""
    s = as_float(s)
    t = as_float(t.detach())
    if logit_stand:
        s, t = standardize(s), standardize(t)
    log_p_s = F.log_softmax(s / T, dim=1)
    log_p_t = F.log_softmax(t / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)


def standardize_backward(z: Tensor, g: Tensor, eps: float = STD_EPS) -> Tensor:
    """Vector-Jacobian product of ``standardize`` at ``z``: maps ``g = dL/dz'`` to ``dL/dz``.

    With ``u = z - mean``, ``sigma`` the unbiased std and ``d = sigma + eps``:
    ``dL/dz = (g - mean(g)) / d - u * sum(g * u) / ((C - 1) * sigma * d^2)``."""
    z, g = as_float(z), as_float(g)
    C = z.shape[-1]
    u = z - z.mean(dim=-1, keepdim=True)
    sigma = z.std(dim=-1, keepdim=True)
    d = sigma + eps
    first = (g - g.mean(dim=-1, keepdim=True)) / d
    second = u * (g * u).sum(dim=-1, keepdim=True) / ((C - 1) * sigma.clamp_min(1e-30) * d * d)
    return first - second


def kd_logit_grad(s: Tensor, t: Tensor, T: float, logit_stand: bool = False) -> Tensor:
    """Closed-form gradient of the batch-mean KD loss w.r.t. the (raw) student logits, no backward
    pass: ``T * (softmax(s'/T) - softmax(t'/T)) / B`` w.r.t. ``s'``, with ``s' = s`` or, under
    ``logit_stand``, ``s' = standardize(s)`` and the result chained through ``standardize``."""
    s = as_float(s.detach())
    t = as_float(t.detach())
    s_in, t_in = (standardize(s), standardize(t)) if logit_stand else (s, t)
    g = T * (F.softmax(s_in / T, dim=1) - F.softmax(t_in / T, dim=1)) / s.shape[0]
    return standardize_backward(s, g) if logit_stand else g


def kd_temperature(opt) -> float:
    """``--base-temp`` under ``--logit-stand``, else ``--kd_T``."""
    return opt.base_temp if opt.logit_stand else opt.kd_T


def logit_stand_scale(opts, flags: Sequence[str], note: str = "") -> Configured:
    """Under ``--logit-stand``, each of a loss's own weight flags (``dkd_alpha``, ...) times
    ``--kd-weight`` (DKD-like losses: the CE weight stays), with a note for the log."""
    if not opts.logit_stand:
        return Configured()
    w = float(opts.kd_weight)
    changes = {flag: float(getattr(opts, flag)) * w for flag in flags}
    said = ", ".join(f"--{flag} {float(getattr(opts, flag))} -> {value}" for flag, value in changes.items())
    return Configured(changes, [f"--logit-stand: {said} (times --kd-weight {w}){note}; logits Z-scored per "
                                f"sample, temperature --base-temp {opts.base_temp}"])


def logit_stand_weights(opts, given: set, who: str, temperature: str = "") -> Configured:
    """The authors' weights under ``--logit-stand`` for KD-like losses (KD, MLKD, CTKD): ``-a`` =
    ``--kd-weight`` and ``-r`` = 0.1, each unless given explicitly, with a note for the log."""
    if not opts.logit_stand:
        return Configured()
    parts, changes = [], {}
    if "alpha" in given:
        parts.append(f"-a {opts.alpha} as given (not --kd-weight {opts.kd_weight})")
    else:
        changes["alpha"] = float(opts.kd_weight)
        parts.append(f"{who} weight -a = --kd-weight {changes['alpha']}")
    if "gamma" in given:
        parts.append(f"-r {opts.gamma} as given")
    else:
        changes["gamma"] = LOGIT_STAND_CE_WEIGHT
        parts.append(f"CE weight -r = {LOGIT_STAND_CE_WEIGHT}")
    temperature = temperature or f"temperature --base-temp {opts.base_temp}"
    return Configured(changes, [f"--logit-stand: {', '.join(parts)}; logits Z-scored per sample, {temperature}"])


@register_distiller("kd")
class KD(Distiller):
    """The KD term itself. With ``--distill kd`` it is the only distillation term (weight ``-a``);
    with a feature loss it is the ``-a`` term next to it, as in RepDistiller and CA-MKD.
    ``anchor_grad`` is filled in closed form (``kd_logit_grad``), with or without standardization."""

    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--kd_T", type=positive_float, default=4, help="KD temperature")
        add_argument_once(parser, "--logit-stand", "--logit_stand", dest="logit_stand", action="store_true",
                          help="logit standardization (Sun et al. 2024) on every logit loss: per-sample "
                               "Z-score of teacher and student logits, temperature --base-temp; sets -a to "
                               "--kd-weight and -r to 0.1 (DKD: alpha, beta times --kd-weight) unless given")
        add_argument_once(parser, "--base-temp", "--base_temp", dest="base_temp", type=positive_float, default=2.0,
                          help="temperature on standardized logits (--logit-stand; authors: 2)")
        add_argument_once(parser, "--kd-weight", "--kd_weight", dest="kd_weight", type=non_negative_float, default=9.0,
                          help="logit-loss weight under --logit-stand (authors: 9)")

    @classmethod
    def configure(cls, opts, given):
        return logit_stand_weights(opts, given, "KD")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.T = kd_temperature(ctx.opt)
        self.logit_stand = bool(ctx.opt.logit_stand)

    def forward(self, s, t, batch):
        loss = kd_loss(s.logits, t.logits, self.T, self.logit_stand)
        grad = kd_logit_grad(s.logits, t.logits, self.T, self.logit_stand)
        return TeacherLoss(loss, anchor=s.logits, anchor_grad=grad)
