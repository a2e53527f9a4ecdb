"""Factor Transfer, ``--distill factor`` (Kim, Park, Kwak, "Paraphrasing Complex Network: Network
Compression via Factor Transfer", NeurIPS 2018).

A paraphraser (a convolutional autoencoder on the teacher's last feature map) is first trained to
reconstruct that map; its encoder output is the teacher's "factor". The student gets a translator
(three conv -> BN -> LeakyReLU(0.1) layers) that maps its last feature map to a factor of the same
size. With ``phi(f) = l2_normalise(mean_c f^2)`` (a ``[B, H*W]`` vector per sample) the loss is the
L1 distance of the paper (``p = 1``)::

    L = mean_{h,w} | phi(translator(s)) - phi(paraphraser.encode(t)) |

Weight: ``-b 200`` (RepDistiller's script).

Features: ``feats[-2]`` of student and teacher, the last stage output before pooling (post-ReLU).
The factors have ``int(0.5 * C_t)`` channels (paraphrase rate k = 0.5); when the student's and the
teacher's maps differ in size, the larger factor is average-pooled to the smaller (RepDistiller).

Two phases, as in the paper and RepDistiller:
- init stage (``--init_epochs``, 30 by default): the paraphraser alone is trained to reconstruct the
  teacher's ``feats[-2]`` (mean squared error), with SGD at lr 0.01 for CIFAR ResNet/WRN students
  (RepDistiller's special case for ``factor``) and ``--learning_rate`` otherwise;
- main phase: the paraphraser is frozen (its encoder runs without autograd, so it never gets a
  gradient, and weight decay does not touch it); the translator trains with the student.

Per sample: the mean over ``H*W`` of the absolute factor difference; the batch mean is
RepDistiller's ``FactorTransfer()(translator(f_s), paraphraser(f_t, is_factor=True))``.

Deliberate differences from RepDistiller:
- The init-stage learning rate rule is by model family (``resnet`` and ``wrn`` in
  ``models.registry.model_cfg``: exactly RepDistiller's list of names for the current zoo).
- Pooling to the smaller factor uses its actual ``(H, W)`` (same for square maps).
- The factors' normalisation and the L1 distance are computed in float32 with autocast off.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Distiller, TeacherLoss
from .connectors import full_precision, no_autocast
from .registry import register_distiller
from .VID import match_spatial

RATE = 0.5                   # paraphrase rate k: factor channels = int(k * C_t)
INIT_LR_FAMILIES = ("resnet", "wrn")
INIT_LR = 0.01


def _conv_stack(convs, channels, use_bn):
    layers = []
    for conv, c in zip(convs, channels):
        layers += [conv, nn.BatchNorm2d(c) if use_bn else nn.Identity(), nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's paraphraser: conv encoder ``C -> C -> kC -> kC`` and transposed-conv decoder back to C,
    3x3 kernels, LeakyReLU(0.1), no BN (RepDistiller's configuration)."""

    def __init__(self, t_channels, rate=RATE, use_bn=False):
        super().__init__()
        c, k = t_channels, int(t_channels * rate)
        self.encoder = _conv_stack([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                                   [c, k, k], use_bn)
        self.decoder = _conv_stack([nn.ConvTranspose2d(k, k, 3, 1, 1), nn.ConvTranspose2d(k, c, 3, 1, 1),
                                    nn.ConvTranspose2d(c, c, 3, 1, 1)], [k, c, c], use_bn)

    def forward(self, x):
        """``(factor, reconstruction)``."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's translator: ``C_s -> C_s -> kC_t -> kC_t``, 3x3 conv -> BN -> LeakyReLU(0.1)."""

    def __init__(self, s_channels, t_channels, rate=RATE, use_bn=True):
        super().__init__()
        c, k = s_channels, int(t_channels * rate)
        self.encoder = _conv_stack([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                                   [c, k, k], use_bn)

    def forward(self, x):
        return self.encoder(x)


def factor_vector(f, p=2):
    """``l2_normalise(mean_c f^p)`` flattened to ``[B, H*W]``."""
    return F.normalize(f.pow(p).mean(1).flatten(1))


@register_distiller("factor")
class FactorTransfer(Distiller):
    kind = "feature"
    default_weight = 200.0

    def __init__(self, ctx):
        super().__init__(ctx)
        s_shape, t_shape = ctx.student_shapes[-2], ctx.teacher_shapes[-2]
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError("factor needs feature maps (C, H, W) at feats[-2] of both networks")
        if int(t_shape[0] * RATE) < 1:
            raise ValueError(f"factor: the teacher's feats[-2] has {t_shape[0]} channel(s), too few to paraphrase")
        self.paraphraser = Paraphraser(t_shape[0])
        self.translator = Translator(s_shape[0], t_shape[0])

    def teacher_factor(self, f_t):
        with torch.no_grad():                      # frozen after the init stage
            return self.paraphraser.encoder(f_t.detach())

    def forward(self, s, t, batch):
        f_s = s.feats[-2]
        factor_s, factor_t = match_spatial(self.translator(f_s), self.teacher_factor(t.feats[-2]))
        with no_autocast(factor_s):
            diff = factor_vector(full_precision(factor_s)) - factor_vector(full_precision(factor_t))
            return TeacherLoss(diff.abs().mean(1), anchor=f_s)

    # -- init stage: the paraphraser reconstructs the teacher's map -----------------------------
    def init_stage_modules(self, student):
        return [self.paraphraser]

    def init_stage_loss(self, s, t, batch):
        f_t = t.feats[-2].detach()
        _, rec = self.paraphraser(f_t)
        return F.mse_loss(full_precision(rec), full_precision(f_t))

    def init_stage_lr(self, opt, student):
        from models.registry import model_cfg
        cfg = model_cfg.get(getattr(student, "arch", ""))
        if cfg is not None and cfg.family in INIT_LR_FAMILIES and getattr(student, "input_size", 32) < 128:
            return INIT_LR
        return opt.learning_rate
