"""The frozen teachers of a distillation run: loaded once, evaluated once per batch.

Teachers are in eval mode with ``requires_grad=False`` and run under ``torch.no_grad()``.
(Not ``inference_mode``: its tensors may not be saved for backward, and losses such as CA-MKD's
pass student tensors through a teacher's head, which needs the teacher's features in autograd.)
No operator of ``outputs`` runs with grad mode on or makes a tensor that requires grad, fused or
not (``tests/test_teachers_fold.py``).

Teachers of the same architecture can run as ONE batched forward: their parameters and buffers
are stacked and the network is applied with ``torch.func.vmap`` over the stack, so M resnet32x4
teachers cost one launch sequence instead of M (``fuse=True``; the default fuses on CUDA only,
where it pays: on a CPU the batched convolutions are no faster). The outputs equal separate
forwards up to floating-point summation order (tested to 1e-5).

Each teacher's BatchNorm layers can be folded into the convolutions that feed them, once, when the
ensemble is made (``fold_bn=True``; ``train_student.py --fold_bn``, on by default on CUDA like the
fused forward; ``models.fold_bn``): the pairs are found by a dry
forward on a fixed batch (its own random generator: the run's random stream is untouched), and
the folded network is used only where its features and logits on that batch (``preact`` False
and True) equal the teacher's up to float rounding; otherwise the teacher runs unfolded and one
line is logged. The folded networks are *copies* that share every unfolded tensor with the
teachers: ``models`` stays the teachers as given (their ``state_dict``, checkpoint digests and
evaluation read the original weights), and ``outputs`` runs the folded copies, fused or not,
compiled or not; each output's ``head`` and ``model`` are the network that produced it (the
spot-adaptive graft pass runs stages of ``models``, unfolded: the same values). Folding
computes the same function up to float32 rounding (about 1e-6 of each output's scale on the
zoo), not bit for bit: ``fold_bn=False`` gives the unfolded forward exactly.
The weights are folded as they are when the ensemble is made; change a teacher's weights later
and make a new ensemble.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from distiller_zoo.base import NetOutput
from models.fold_bn import Folding, dry_images, fold_checked

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
    """M frozen teachers; ``outputs(images, preact)`` gives one ``NetOutput`` per teacher.

    ``fold_bn`` folds each teacher's BatchNorm layers into its convolutions (module docstring);
    ``log`` receives the one line about a teacher that cannot be folded."""

    def __init__(self, models: Sequence[nn.Module], names: Sequence[str], fuse: Optional[bool] = None,
                 fold_bn: bool = False, log: Callable[[str], None] = print):
        self.models: List[nn.Module] = [freeze(m) for m in models]
        self.names = list(names)
        self.fuse_requested = fuse
        self.fold_bn = fold_bn
        # per teacher: what folding made of it (pairs folded, the check's deviation, a refusal's reason)
        self.folding: List[Folding] = [fold_checked(m, dry_images(m)) if fold_bn else Folding(None)
                                       for m in self.models]
        for name, f in zip(self.names, self.folding):
            if f.reason:
                log(f"==> teacher {name}: BatchNorm not folded ({f.reason}); it runs unfolded")
        self._run: List[nn.Module] = [m if f.model is None else freeze(f.model)
                                      for m, f in zip(self.models, self.folding)]
        self._groups: Optional[List[List[int]]] = None
        self._fused: Dict[int, _FusedGroup] = {}
        self._compile_log = None              # set by compile(): every forward, fused or not, compiled
        self._forward = list(self._run)       # what runs a teacher: its network or its compiled form

    @property
    def networks(self) -> List[nn.Module]:
        """The networks ``outputs`` runs: the folded copies (or the teachers where nothing was folded)."""
        return list(self._run)

    def compile(self, log):
        """Run every teacher's forward (and every fused group's) through ``torch.compile``; stays in
        force after ``to()``."""
        self._compile_log = log
        self._fused = {}
        self._forward = self._forwards()

    def _forwards(self):
        if self._compile_log is None:
            return list(self._run)
        return [maybe_compile(m, self._compile_log, f"teacher {n}") for m, n in zip(self._run, self.names)]

    def __len__(self):
        return len(self.models)

    def to(self, device=None, memory_format=None):
        def move(m):
            return m.to(device=device, memory_format=memory_format) if memory_format is not None else m.to(device)
        self.models = [move(m) for m in self.models]
        self._run = [m if r is m else move(r) for m, r in zip(self.models, self._run)]
        self._fused = {}
        self._forward = self._forwards()
        return self

    def eval(self):
        for m in self.models + self._run:
            m.eval()

    def groups(self) -> List[List[int]]:
        """Indices of teachers that share an architecture (same class and parameter shapes of the
        networks that run, folded or not)."""
        if self._groups is None:
            keyed: "OrderedDict[tuple, List[int]]" = OrderedDict()
            for i, m in enumerate(self._run):
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
                    fused = _FusedGroup([self._run[i] for i in group]).to(images.device)
                    if self._compile_log is not None:
                        fused.forward = maybe_compile(fused.forward, self._compile_log,
                                                      f"teachers {', '.join(self.names[i] for i in group)} (fused)")
                    self._fused[key] = fused
                results = self._fused[key].forward(images, preact)
            else:
                results = [self._forward[i](images, is_feat=True, preact=preact) for i in group]
            for i, (feats, logits) in zip(group, results):
                net = self._run[i]
                outs[i] = NetOutput(feats=list(feats), logits=logits, head=net.head, model=net)
        return outs
