"""Evaluation: top-1/top-5 and cross-entropy of one or several networks over a loader."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .execution import autocast_context
from .meters import DeviceSums, topk_correct


@torch.inference_mode()     # no autograd bookkeeping at all (faster than no_grad; same numbers)
def evaluate(models: Sequence[nn.Module], loader, device: str = "cpu", amp: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 (percent) and mean cross-entropy of each model, and of their ensemble
    (averaged probabilities) when there are several."""
    models = list(models)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = DeviceSums()
    try:
        for batch in loader:
            images, labels = batch[0], batch[1]
            probs = 0
            with autocast_context(device, amp):
                logits_all = [m(images).float() for m in models]
            for k, logits in enumerate(logits_all):
                c1, c5 = topk_correct(logits, labels)
                sums.add(f"top1_{k}", c1)
                sums.add(f"top5_{k}", c5)
                sums.add(f"loss_{k}", F.cross_entropy(logits, labels, reduction="sum"))
                probs = probs + logits.softmax(dim=1)
            if len(models) > 1:
                c1, c5 = topk_correct(probs, labels)
                sums.add("top1_ens", c1)
                sums.add("top5_ens", c5)
            sums.add("n", labels.shape[0])
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    s = sums.read()
    n = max(s.get("n", 0), 1)
    out = {"top1": [100 * s[f"top1_{k}"] / n for k in range(len(models))],
           "top5": [100 * s[f"top5_{k}"] / n for k in range(len(models))],
           "loss": [s[f"loss_{k}"] / n for k in range(len(models))]}
    if len(models) > 1:
        out["ensemble_top1"] = 100 * s["top1_ens"] / n
        out["ensemble_top5"] = 100 * s["top5_ens"] / n
    return out
