"""The public face of the ensemble strategies, for people who bring their own training loop.

    from distiller_zoo import ensemble_weights
    w = ensemble_weights("CAMKD", teacher_logits, labels, student_logits)   # [M, B]
    loss = (w * per_sample_losses).sum() / B

The weights are normalised so that the ensemble loss is ``(1/B) sum_i sum_m w[m,i] * loss[m,i]``:
CAMKD's and EBKD's include the reference scripts' division by M, AEKD's are equal over samples
and sum to 1 over teachers, AVERAGE_LOSS's are 1/M.
"""
from __future__ import annotations

import argparse

import torch

from .base import EnsembleInputs
from .KD import kd_logit_grad, kd_loss
from .registry import ENSEMBLES


def get_strategy(method: str, opt=None):
    if method not in ENSEMBLES:
        raise ValueError(f"unknown ensemble method {method!r}; expected one of: {', '.join(sorted(ENSEMBLES))}")
    return ENSEMBLES[method](opt)


@torch.no_grad()
def ensemble_weights(method, teacher_logits, labels, student_logits, T=4.0, C=0.6, svm_norm=False,
                     logit_stand=False):
    """Per-teacher, per-sample weights ``[M, B]`` of a strategy for the KD loss at temperature T.

    ``teacher_logits`` ``[M, B, C]``, ``labels`` ``[B]``, ``student_logits`` ``[B, C]``.
    ``logit_stand``: the KD losses (and AEKD's gradients) are those of standardized logits, as
    under ``--logit-stand``; EBKD's entropies and CAMKD's cross-entropies always read raw logits."""
    teacher_logits = torch.as_tensor(teacher_logits)
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be [M, B, C], got shape {tuple(teacher_logits.shape)}")
    strategy = get_strategy(method, argparse.Namespace(C=C, svm_norm=svm_norm, kd_T=T))
    M = teacher_logits.shape[0]
    if M < strategy.min_teachers:
        raise ValueError(f"{method} needs at least {strategy.min_teachers} teachers, got {M}")
    losses = torch.stack([kd_loss(student_logits, t, T, logit_stand) for t in teacher_logits])
    inputs = EnsembleInputs(
        teacher_logits=teacher_logits, labels=labels, student_logits=student_logits, losses=losses,
        gradients=lambda: torch.stack([kd_logit_grad(student_logits, t, T, logit_stand).mean(0)
                                       for t in teacher_logits]))
    return strategy.weights(inputs)
