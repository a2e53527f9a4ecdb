"""MLKD: "Multi-Level Logit Distillation" (Jin, Wang, Lin, CVPR 2023).

Every batch is seen in two views, the weak one (crop + flip, the loader's first view) and the
strong one (``views = ("strong",)``: crop + flip + RandAugment + Cutout, ``dataset.augment``'s
'strong'); the step trains the student's classifier on both (CE summed over the views) and hands
this loss the strong-view outputs in ``batch.view_outputs[0]``. Temperatures of the prediction
augmentation: ``T in (T0, 3, 5, 2, 6)`` with ``T0 = --kd_T`` (``--base-temp`` under
``--logit-stand``); ``p = softmax(z / T)``. What enters the loss is what the authors' code
(``KD_ours.forward_train``, the code behind the published numbers) adds up:

- instance level, weak view: ``T^2 * KL(p_t || p_s)`` per sample at the five temperatures, masked
  by the teacher-confidence mask;
- instance level, "strong" sum: the strong view at ``T0``, 3 and 5, and the *weak* view at 2 and 6
  (as the authors' code reads them), unmasked;
- batch level (input correlation), weak view only: the ``B x B`` Gram matrices ``G = p p^T``,
  ``||G_t - G_s||_F^2 / B``; sample i carries row i, ``sum_j (G_t - G_s)[i, j]^2``, so the batch mean
  is the batch-level loss; masked by the sample mask;
- class level (category correlation), weak view only: the ``C x C`` matrices ``M = p^T p``,
  ``||M_t - M_s||_F^2 / C`` over the columns the class mask keeps; a batch-level quantity, so every
  sample carries the batch value.

The authors' code computes strong-view batch- and class-level terms but never adds them to the
loss; an earlier version of this module added them, and with the strong instance term at T = 2, 6
reading strong logits it tripled the label-blind class-level pull: on digits (10 classes) the
student's cross-entropy rose above chance and MLKD did not train (issue 16). Loss weights: the
authors' CE 0.1 and KD 0.9 (mdistiller's ``CFG.KD.LOSS``, which MLKD's CIFAR-100 configs keep):
``configure`` sets ``-r 0.1 -a 0.9`` unless given; ``-a`` multiplies every term.

The correlation losses' size depends on batch and class count: with confident predictions the batch
level grows like ``B / C`` and the class level like ``(B / C)^2`` (``M``'s diagonal holds about
``B / C``), i.e. about 0.4 at CIFAR-100's B = 64, C = 100 and 100 times more with 10 classes at the
same batch.

Confidence masks, from the teacher's weak-view softmax at temperature 1 (raw logits), as the
reference defines them: a sample is kept when the teacher's top probability is at most the batch
median (``torch.quantile``, linear interpolation, as ``np.percentile``); a class is kept when its
probability summed over the batch is at most the median over classes.

How the masks act, ``--mlkd_mask`` (``MASKINGS``):

- ``paper`` (default; the paper's reading): the sample mask selects samples (masked per-sample
  losses, averaged over the whole batch) and the class mask selects columns of the
  class-correlation difference.
- ``reference`` (the authors' code, behind the published numbers): it multiplies an already
  batch-averaged loss by the mask and averages again (``(loss.mean() * mask).mean()``), so a mask
  only scales its term by the kept fraction: ``f = mean(mask)`` of the samples (about 1/2) for the
  weak instance and the batch level, ``f_c = mean(class_mask)`` of the classes for the class level.
  Per sample: sample ``i`` carries ``f * KD_i`` (instance) and ``f * row_i`` (batch level), and
  every sample the batch value ``f_c * ||M_t - M_s||_F^2 / C`` (class level), so each term's batch
  mean is the authors' value exactly (``tests/test_mlkd.py`` recomputes it their way).

The two differ most in the batch and class levels: the kept samples and classes (the least
confident ones) carry the smallest Gram entries, so selecting them leaves much less than scaling the
whole term by about 1/2. The factor grows with the teacher's confidence (synthetic 100-class
batches of 64: 1.5x to more than 50x for the batch and class levels, the instance level within
15%), so the correlation terms weigh far more under ``reference``.

``--logit-stand`` (Sun et al., CVPR 2024) standardizes the logits of the instance-level terms only,
as the authors' code does (the correlation terms use raw logits), and ``configure`` sets ``-a`` to
``--kd-weight`` and ``-r`` to 0.1 unless given (authors: 9 and 0.1). With several teachers, each
teacher's masks come from its own logits. For AEKD the gradient is taken at the weak-view student
logits (the term's anchor).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Configured, Distiller, TeacherLoss, add_argument_once
from .KD import as_float, kd_loss, kd_temperature, logit_stand_weights
from .registry import register_distiller

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
MLKD_CE_WEIGHT, MLKD_KD_WEIGHT = 0.1, 0.9      # the authors' CE and KD weights (mdistiller cfg)


def mlkd_temperatures(T0: float) -> tuple:
    """The prediction augmentation's temperatures: the configured one, then 3, 5, 2, 6."""
    return (float(T0),) + EXTRA_TEMPERATURES


