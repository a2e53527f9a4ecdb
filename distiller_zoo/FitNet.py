"""FitNet hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The student's feature at ``--hint_layer`` (default 2, i.e. the output of stage 2 as RepDistiller
counts features) goes through a ``ConvReg`` regressor, one per teacher, and is compared with the
teacher's feature at the same index by mean squared error. Per sample: the mean over (C, H, W);
the batch mean is RepDistiller's ``HintLoss`` (``nn.MSELoss()``). RepDistiller's weight: ``-b 100``.
"""
from __future__ import annotations

from .argtypes import integer
from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import ConvReg
from .registry import register_distiller


@register_distiller("hint")
class FitNet(Distiller):
    kind = "feature"
    default_weight = 100.0

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--hint_layer", type=integer, default=2,
                          help="feature index for FitNet hints (RepDistiller: 2; negative counts from the end)")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.layer = ctx.opt.hint_layer
        n = min(len(ctx.student_shapes), len(ctx.teacher_shapes))
        if not -n <= self.layer < n or len(ctx.student_shapes[self.layer]) != 3:
            raise ValueError(f"--hint_layer {self.layer} is not a feature map of both networks")
        self.regressor = ConvReg(ctx.student_shapes[self.layer], ctx.teacher_shapes[self.layer])

    def forward(self, s, t, batch):
        f_s = s.feats[self.layer]
        diff = self.regressor(f_s) - t.feats[self.layer].detach()
        return TeacherLoss(diff.pow(2).flatten(1).mean(1), anchor=f_s)
