"""CA-MKD's intermediate-layer loss, ``--distill inter`` (Zhang, Chen, Wang, "Confidence-Aware
Multi-Teacher Knowledge Distillation", ICASSP 2022).

The student's last feature map before pooling (``feats[-2]``) is resized to teacher m's map
(average pooling when larger, bilinear when smaller) and mapped to its channels by an ``Embed``
(``--convs``/``--factor``). The embedded map is compared with teacher m's ``feats[-2]`` by per-sample
mean squared error, and it is also classified by teacher m's own head (pool + classifier): those
logits are this term's confidence evidence, which CA-MKD turns into per-sample weights by their
cross-entropy with the label. Gradients flow through the (frozen) teacher head into the embedding
and the student; teacher parameters never change.

Unlike the reference, every teacher's embedding starts from the student's original map (the
reference resizes the map in place, so with teachers of different spatial sizes teacher m+1 sees
the map already resized for teacher m).
"""
from __future__ import annotations

from .argtypes import positive_int
from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import Embed, resize_to
from .registry import register_distiller


@register_distiller("inter")
class CAMKDIntermediate(Distiller):
    kind = "feature"
    default_weight = 50.0

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--factor", type=positive_int, default=2, help="CA-MKD --convs bottleneck factor")
        add_argument_once(parser, "--convs", action="store_true",
                          help="CA-MKD: bottleneck conv embedding instead of a 1x1 conv")

    def __init__(self, ctx):
        super().__init__(ctx)
        s_shape, t_shape = ctx.student_shapes[-2], ctx.teacher_shapes[-2]
        if len(s_shape) != 3 or len(t_shape) != 3:
            raise ValueError("--distill inter needs feature maps before pooling in student and teacher")
        self.t_size = tuple(t_shape[1:])
        self.embed = Embed(s_shape[0], t_shape[0], ctx.opt.factor, ctx.opt.convs)

    def forward(self, s, t, batch):
        if t.head is None:
            raise ValueError("--distill inter needs the teacher's classifier head")
        f_s = s.feats[-2]
        embedded = self.embed(resize_to(f_s, self.t_size))
        mse = (embedded - t.feats[-2].detach()).pow(2).flatten(1).mean(1)
        return TeacherLoss(mse, confidence_logits=t.head(embedded), anchor=f_s)
