"""The frozen teachers of a distillation run: loaded once, evaluated once per batch.

Teachers are in eval mode with ``requires_grad=False`` and run under ``torch.no_grad()``.
(Not ``inference_mode``: its tensors may not be saved for backward, and losses such as CA-MKD's
pass student tensors through a teacher's head, which needs the teacher's features in autograd.)

Teachers of the same architecture can run as ONE batched forward: their parameters and buffers
are stacked and the network is applied with ``torch.func.vmap`` over the stack, so M resnet32x4
teachers cost one launch sequence instead of M (``fuse=True``; the default fuses on CUDA only,
where it pays: on a CPU the batched convolutions are no faster). The outputs equal separate
forwards up to floating-point summation order (tested to 1e-5).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from distiller_zoo.base import NetOutput

from .execution import maybe_compile


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _FusedGroup:
    """Teachers of one architecture, evaluated together with vmap over stacked weights."""

    def __init__(self, models: Sequence[nn.Module]):
        from torch.func import stack_module_state
        self.models = list(models)
        self.params, self.buffers = stack_module_state(self.models)
        self.base = models[0]       # called functionally: its own tensors are swapped for the stack

    def to(self, device):
        # Plain (not channels_last) strides: under vmap, adaptive_avg_pool2d of a channels_last
        # map has no batching rule (aten::as_strided_) and falls back to a slow per-teacher loop.
        # clone(), not .contiguous(): a 1x1 kernel in channels_last also passes as "contiguous".
        plain = torch.contiguous_format
        self.params = {k: v.to(device).clone(memory_format=plain) for k, v in self.params.items()}
        self.buffers = {k: v.to(device).clone(memory_format=plain) for k, v in self.buffers.items()}
        return self

    def forward(self, images, preact: bool):
        from torch.func import functional_call, vmap
        images = images.contiguous()          # see to(): no channels_last inside vmap

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,), {"is_feat": True, "preact": preact})
        feats, logits = vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, images)
        return [([f[k] for f in feats], logits[k]) for k in range(len(self.models))]


class TeacherEnsemble:
    """M frozen teachers; ``outputs(images, preact)`` gives one ``NetOutput`` per teacher."""

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str], fuse: Optional[bool] = None):
        self.models: List[nn.Module] = [freeze(m) for m in models]
        self.names = list(names)
        self.fuse_requested = fuse
        self._groups: Optional[List[List[int]]] = None
        self._fused: Dict[int, _FusedGroup] = {}
        self._compile_log = None              # set by compile(): every forward, fused or not, compiled
        self._forward = list(self.models)     # what runs a teacher: the model or its compiled form

    def compile(self, log):
        """Run every teacher's forward (and every fused group's) through ``torch.compile``; stays in
        force after ``to()``."""
        self._compile_log = log
        self._fused = {}
        self._forward = self._forwards()

    def _forwards(self):
        if self._compile_log is None:
            return list(self.models)
        return [maybe_compile(m, self._compile_log, f"teacher {n}") for m, n in zip(self.models, self.names)]

    def __len__(self):
        return len(self.models)

    def to(self, device=None, memory_format=None):
        self.models = [m.to(device=device, memory_format=memory_format) if memory_format is not None
                       else m.to(device) for m in self.models]
        self._fused = {}
        self._forward = self._forwards()
        return self

    def eval(self):
        for m in self.models:
            m.eval()

    def groups(self) -> List[List[int]]:
        """Indices of teachers that share an architecture (same class and parameter shapes)."""
        if self._groups is None:
            keyed: "OrderedDict[tuple, List[int]]" = OrderedDict()
            for i, m in enumerate(self.models):
                key = (type(m), tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()))
                keyed.setdefault(key, []).append(i)
            self._groups = list(keyed.values())
        return self._groups

    def fusing(self, device) -> bool:
        if self.fuse_requested is not None:
            return self.fuse_requested
        return torch.device(device).type == "cuda"

    @torch.no_grad()
    def outputs(self, images, preact: bool = False) -> List[Optional[NetOutput]]:
        outs: List[Optional[NetOutput]] = [None] * len(self.models)
        fuse = self.fusing(images.device)
        for group in self.groups():
            if fuse and len(group) > 1:
                key = group[0]
                if key not in self._fused:
                    fused = _FusedGroup([self.models[i] for i in group]).to(images.device)
                    if self._compile_log is not None:
                        fused.forward = maybe_compile(fused.forward, self._compile_log,
                                                      f"teachers {', '.join(self.names[i] for i in group)} (fused)")
                    self._fused[key] = fused
                results = self._fused[key].forward(images, preact)
            else:
                results = [self._forward[i](images, is_feat=True, preact=preact) for i in group]
            for i, (feats, logits) in zip(group, results):
                model = self.models[i]
                outs[i] = NetOutput(feats=list(feats), logits=logits, head=model.head, model=model)
        return outs
