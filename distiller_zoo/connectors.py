"""Trainable connectors that map student features into a teacher's feature space.

Built from actual feature shapes (``(C, H, W)`` without the batch dimension), owned by the loss
that uses them, trained with the student.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class ConvReg(nn.Module):
    """FitNet's convolutional regressor (conv -> BN -> ReLU), as RepDistiller sizes it:
    a stride-2 3x3 conv when the student map is twice as large, a stride-2 4x4 transposed conv
    when it is half as large, a ``(1 + s_H - t_H)`` kernel when it is larger, and (beyond
    RepDistiller, which stops there) a transposed conv with stride ``t_H / s_H`` when the teacher
    map is an integer multiple larger."""

    def __init__(self, s_shape, t_shape, use_relu=True):
        super().__init__()
        s_C, s_H, s_W = s_shape[-3:]
        t_C, t_H, t_W = t_shape[-3:]
        if s_H == 2 * t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
        elif s_H * 2 == t_H:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
        elif s_H >= t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1 + s_H - t_H, 1 + s_W - t_W))
        elif t_H % s_H == 0 and t_W % s_W == 0:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=(t_H // s_H, t_W // s_W),
                                           stride=(t_H // s_H, t_W // s_W))
        else:
            raise ValueError(f"cannot regress a {s_H}x{s_W} student map onto a {t_H}x{t_W} teacher map")
        self.bn = nn.BatchNorm2d(t_C)
        self.use_relu = use_relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class Embed(nn.Module):
    """CA-MKD's channel embedding: 1x1 conv -> BN -> ReLU, or with ``convs`` a bottleneck
    1x1 (C_in -> C_in/factor) -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (-> C_out) -> BN -> ReLU."""

    def __init__(self, dim_in, dim_out, factor=2, convs=False):
        super().__init__()
        if convs:
            mid = max(dim_in // factor, 1)
            self.transfer = nn.Sequential(
                nn.Conv2d(dim_in, mid, kernel_size=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, kernel_size=3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, dim_out, kernel_size=1), nn.BatchNorm2d(dim_out), nn.ReLU(inplace=True))
        else:
            self.transfer = nn.Sequential(
                nn.Conv2d(dim_in, dim_out, kernel_size=1), nn.BatchNorm2d(dim_out), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.transfer(x)


def average_pool_to(x, size):
    """``adaptive_avg_pool2d(x, size)``; where the sizes divide, as ``avg_pool2d`` over the same
    windows: its CUDA backward is deterministic, adaptive_avg_pool2d's is not (``--deterministic``
    stops a GPU run at it)."""
    h, w = x.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))
    return F.adaptive_avg_pool2d(x, size)


def resize_to(x, size):
    """Bring a map to a spatial size: average pooling when it is larger (or equal), bilinear
    interpolation when it is smaller (CA-MKD's rule)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0]:
        return average_pool_to(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LinearEmbed(nn.Module):
    """A linear embedding of a feature (flattened per sample) to ``dim_out`` dimensions, no
    normalisation: RepDistiller's embedding for CC (``--distill correlation``)."""

    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.flatten(1))


def full_precision(x):
    """Half or bfloat16 tensors (AMP) up to float32; float32 and float64 unchanged. Losses built on
    normalisations, logarithms or decompositions run on these inputs under ``no_autocast``."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def no_autocast(x):
    """A context without autocast on ``x``'s device (a no-op outside AMP)."""
    import torch
    return torch.autocast(device_type=x.device.type, enabled=False)
