"""The contracts that let every ensemble strategy work with every distillation loss.

- A ``Distiller`` is one loss between the student and ONE teacher. It is built once per teacher
  from the actual feature shapes (``BuildContext``), owns its trainable connectors, and returns a
  ``TeacherLoss`` whose ``per_sample`` loss has shape ``[B]`` and whose batch mean is the method's
  usual batch loss.
- An ``EnsembleStrategy`` turns what it needs (teacher logits, labels, student logits, a term's
  evidence) into weights ``[M, B]`` with no gradient. A term's loss is
  ``(1/B) * sum_i sum_m w[m, i] * loss[m, i]``.

Neither knows the other; ``helper/distill.py`` puts them together.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor


@dataclass
class NetOutput:
    """One network's outputs on one batch."""
    feats: List[Tensor]                      # stage features, then the pooled vector
    logits: Tensor                           # [B, C]
    head: Optional[Callable[[Tensor], Tensor]] = None   # the network's classifier on a last-stage map
    model: Optional[nn.Module] = None        # the network itself (grafting, stage slices)


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    index: Optional[Tensor] = None           # sample indices (contrastive losses)
    epoch: int = 1
    # Outputs on the extra augmented views a loss asked for (``Distiller.views``), in that order:
    # one (student output, [teacher outputs]) pair per view.
    view_outputs: List[Tuple["NetOutput", List["NetOutput"]]] = field(default_factory=list)


@dataclass
class BuildContext:
    """What a distiller may look at when it builds its connectors."""
    opt: argparse.Namespace                  # resolved command-line options
    student_shapes: List[Tuple[int, ...]]    # feature shapes without batch (dry forward)
    teacher_shapes: List[Tuple[int, ...]]
    num_classes: int
    num_data: int = 0                        # training-set size (memory banks)
    train_labels: Optional[Tensor] = None    # labels of the training set by index (negative sampling)
    teacher_index: int = 0
    num_teachers: int = 1
    student: Optional[nn.Module] = None
    teacher: Optional[nn.Module] = None
    shared: dict = field(default_factory=dict)  # one dict per term: objects its distillers share


@dataclass
class TeacherLoss:
    """A distiller's result for one teacher (a ``DistillTerm`` combines one per teacher)."""
    per_sample: Tensor                                   # [B]
    confidence_logits: Optional[Tensor] = None           # [B, C]: CA-MKD weighs by their CE
    anchor: Optional[Tensor] = None                      # the student tensor the loss reads
    anchor_grad: Optional[Tensor] = None                 # closed-form d(mean loss)/d(anchor)
    per_layer: Optional[Tensor] = None                   # [L, B] for multi-layer losses (routing)
    metrics: dict = field(default_factory=dict)




@dataclass(frozen=True)
class Configured:
    """What a loss's ``configure`` hook decides before the run is built: the settings it changes
    (flag name -> value) and the notes the log prints. The hook returns it; the run's resolution
    (``helper.objective.resolve_objective``) applies it, so the hook never writes to the options."""
    changes: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def add_argument_once(parser: argparse.ArgumentParser, *flags, **kwargs):
    """Several distillers may share a flag (``--feat_dim``); the first registration wins."""
    existing = {s for action in parser._actions for s in action.option_strings}
    if not any(flag in existing for flag in flags):
        parser.add_argument(*flags, **kwargs)


