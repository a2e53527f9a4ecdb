"""Learning-rate schedules, per epoch, as RepDistiller applies them (epochs count from 1), the
warm-up and cosine floor of the vision-transformer recipe, and the optimiser."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn as nn

WARMUP_FACTOR = 1e-3     # tiny-transformers' OPTIM.WARMUP_FACTOR: warm-up starts at 0.001 x lr


def step_lr(base_lr: float, epoch: int, decay_epochs: Sequence[int], decay_rate: float) -> float:
    """RepDistiller's step decay: multiply by ``decay_rate`` once for every milestone passed
    (epoch 151 is the first epoch at 0.1x with milestones 150,180,210)."""
    passed = sum(1 for milestone in decay_epochs if epoch > milestone)
    return base_lr * decay_rate ** passed


def cosine_lr(base_lr: float, epoch: int, epochs: int, min_lr: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` at epoch 1 towards ``min_lr`` after the last epoch."""
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def warmup_lr(base_lr: float, epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up from ``WARMUP_FACTOR * base_lr`` at epoch 1, one step per epoch, reaching
    ``base_lr`` at epoch ``warmup_epochs + 1`` (timm's ``CosineLRScheduler`` with ``warmup_t``,
    which tiny-transformers uses; after the warm-up the cosine continues at its own epoch, it is
    not shifted)."""
    start = WARMUP_FACTOR * base_lr
    return start + (epoch - 1) * (base_lr - start) / warmup_epochs


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate schedule's settings (``--learning_rate``, ``--warmup_epochs``, ``--cosine``,
    ``--min_lr``, ``--lr_decay_epochs``, ``--lr_decay_rate`` over ``--epochs``)."""
    learning_rate: float
    epochs: int
    warmup_epochs: int = 0
    cosine: bool = False
    min_lr: float = 0.0
    lr_decay_epochs: Tuple[int, ...] = ()
    lr_decay_rate: float = 0.1

    @classmethod
    def of(cls, config) -> "LRSchedule":
        return cls(config.learning_rate, config.epochs, config.warmup_epochs, config.cosine, config.min_lr,
                   tuple(config.lr_decay_epochs), config.lr_decay_rate)


def lr_at(schedule, epoch: int) -> float:
    """The learning rate of ``epoch`` (from 1) under ``schedule`` (an ``LRSchedule`` or a run
    configuration, which has the same settings)."""
    if epoch - 1 < schedule.warmup_epochs:
        return warmup_lr(schedule.learning_rate, epoch, schedule.warmup_epochs)
    if schedule.cosine:
        return cosine_lr(schedule.learning_rate, epoch, schedule.epochs, schedule.min_lr)
    return step_lr(schedule.learning_rate, epoch, schedule.lr_decay_epochs, schedule.lr_decay_rate)


def set_lr(optimizer, lr: float):
    """Set every parameter group's lr; a device-tensor lr (``helper.cuda_graphs.DeviceLRSGD``) is
    filled in place, so a captured step reads the new value without re-capture."""
    for group in optimizer.param_groups:
        if hasattr(group["lr"], "fill_"):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


NO_DECAY_NAMES = ("cls_token", "pos_embed", "distill_token")


def decay_groups(module: nn.Module, weight_decay: float):
    """tiny-transformers' (and DeiT's) split: biases, 1-D parameters (norms) and the token / position
    embeddings get no weight decay; every other trainable parameter gets ``weight_decay``."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() <= 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(module: nn.Module, config) -> torch.optim.Optimizer:
    """``--optimizer sgd``: RepDistiller's SGD (momentum, nesterov, every parameter decayed);
    ``adamw``: AdamW with the no-decay split above (betas 0.9, 0.999)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(module, config.weight_decay), lr=config.learning_rate)
    return torch.optim.SGD(module.parameters(), lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)
