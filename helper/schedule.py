"""Learning-rate schedules, per epoch, as RepDistiller applies them (epochs count from 1)."""
from __future__ import annotations

import math
from typing import Sequence


def step_lr(base_lr: float, epoch: int, decay_epochs: Sequence[int], decay_rate: float) -> float:
    """RepDistiller's step decay: multiply by ``decay_rate`` once for every milestone passed
    (epoch 151 is the first epoch at 0.1x with milestones 150,180,210)."""
    passed = sum(1 for milestone in decay_epochs if epoch > milestone)
    return base_lr * decay_rate ** passed


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from ``base_lr`` at epoch 1 towards 0 after the last epoch."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def lr_at(args, epoch: int) -> float:
    if getattr(args, "cosine", False):
        return cosine_lr(args.learning_rate, epoch, args.epochs)
    return step_lr(args.learning_rate, epoch, args.lr_decay_epochs, args.lr_decay_rate)


def set_lr(optimizer, lr: float):
    """Set every parameter group's lr; a device-tensor lr (``helper.cuda_graphs.DeviceLRSGD``) is
    filled in place, so a captured step reads the new value without re-capture."""
    for group in optimizer.param_groups:
        if hasattr(group["lr"], "fill_"):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
