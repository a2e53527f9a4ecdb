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
    """Named running sums kept as device tensors; ``read()`` syncs once and returns floats.

    Tensor values stay on their own device (the data's): no tensor is ever made on the CPU
    behind the caller's back. Plain Python numbers (e.g. a batch size) are summed on the host and
    joined to the device sums only in ``read()``, on the device of those sums. Adding a tensor on
    another device than the sums already held is a clear error, not a failure at epoch end."""

    def __init__(self):
        self.sums: Dict[str, Tensor] = {}
        self.host: Dict[str, float] = {}

    def add(self, name: str, value):
        if not isinstance(value, Tensor):
            self.host[name] = self.host.get(name, 0.0) + float(value)
            return
        value = value.detach()
        value = value.double() if value.is_floating_point() else value
        for held in self.sums.values():
            if held.device != value.device:
                raise ValueError(f"DeviceSums: {name!r} is on {value.device}, the other sums are on "
                                 f"{held.device}; make it on the device of the data")
            break
        if name in self.sums:
            self.sums[name] = self.sums[name] + value
        else:
            self.sums[name] = value.clone()

    def read(self, across_ranks: bool = False) -> Dict[str, float]:
        """The sums as floats (one host synchronisation); ``across_ranks`` adds up every rank's
        sums in a distributed run (every rank must call it at the same point)."""
        names = list(self.sums)
        host = [n for n in self.host if n not in self.sums]
        if not names and not host:
            return {}
        if names:
            values = torch.stack([self.sums[n].double().reshape(()) for n in names])
            extra = [self.host.get(n, 0.0) for n in names]
            if any(extra):   # a name fed both tensors and numbers
                values = values + torch.tensor(extra, dtype=torch.float64, device=values.device)
            if host:
                values = torch.cat([values, torch.tensor([self.host[n] for n in host], dtype=torch.float64,
                                                         device=values.device)])
        else:
            values = torch.tensor([self.host[n] for n in host], dtype=torch.float64)
        if across_ranks:
            from .distributed import all_reduce_sum
            values = all_reduce_sum(values)
        return dict(zip(names + host, values.cpu().tolist()))

    def reset(self):
        self.sums = {}
        self.host = {}