class Distiller(nn.Module):
    """Base class of every ``--distill`` loss (mdistiller's ``Distiller`` idea, per teacher).

    Class attributes a subclass sets:
      ``kind``: "logit" losses take the ``-a`` slot in place of KD (kd, dkd, ...); "feature"
      losses take the ``-b`` slot next to KD (hint, attention, ...).
      ``default_weight``: the method's usual ``-b`` (RepDistiller's scripts), used when ``-b`` is
      not given.
      ``needs_preact``: the student's and teachers' features are taken before the last ReLU.
      ``needs_index``: the loader must yield sample indices.
    """

    name: str = ""
    kind: str = "feature"
    default_weight: Optional[float] = None
    needs_preact: bool = False
    needs_index: bool = False
    views: Tuple[str, ...] = ()              # extra augmentations (dataset.augment names), e.g. MLKD
    # --cuda_graphs capture (helper/cuda_graphs.py): False, with the reason, for a loss whose step has
    # data-dependent shapes or reads the host; the run then steps eagerly and says why
    capturable: bool = True
    not_capturable_because: str = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        """Add the flags this loss owns (use ``add_argument_once``)."""

    @classmethod
    def configure(cls, opts, given: set) -> Configured:
        """Defaults that depend on other flags, decided before the run is built: returns the
        settings to change and notes for the log (``Configured``); ``opts`` is read-only.

        Called once during the run's resolution for each loss class that makes one of the run's
        terms (the ``--distill`` class, and KD next to a feature loss), in the terms' order (each
        hook sees the changes of the hooks before it), before unset loss weights are filled.
        ``given`` is the set of loss-weight flags the user typed (``"gamma"``, ``"alpha"``,
        ``"beta"`` for ``-r``/``-a``/``-b``); a hook must not override those. Example: under
        ``--logit-stand`` KD sets ``-a`` to ``--kd-weight`` and ``-r`` to 0.1 unless given."""
        return Configured()

    def __init__(self, ctx: BuildContext):
        super().__init__()
        self.teacher_index = ctx.teacher_index

    def forward(self, s: NetOutput, t: NetOutput, batch: Batch) -> TeacherLoss:
        raise NotImplementedError

    def epoch_begin(self, epoch: int, epochs: int):
        """Called before every epoch (warm-up ramps, curricula)."""

    # -- optional connector pre-training (RepDistiller's ``--init_epochs`` for FT, AB, FSP) -----
    def init_stage_modules(self, student: nn.Module) -> Optional[List[nn.Module]]:
        """Modules trained by ``init_stage_loss`` before distillation starts, or None (no stage)."""
        return None

    def init_stage_loss(self, s: "NetOutput", t: "NetOutput", batch: "Batch") -> Tensor:
        raise NotImplementedError

    def init_stage_lr(self, opt: argparse.Namespace, student: nn.Module) -> float:
        return opt.learning_rate


@dataclass
class EnsembleInputs:
    """Everything an ensemble strategy may use; all tensors detached."""
    teacher_logits: Tensor                   # [M, B, C]
    labels: Tensor                           # [B]
    student_logits: Tensor                   # [B, C]
    losses: Tensor                           # [M, B] this term's per-sample losses
    confidence_logits: Optional[Tensor] = None   # [M, B, C], a term's own confidence evidence
    gradients: Optional[Callable[[], Tensor]] = None   # -> [M, D]: batch-mean gradient of each
                                                         # teacher's loss w.r.t. the student anchor
    is_logit_term: bool = True


class EnsembleStrategy:
    """Base class of every ``--ensemble_method``: ``weights(inputs) -> [M, B]``, no gradient."""

    name: str = ""
    min_teachers: int = 1
    capturable: bool = True                  # see Distiller.capturable
    not_capturable_because: str = ""
    # True for a strategy whose weights are computed on the host from device results (AEKD
    # --aekd_solver libsvm): every step synchronises, by design, so tests/sync_guard does not apply
    host_sync: bool = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        """Add the flags this strategy owns (use ``add_argument_once``)."""

    def __init__(self, opt: argparse.Namespace):
        self.opt = opt              # the run's options (``default_options()`` outside a run)

    def weights(self, inputs: EnsembleInputs) -> Tensor:
        raise NotImplementedError

    # -- state that outlives a step (e.g. running statistics of the teachers) ------------------
    def epoch_begin(self, epoch: int, epochs: int):
        """Called before every epoch, as ``Distiller.epoch_begin``."""

    def state_dict(self) -> dict:
        """Everything a strategy keeps between steps (tensors or plain values): saved in the
        checkpoint's ``extra`` and restored by ``--resume``. The built-in strategies keep none."""
        return {}

    def load_state_dict(self, state: dict):
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

    def pooled_teacher(self, teachers: List["NetOutput"], batch: "Batch", kind: str) -> Optional["NetOutput"]:
        """A strategy that fuses its teachers into ONE target (e.g. pooled Dirichlet evidence)
        returns that virtual teacher's output for a term of this ``kind`` ("logit"/"feature");
        the term then evaluates its first distiller against it alone, with weight 1. Default:
        None, every teacher is distilled and weighted."""
        return None


def combine(weights: Tensor, losses: Tensor) -> Tensor:
    """The ensemble loss ``(1/B) sum_i sum_m w[m,i] * loss[m,i]``."""
    return (weights * losses).sum() / losses.shape[1]

