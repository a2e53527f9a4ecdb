"""Folding a frozen network's BatchNorm layers into the convolutions that feed them.

In eval mode a BatchNorm is an affine map per channel, ``bn(y) = (y - mean) / sqrt(var + eps) *
gamma + beta``; when ``y = conv(x)`` the two compose into one convolution with weight
``W * s`` and bias ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)`` (per output
channel). This is the standard inference-time fusion (e.g. Jacob et al., "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, Sec. 3.2;
PyTorch's ``torch.nn.utils.fusion.fuse_conv_bn_eval`` does the same arithmetic). It saves the
BN's operators (two aten operators per pair: ``native_batch_norm`` and its output's allocation)
and the memory traffic of the BN's output.

A pair may be folded only where the BN's input is exactly the conv's output and nothing else reads
that output. The pairs are found without knowing the architecture:

- ``conv_bn_pairs(model, images)``: one dry forward per ``preact`` mode with hooks on every leaf
  module; a (Conv2d, BatchNorm2d) pair qualifies when the BN's input *is* the conv's output tensor,
  each of the two modules runs once, no other module reads that tensor, the forward does not
  report it as a feature (WRN's first feature is its stem conv's output, which the next BN reads),
  and the BN uses running statistics. Uses that hooks cannot see (a function of the conv output,
  such as a residual sum) are caught by the check below.
- ``fold(model, pairs)``: a copy with each pair's conv carrying the folded weight and bias and its
  BN replaced by ``nn.Identity``; every other parameter and buffer is *shared* with ``model`` (not
  copied), so a teacher with large unfolded layers costs no second copy of them.
- ``fold_checked(model, images) -> Folding``: both, then the copy's features and logits (``preact``
  False and True) compared with the original's on the dry batch: the copy, its pairs and the
  largest relative deviation, or no copy and the reason where they differ beyond float rounding
  (or the model cannot be probed).

The folded network computes the same function up to float32 rounding (the product ``W * s`` and
the bias are rounded, and the conv sums in another order): tested to a relative 1e-4 of each
output's largest value on every zoo architecture (``tests/test_teachers_fold.py``).
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

# The check's tolerance, relative to an output's largest value: float32 rounding of a folded
# network stays below 1e-5 on the zoo's deepest networks; a fold that changes what another reader
# of a conv output sees changes an output by the order of the output itself.
VERIFY_RTOL = 1e-3


def fold_conv_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """The weight and bias of ``bn(conv(x))`` as one convolution (``bn`` in eval mode), in
    ``weight``'s dtype, on its device and in its memory format. The per-channel scale and the bias
    are computed in float64 and rounded once; the weight is multiplied by the rounded scale."""
    dtype = weight.dtype
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if bias is not None:
        shift = shift + bias.double() * scale
    w = weight * scale.to(dtype).reshape(-1, *([1] * (weight.dim() - 1)))
    return w, shift.to(dtype)


def _leaves(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]


def _probe(model: nn.Module, images: Tensor, preact: bool):
    """One hooked dry forward: ``(set of foldable (conv, bn) names, the outputs feats + [logits])``."""
    produced: Dict[int, str] = {}       # id of a conv output -> the conv's name
    readers: Counter = Counter()        # id of a tensor -> leaf-module calls that read it
    calls: Counter = Counter()          # module name -> calls
    bn_input: Dict[str, int] = {}       # BN name -> id of its input
    alive: List[Tensor] = []            # keeps every probed tensor alive, so ids stay unique
    hooks = []

    def reader(name):
        def hook(module, args):
            calls[name] += 1
            for a in args:
                if isinstance(a, Tensor):
                    readers[id(a)] += 1
                    alive.append(a)
            if isinstance(module, nn.BatchNorm2d) and args and isinstance(args[0], Tensor):
                bn_input[name] = id(args[0])
        return hook

    def producer(name):
        def hook(module, args, out):
            produced[id(out)] = name
            alive.append(out)
        return hook

    try:
        for name, m in _leaves(model):
            hooks.append(m.register_forward_pre_hook(reader(name)))
            if isinstance(m, nn.Conv2d):
                hooks.append(m.register_forward_hook(producer(name)))
        outputs = _outputs(model, images, preact)
    finally:
        for h in hooks:
            h.remove()
    returned = {id(t) for t in outputs}         # a reported feature is read too
    modules = dict(model.named_modules())
    pairs = set()
    for bn_name, tid in bn_input.items():
        conv_name = produced.get(tid)
        bn = modules[bn_name]
        if (conv_name is not None and calls[bn_name] == 1 and calls[conv_name] == 1 and readers[tid] == 1
                and tid not in returned and bn.running_mean is not None and not bn.training
                and modules[conv_name].weight.shape[0] == bn.num_features):
            pairs.add((conv_name, bn_name))
    return pairs, outputs


def _ordered(model, pairs) -> List[Tuple[str, str]]:
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(pairs, key=lambda p: order[p[1]])


def conv_bn_pairs(model: nn.Module, images: Tensor, preact_modes=(False, True)) -> List[Tuple[str, str]]:
    """``[(conv name, bn name)]`` that can be folded in every ``preact`` mode (see the module
    docstring), in module order. The model should be in eval mode; nothing in it changes."""
    sets = [_probe(model, images, preact)[0] for preact in preact_modes]
    return _ordered(model, set.intersection(*sets) if sets else set())


def fold(model: nn.Module, pairs) -> nn.Module:
    """A copy of ``model`` with every ``(conv, bn)`` pair folded; every other tensor is shared."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    twin = copy.deepcopy(model, memo)        # new modules, the same tensors
    twin_modules = dict(twin.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = twin_modules[conv_name], twin_modules[bn_name]
        weight, bias = fold_conv_bn(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn)
        conv.weight = nn.Parameter(weight, requires_grad=False)      # the twin's module only
        conv.bias = nn.Parameter(bias, requires_grad=False)
        parent, _, attr = bn_name.rpartition(".")
        setattr(twin_modules[parent] if parent else twin, attr, nn.Identity())
    return twin


def _outputs(model, images, preact):
    with torch.no_grad():
        feats, logits = model(images, is_feat=True, preact=preact)
    return list(feats) + [logits]


def _deviation(a: Tensor, b: Tensor) -> float:
    """``max |a - b| / max |b|`` (inf for another shape, NaN where either holds NaN)."""
    if a.shape != b.shape:
        return float("inf")
    if not b.numel():
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@dataclass
class Folding:
    """What ``fold_checked`` made of a model."""
    model: Optional[nn.Module]                       # the folded copy, or None (run the model itself)
    pairs: List[Tuple[str, str]] = field(default_factory=list)   # (conv, bn) names folded
    reason: str = ""                                 # why it was refused ("" when folded or nothing to fold)
    deviation: float = 0.0                           # largest relative deviation of an output on the batch


def fold_checked(model: nn.Module, images: Tensor) -> Folding:
    """Fold ``model`` and check the copy on ``images``: its features and logits (``preact`` False and
    True) must be within ``VERIFY_RTOL`` of the largest value of each of the model's. Four forwards
    of ``images`` in all; a model that cannot be probed is refused with the error as its reason."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return Folding(None)
    try:
        probes = {preact: _probe(model, images, preact) for preact in (False, True)}
        pairs = _ordered(model, probes[False][0] & probes[True][0])
        if not pairs:
            return Folding(None)
        twin = fold(model, pairs)
        worst = 0.0
        for preact, (_, theirs) in probes.items():
            mine = _outputs(twin, images, preact)
            if len(mine) != len(theirs):
                return Folding(None, reason=f"the folded copy returns {len(mine) - 1} features, not {len(theirs) - 1}")
            for k, (a, b) in enumerate(zip(mine, theirs)):
                dev = _deviation(a, b)
                if not dev <= VERIFY_RTOL:                  # also NaN
                    what = "logits" if k == len(theirs) - 1 else f"feature {k}"
                    return Folding(None, reason=f"folded {what} (preact={preact}) deviates by {dev:.3g} "
                                                f"of its largest value")
                worst = max(worst, dev)
    except Exception as exc:  # noqa: BLE001  (any model: a probe that fails means "do not fold")
        return Folding(None, reason=f"probing it failed ({type(exc).__name__}: {exc})")
    return Folding(twin, pairs, deviation=worst)


def dry_images(model: nn.Module, batch: int = 1, max_size: int = 32) -> Tensor:
    """A fixed random batch for probing ``model`` (its own generator: the global random stream
    is not touched), at its registered size up to ``max_size`` px, on its device and dtype."""
    param = next(model.parameters())
    size = min(int(getattr(model, "input_size", 32)), max_size)
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g).to(device=param.device, dtype=param.dtype)
