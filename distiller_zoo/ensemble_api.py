"""The public face of the ensemble strategies, for people who bring their own training loop.

    from distiller_zoo import ensemble_weights
    w = ensemble_weights("CAMKD", teacher_logits, labels, student_logits)   # [M, B]
    loss = (w * per_sample_losses).sum() / B

The weights are normalised so that the ensemble loss is ``(1/B) sum_i sum_m w[m,i] * loss[m,i]``:
CAMKD's and EBKD's include the reference scripts' division by M, AEKD's are equal over samples
and sum to 1 over teachers, AVERAGE_LOSS's are 1/M.
"""
from __future__ import annotations

import torch

from .base import EnsembleInputs
from .defaults import default_options
from .KD import kd_logit_grad, kd_loss, kd_temperature
from .registry import ENSEMBLES


def get_strategy(method: str, opt=None):
    """The strategy ``method`` built with ``opt`` (default: every flag at its default)."""
    if method not in ENSEMBLES:
        raise ValueError(f"unknown ensemble method {method!r}; expected one of: {', '.join(sorted(ENSEMBLES))}")
    return ENSEMBLES[method](default_options() if opt is None else opt)


@torch.no_grad()
def ensemble_weights(method, teacher_logits, labels, student_logits, **options):
    """Per-teacher, per-sample weights ``[M, B]`` of a strategy for the KD loss.

    ``teacher_logits`` ``[M, B, C]``, ``labels`` ``[B]``, ``student_logits`` ``[B, C]``.
    ``options`` override the command-line defaults (``default_options``) by flag name, e.g.
    ``kd_T=2.0``, ``C=0.6``, ``svm_norm=True``, ``evidential_mode="weight"``. The KD temperature is
    ``kd_T``, or ``base_temp`` under ``logit_stand=True`` (then the KD losses and AEKD's gradients
    are those of standardized logits; EBKD's entropies and CAMKD's cross-entropies always read raw
    logits), as in a run."""
    teacher_logits = torch.as_tensor(teacher_logits)
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be [M, B, C], got shape {tuple(teacher_logits.shape)}")
    opt = default_options(**options)
    T, logit_stand = kd_temperature(opt), opt.logit_stand
    strategy = get_strategy(method, opt)
    M = teacher_logits.shape[0]
    if M < strategy.min_teachers:
        raise ValueError(f"{method} needs at least {strategy.min_teachers} teachers, got {M}")
    losses = torch.stack([kd_loss(student_logits, t, T, logit_stand) for t in teacher_logits])
    inputs = EnsembleInputs(
        teacher_logits=teacher_logits, labels=labels, student_logits=student_logits, losses=losses,
        gradients=lambda: torch.stack([kd_logit_grad(student_logits, t, T, logit_stand).mean(0)
                                       for t in teacher_logits]))
    return strategy.weights(inputs)
