"""CA-MKD: confidence-aware weights (Zhang, Chen, Wang, "Confidence-Aware Multi-Teacher Knowledge
Distillation", ICASSP 2022).

Per sample, each teacher's cross-entropy with the true label measures its confidence;
``w[m, i] = (1 - softmax_m(CE[:, i])[m]) / ((M - 1) * M)``, so a sample's weights sum to 1/M (the
reference's ``/(M-1)`` and its division of the loss sum by ``B*M`` are both inside ``w``).
For the logit (KD) term the CE is that of the teacher's own logits (raw, also under
``--logit-stand``). For a term that brings its own evidence (``--distill inter``: the student's
feature embedded for teacher m and classified by teacher m's head) the CE is that of the evidence.
Needs at least two teachers: with one, ``M - 1 = 0``.
"""
import torch.nn.functional as F

from ..base import EnsembleStrategy
from ..registry import register_ensemble


def confidence_weights(logits, labels):
    """``[M, B]`` CA-MKD weights from logits ``[M, B, C]``."""
    M, B, C = logits.shape
    ce = F.cross_entropy(logits.float().reshape(M * B, C), labels.repeat(M), reduction="none").view(M, B)
    return (1.0 - F.softmax(ce, dim=0)) / ((M - 1) * M)


@register_ensemble("CAMKD")
class ConfidenceAware(EnsembleStrategy):
    min_teachers = 2

    def weights(self, inputs):
        evidence = inputs.confidence_logits if inputs.confidence_logits is not None else inputs.teacher_logits
        return confidence_weights(evidence, inputs.labels)