def confidence_mask(t: Tensor) -> Tensor:
    """``[B]`` bool: the teacher's top softmax probability (temperature 1) is at most its median
    over the batch."""
    conf = F.softmax(as_float(t.detach()), dim=1).amax(dim=1)
    return conf <= torch.quantile(conf, 0.5)


def class_confidence_mask(t: Tensor) -> Tensor:
    """``[C]`` bool: the class's softmax probability summed over the batch (temperature 1) is at
    most its median over the classes."""
    conf = F.softmax(as_float(t.detach()), dim=1).sum(dim=0)
    return conf <= torch.quantile(conf, 0.5)


def _probabilities(s: Tensor, t: Tensor, T: float):
    return F.softmax(as_float(s) / T, dim=1), F.softmax(as_float(t.detach()) / T, dim=1)


def batch_correlation_loss(s: Tensor, t: Tensor, T: float) -> Tensor:
    """Per-sample ``[B]`` rows of the batch-level loss: ``sum_j (G_t - G_s)[i, j]^2`` with
    ``G = softmax(z/T) softmax(z/T)^T``; the batch mean is ``||G_t - G_s||_F^2 / B``.
    (Gram matrices in full precision, also under autocast.)"""
    p_s, p_t = _probabilities(s, t, T)
    with torch.autocast(p_s.device.type, enabled=False):
        return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum(dim=1)


def class_correlation_loss(s: Tensor, t: Tensor, T: float, class_mask: Optional[Tensor] = None) -> Tensor:
    """The class-level loss (a scalar): ``sum_ij (M_t - M_s)[i, j]^2 * mask[j] / C`` with
    ``M = softmax(z/T)^T softmax(z/T)``; no mask: ``||M_t - M_s||_F^2 / C``."""
    p_s, p_t = _probabilities(s, t, T)
    with torch.autocast(p_s.device.type, enabled=False):
        diff = (p_t.T @ p_t - p_s.T @ p_s).pow(2)
    if class_mask is not None:
        diff = diff * class_mask.to(diff.dtype)[None, :]
    return diff.sum() / s.shape[1]


STRONG_VIEW_TEMPERATURES = 3   # the "strong" instance sum reads the strong view at the first three


def paper_masking(mask: Tensor, class_mask: Tensor):
    """The paper's reading: ``(sample weights [B], class columns kept [C], class-term scale)``; the
    masks select samples and class columns."""
    return mask, class_mask, 1.0


def reference_masking(mask: Tensor, class_mask: Tensor):
    """The authors' code: each mask only scales its term by its kept fraction (0-dim tensors, no
    host read): every sample weighted ``mean(mask)``, no class column dropped, the class term times
    ``mean(class_mask)``."""
    return mask.mean(), None, class_mask.to(mask.dtype).mean()


MASKINGS = {"paper": paper_masking, "reference": reference_masking}


