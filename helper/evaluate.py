"""Evaluation: top-1/top-5 and cross-entropy of one or several networks over a loader.

Under torchrun the test and validation loaders deal out whole batches (``dataset.loader``,
``shard="batches"``): each rank evaluates its share, every image once. The ranks' per-batch sums
are then exchanged (one ``all_reduce`` of a ``[total batches, figures]`` table in which each rank
fills its own rows) and added up in the single-process loader's batch order, so the result is
the single process's, bit for bit: the same batches, through the same network, summed in the
same order.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_reduce_sum
from .execution import autocast_context
from .meters import DeviceSums, topk_correct


def figure_names(num_models: int) -> List[str]:
    """The sums one batch contributes, in a fixed order (the rows of the exchanged table)."""
    names = [f"{kind}_{k}" for k in range(num_models) for kind in ("top1", "top5", "loss")]
    return names + (["top1_ens", "top5_ens"] if num_models > 1 else []) + ["n"]


def batch_figures(models: Sequence[nn.Module], images, labels, device, amp: bool) -> Dict[str, Any]:
    """One batch's sums: correct top-1/top-5 counts and summed cross-entropy of each model (and of
    the ensemble of averaged probabilities), and the number of images."""
    out: Dict[str, Any] = {}
    probs = 0
    with autocast_context(device, amp):
        logits_all = [m(images).float() for m in models]
    for k, logits in enumerate(logits_all):
        c1, c5 = topk_correct(logits, labels)
        out[f"top1_{k}"], out[f"top5_{k}"] = c1, c5
        out[f"loss_{k}"] = F.cross_entropy(logits, labels, reduction="sum")
        probs = probs + logits.softmax(dim=1)
    if len(models) > 1:
        out["top1_ens"], out["top5_ens"] = topk_correct(probs, labels)
    out["n"] = labels.shape[0]
    return out


def add_dealt_batches(sums: DeviceSums, local: List[Dict[str, Any]], loader, names: List[str], device):
    """Every rank's batch figures added to ``sums`` in the unsharded loader's batch order: rank r
    fills the rows of the batches it evaluated (``loader.batch_numbers()``), one ``all_reduce``
    adds the tables (each row has one non-zero contributor: exact), then the rows are added up one
    after the other, as a single process adds its batches."""
    numbers = list(loader.batch_numbers())
    table = torch.zeros(loader.total_batches, len(names), dtype=torch.float64, device=device)
    if local:
        rows = torch.stack([torch.stack([torch.as_tensor(f[name], device=device).double().reshape(())
                                         for name in names]) for f in local])
        table[torch.tensor(numbers, device=device)] = rows
    all_reduce_sum(table)
    total = None
    for row in table:          # row after row, as DeviceSums adds a single process's batches
        total = row.clone() if total is None else total + row
    for name, value in zip(names, total):
        sums.add(name, value)


@torch.inference_mode()     # no autograd bookkeeping at all (faster than no_grad; same numbers)
def evaluate(models: Sequence[nn.Module], loader, device: str = "cpu", amp: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 (percent) and mean cross-entropy of each model, and of their ensemble
    (averaged probabilities) when there are several. A loader that deals whole batches out to
    the ranks of a torchrun job (``loader.deals_batches``) is evaluated by every rank together
    (every rank must call this at the same point); the result is the single process's."""
    models = list(models)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = DeviceSums()
    dealt = loader.deals_batches
    local: List[Dict[str, Any]] = []
    try:
        for batch in loader:
            figures = batch_figures(models, batch[0], batch[1], device, amp)
            if dealt:
                local.append(figures)
                continue
            for name, value in figures.items():
                sums.add(name, value)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if dealt:
        add_dealt_batches(sums, local, loader, figure_names(len(models)), torch.device(device))
    s = sums.read()
    n = max(s.get("n", 0), 1)
    out = {"top1": [100 * s[f"top1_{k}"] / n for k in range(len(models))],
           "top5": [100 * s[f"top5_{k}"] / n for k in range(len(models))],
           "loss": [s[f"loss_{k}"] / n for k in range(len(models))]}
    if len(models) > 1:
        out["ensemble_top1"] = 100 * s["top1_ens"] / n
        out["ensemble_top5"] = 100 * s["top5_ens"] / n
    return out
