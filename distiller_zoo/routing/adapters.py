"""The graft pass's adapters: one network's feature at a spot into the other network's space.

As the reference of Song et al. ("Spot-adaptive Knowledge Distillation", IEEE TIP 2022), a map
spot gets FitNet's ``ConvReg`` (conv -> BN -> ReLU, the kernel chosen from the two spatial sizes:
3x3 stride 2 for a map twice as large, 4x4 stride-2 transposed for half as large, a
``1 + H_src - H_dst`` kernel otherwise; ``distiller_zoo.connectors.ConvReg``, which also handles a
destination an integer multiple larger), and a vector spot (the pooled feature) one ``nn.Linear``.
They are built from the actual shapes, in both directions, and trained only by the policy's
optimiser.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ..connectors import ConvReg


def adapter(src_shape: Sequence[int], dst_shape: Sequence[int]) -> nn.Module:
    """A trainable map from features shaped ``src_shape`` to ``dst_shape`` (no batch dimension)."""
    src, dst = tuple(src_shape), tuple(dst_shape)
    if len(src) == 3 and len(dst) == 3:
        try:
            return ConvReg(src, dst)
        except ValueError:
            raise ValueError(f"cannot adapt a {src[1]}x{src[2]} map to a {dst[1]}x{dst[2]} map "
                             f"at a grafting spot") from None
    if len(src) == 1 and len(dst) == 1:
        return nn.Linear(src[0], dst[0])
    raise ValueError(f"cannot graft a feature shaped {src} onto one shaped {dst} (a map and a vector)")
