"""What the loop trains: a ``Task`` says what one training step computes (plain classification for
a teacher, the distillation objective for a student, ``helper.student_step``); the trainer
(``helper.trainer``) does everything around it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict

import torch.nn as nn
from torch import Tensor

from .distributed import wrap
from .execution import maybe_compile


@dataclass
class StepOutput:
    loss: Tensor                    # the scalar that is back-propagated
    logits: Tensor                  # the trained network's logits, for training accuracy
    labels: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)   # extra scalars, averaged per epoch
    # losses of modules that have their own optimiser (the spot-adaptive policy), by name
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)
    # each term's teachers' shares of its ensemble weight in this step ([M], summing to 1), by term
    shares: Dict[str, Tensor] = field(default_factory=dict)


def backward_and_step(loss: Tensor, optimizer, scaler=None):
    """``loss.backward()`` and ``optimizer.step()``, through the gradient scaler when there is one."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


class Task:
    """What the loop trains. ``train_step`` is the step; the rest has sensible defaults.

    ``capturable`` / ``not_capturable_because``: whether ``--cuda_graphs capture`` may capture the
    step (``helper.cuda_graphs``)."""

    model: nn.Module                # the network that is evaluated and saved as 'model'
    capturable: bool = True
    not_capturable_because: str = ""

    def distribute(self, dist_ctx, device, sync_bn: bool = False):
        """Wrap what the step runs in DistributedDataParallel (``helper.distributed``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support distributed training")

    def compile(self, log, mode=None):
        """``--compile`` (``mode`` None) or ``--cuda_graphs compile`` (``mode="reduce-overhead"``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be compiled")

    def trainable(self) -> nn.Module:
        """Everything the optimiser updates (the model, plus connectors for a student)."""
        return self.model

    def train_mode(self):
        self.trainable().train()

    def epoch_begin(self, epoch: int, epochs: int):
        pass

    def step_objects(self):
        """The objects whose ``capturable`` decides whether the step can be captured."""
        return [self]

    def train_step(self, batch, epoch: int, optimizer, scaler=None,
                   autocast=contextlib.nullcontext()) -> StepOutput:
        raise NotImplementedError

    def extra_state(self) -> Dict[str, Any]:
        return {}

    def load_extra_state(self, state: Dict[str, Any]):
        pass


class ClassifierTask(Task):
    """Train one network with a classification loss ``criterion(logits, labels) -> scalar``."""

    def __init__(self, model: nn.Module, criterion=None):
        self.model = model
        self.net = model            # what the step calls: the model, or its DDP / compiled wrapper
        self.criterion = criterion or nn.CrossEntropyLoss()

    def distribute(self, dist_ctx, device, sync_bn=False):
        self.net = wrap(self.model, dist_ctx, device, sync_bn)
        self.model = getattr(self.net, "module", self.model)     # SyncBatchNorm converts the model

    def compile(self, log, mode=None):
        self.net = maybe_compile(self.net, log, "the model", **({"mode": mode} if mode else {}))

    def train_step(self, batch, epoch, optimizer, scaler=None, autocast=contextlib.nullcontext()) -> StepOutput:
        """The forward under ``autocast``, the loss, backward, the optimiser's step."""
        images, labels = batch[0], batch[1]
        with autocast:
            logits = self.net(images)
            out = StepOutput(self.criterion(logits, labels), logits, labels)
        optimizer.zero_grad(set_to_none=True)
        backward_and_step(out.loss, optimizer, scaler)
        return out
