"""EBKD: entropy-based weights (Kwon, Na, Park, Kim, "Adaptive Knowledge Distillation Based on
Entropy", ICASSP 2020), as the CA-MKD reference scripts apply them.

``H[m, i]`` is the entropy of ``softmax(t[m, i])`` at temperature 1 (the raw teacher logits, also
under ``--logit-stand``), and ``w[m, i] = (1 - H[m, i] / sum_m' H[m', i]) / M``: a confident teacher
weighs more; a sample's weights sum to ``(M - 1) / M`` (the reference's division by M included).
"""
import torch.nn.functional as F

from ..base import EnsembleStrategy
from ..registry import register_ensemble


def teacher_entropy(teacher_logits):
    """``[M, B]`` entropies of the teachers' predictions (natural log, temperature 1)."""
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@register_ensemble("EBKD")
class EntropyWeights(EnsembleStrategy):
    min_teachers = 1

    def weights(self, inputs):
        H = teacher_entropy(inputs.teacher_logits)
        M = H.shape[0]
        return (1.0 - H / H.sum(0, keepdim=True).clamp_min(1e-12)) / M
