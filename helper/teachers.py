"""The frozen teachers of a distillation run: loaded once, evaluated once per batch.

Teachers are in eval mode with ``requires_grad=False`` and run under ``torch.no_grad()``.
(Not ``inference_mode``: its tensors may not be saved for backward, and losses such as CA-MKD's
pass student tensors through a teacher's head, which needs the teacher's features in autograd.)
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

from distiller_zoo.base import NetOutput


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherEnsemble:
    """M frozen teachers; ``outputs(images, preact)`` gives one ``NetOutput`` per teacher."""

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str]):
        self.models: List[nn.Module] = [freeze(m) for m in models]
        self.names = list(names)

    def __len__(self):
        return len(self.models)

    def to(self, device):
        self.models = [m.to(device) for m in self.models]
        return self

    def eval(self):
        for m in self.models:
            m.eval()

    @torch.no_grad()
    def outputs(self, images, preact: bool = False) -> List[NetOutput]:
        outs = []
        for model in self.models:
            feats, logits = model(images, is_feat=True, preact=preact)
            outs.append(NetOutput(feats=feats, logits=logits, head=model.head, model=model))
        return outs