def mlkd_terms(s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor,
               temperatures: Sequence[float], logit_stand: bool = False,
               masking: str = "paper") -> Dict[str, Tensor]:
    """MLKD's three levels, each per sample ``[B]`` and summed over the temperatures (see the
    module docstring for the views, masks and choices): ``instance``, ``batch``, ``class``.
    ``masking``: how the confidence masks act, ``"paper"`` or ``"reference"`` (``MASKINGS``)."""
    mask = confidence_mask(t_weak).to(as_float(s_weak).dtype)
    sample_weight, class_columns, class_scale = MASKINGS[masking](mask, class_confidence_mask(t_weak))
    B = s_weak.shape[0]
    ins = bc = cc = 0
    for k, T in enumerate(temperatures):
        # the authors' "strong" instance sum: strong view at T0, 3, 5; weak view (unmasked) at 2, 6
        s_v, t_v = (s_strong, t_strong) if k < STRONG_VIEW_TEMPERATURES else (s_weak, t_weak)
        ins = ins + sample_weight * kd_loss(s_weak, t_weak, T, logit_stand) + kd_loss(s_v, t_v, T, logit_stand)
        bc = bc + sample_weight * batch_correlation_loss(s_weak, t_weak, T)
        cc = cc + class_scale * class_correlation_loss(s_weak, t_weak, T, class_columns)
    return {"instance": ins, "batch": bc, "class": cc.expand(B)}


def mlkd_loss(s_weak: Tensor, t_weak: Tensor, s_strong: Tensor, t_strong: Tensor, T: float = 4.0,
              logit_stand: bool = False, masking: str = "paper") -> Tensor:
    """Per-sample MLKD loss ``[B]`` (instance + batch + class levels at temperatures T, 3, 5, 2, 6);
    the batch mean is the loss (unweighted: the reference's KD weight is ``-a``)."""
    terms = mlkd_terms(s_weak, t_weak, s_strong, t_strong, mlkd_temperatures(T), logit_stand, masking)
    return terms["instance"] + terms["batch"] + terms["class"]


@register_distiller("mlkd")
class MLKD(Distiller):
    kind = "logit"
    views = ("strong",)

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--mlkd_mask", type=str, default="paper", choices=tuple(MASKINGS),
                          help="MLKD confidence masks: select samples and class columns (paper, default) or "
                               "scale each masked term by its kept fraction (reference: the authors' code, "
                               "behind the published numbers)")

    @classmethod
    def configure(cls, opts, given):
        if opts.logit_stand:
            return logit_stand_weights(opts, given, "MLKD")
        changes = {flag: value for flag, value in (("gamma", MLKD_CE_WEIGHT), ("alpha", MLKD_KD_WEIGHT))
                   if flag not in given}
        said = [f"{'-r' if flag == 'gamma' else '-a'} {value}" for flag, value in changes.items()]
        return Configured(changes, [f"MLKD: the authors' weights {', '.join(said)} (CE 0.1, KD 0.9)"] if said else [])

    def __init__(self, ctx):
        super().__init__(ctx)
        self.logit_stand = bool(ctx.opt.logit_stand)
        self.temperatures = mlkd_temperatures(kd_temperature(ctx.opt))
        self.masking = ctx.opt.mlkd_mask

    def forward(self, s, t, batch):
        if not batch.view_outputs:
            raise ValueError("mlkd needs the strong view's outputs (batch.view_outputs is empty; "
                             "the loader must serve the views ('standard', 'strong'))")
        s_strong, t_strongs = batch.view_outputs[0]
        t_strong = t_strongs[self.teacher_index]
        terms = mlkd_terms(s.logits, t.logits, s_strong.logits, t_strong.logits, self.temperatures,
                           self.logit_stand, self.masking)
        loss = terms["instance"] + terms["batch"] + terms["class"]
        metrics = {name: value.detach().mean() for name, value in terms.items()}
        return TeacherLoss(loss, anchor=s.logits, metrics=metrics)
