"""Hard Gumbel-softmax with straight-through gradients (the decision sampler of spot-adaptive
distillation; Song et al., "Spot-adaptive Knowledge Distillation", IEEE TIP 2022).

``y_soft = softmax((logits + g) / tau)`` with Gumbel noise ``g = -log(-log u)``, ``u ~ U(0, 1)``;
the forward value is the one-hot ``argmax`` of ``y_soft`` (the argmax of ``logits + g``, a sample
from ``softmax(logits)`` whatever ``tau``), the backward pass is that of ``y_soft``.

Differences from the reference code: the noise is drawn on the logits' own device with torch's
generator (the reference hard-wires ``.cuda()``), in float32; and the straight-through value is
``y_hard + (y_soft - y_soft.detach())``, which is exactly one-hot in the forward pass (the
reference's ``y_hard - y_soft.detach() + y_soft`` can be one ulp off 0/1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-20


def gumbel_noise(like: Tensor) -> Tensor:
    u = torch.rand(like.shape, device=like.device, dtype=torch.float32)
    return -torch.log(-torch.log(u + EPS) + EPS)


def gumbel_softmax(logits: Tensor, tau: float = 5.0, hard: bool = True, noise: Tensor | None = None) -> Tensor:
    """Samples over the last dimension of ``logits``; ``hard``: one-hot forward, soft backward.
    ``noise`` (same shape) replaces the Gumbel draw (tests)."""
    if tau <= 0:
        raise ValueError(f"the Gumbel-softmax temperature must be positive, got {tau}")
    g = gumbel_noise(logits) if noise is None else noise.float()
    y_soft = F.softmax((logits.float() + g) / tau, dim=-1)
    if not hard:
        return y_soft
    y_hard = torch.zeros_like(y_soft).scatter_(-1, y_soft.argmax(-1, keepdim=True), 1.0)
    return y_hard + (y_soft - y_soft.detach())
