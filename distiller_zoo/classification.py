"""Classification losses a network can be trained with (``train_teacher.py --loss``)."""
import torch.nn.functional as F

from .dirichlet import evidential_ce
from .EKD import EKD_PRIOR
from .registry import register_classification_loss


@register_classification_loss("ce")
def cross_entropy(logits, labels):
    """Plain softmax cross-entropy, per sample."""
    return F.cross_entropy(logits, labels, reduction="none")


@register_classification_loss("evidential")
def evidential_cross_entropy(logits, labels):
    """Evidential cross-entropy, per sample: ``psi(S) - psi(alpha_y)`` with ``alpha = exp(z) + c``,
    ``c = exp(-1.22)`` (the expected CE under the network's Dirichlet; the loss of EKD's teachers,
    Xiang et al., ICCV 2025, with their CIFAR prior, fixed here). Finite for any logits; the
    network predicts ``argmax z``. See ``distiller_zoo.dirichlet``."""
    return evidential_ce(logits, labels, EKD_PRIOR)
