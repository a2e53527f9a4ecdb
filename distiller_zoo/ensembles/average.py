"""AVERAGE_LOSS (AVER-MKD): every teacher's loss counts the same, ``w[m, i] = 1/M``."""
import torch

from ..base import EnsembleStrategy
from ..registry import register_ensemble


@register_ensemble("AVERAGE_LOSS")
class AverageLoss(EnsembleStrategy):
    def weights(self, inputs):
        M, B = inputs.losses.shape
        return torch.full((M, B), 1.0 / M, dtype=torch.float32, device=inputs.losses.device)
