"""Accuracy and running sums that stay on the device until they are read.

Reading a metric costs a host synchronisation on CUDA; the loop accumulates on the device and
reads once per ``--print_freq`` steps.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
from torch import Tensor


def topk_correct(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> Tuple[Tensor, ...]:
    """Number of samples whose label is among the top-k logits, for each k (clipped to C)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return tuple(hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks)


class DeviceSums:
    """Named running sums kept as device tensors; ``read()`` syncs once and returns floats."""

    def __init__(self):
        self.sums: Dict[str, Tensor] = {}

    def add(self, name: str, value):
        value = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
        value = value.double() if value.is_floating_point() else value
        if name in self.sums:
            self.sums[name] = self.sums[name] + value
        else:
            self.sums[name] = value.clone()

    def read(self, across_ranks: bool = False) -> Dict[str, float]:
        """The sums as floats (one host synchronisation); ``across_ranks`` adds up every rank's
        sums in a distributed run (every rank must call it at the same point)."""
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[n].double().reshape(()) for n in names])
        if across_ranks:
            from .distributed import all_reduce_sum
            values = all_reduce_sum(values)
        return dict(zip(names, values.cpu().tolist()))

    def reset(self):
        self.sums = {}
