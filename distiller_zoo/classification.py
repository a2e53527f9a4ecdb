"""Classification losses a network can be trained with (``train_teacher.py --loss``)."""
import torch.nn.functional as F

from .registry import register_classification_loss


@register_classification_loss("ce")
def cross_entropy(logits, labels):
    """Plain softmax cross-entropy, per sample."""
    return F.cross_entropy(logits, labels, reduction="none")
