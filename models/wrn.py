"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Pre-activation WRN-d-k for 32x32 inputs as in RepDistiller's ``wrn.py``: a 3x3 conv to 16
channels, then three groups (``block1..block3``, each a ``NetworkBlock`` holding ``layer``) of
(d-4)/6 pre-activation basic blocks with 16k/32k/64k channels, then ``bn1``/ReLU, global average
pooling and ``fc``. A block's BN-ReLU is applied to its input, so the raw output of a group has
no activation yet.

Stages: 0 = conv1, 1..3 = block1..block3. Features: conv1's output, the three raw group outputs,
then the pooled vector. With ``preact`` the group outputs are replaced by what the next BN makes
of them (``block2.layer[0].bn1``, ``block3.layer[0].bn1``, ``bn1``), as RepDistiller reports them;
unlike RepDistiller, that extra BN pass does not update the BN's running statistics a second time.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .base import ZooModel, batch_norm_without_update
from .blocks import init_weights, normal_fan_out
from .registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut. When the shape changes the
    shortcut is a 1x1 conv applied to the *activated* input (as in the original WRN code)."""

    def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        shortcut = x if self.equalInOut else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A group of ``nb_layers`` blocks; the first one may change width and stride."""

    def __init__(self, nb_layers, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(ZooModel):
    num_stages = 4

    def __init__(self, depth, num_classes, widen_factor=1, drop_rate=0.0):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4 (16, 22, 28, 40, ...)"
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]

        init_weights(self, conv=normal_fan_out, linear_bias=True)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.conv1(x)
            return x, x
        x = (self.block1, self.block2, self.block3)[i - 1](x)
        if preact:
            return x, batch_norm_without_update(self.get_bn_before_relu()[i - 1], x)
        return x, x

    def pool(self, x):
        return super().pool(F.relu(self.bn1(x)))

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self):
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


def _register(name, depth, widen_factor):
    def build(num_classes=100, drop_rate=0.0, dropRate=None):
        rate = drop_rate if dropRate is None else dropRate   # dropRate: RepDistiller's spelling
        return WideResNet(depth, num_classes, widen_factor=widen_factor, drop_rate=rate)
    build.__doc__ = f"WRN-{depth}-{widen_factor} (pre-activation wide ResNet), optional dropout."
    return register_model(name, family="wrn")(build)


wrn_16_1 = _register("wrn_16_1", 16, 1)
wrn_16_2 = _register("wrn_16_2", 16, 2)
wrn_40_1 = _register("wrn_40_1", 40, 1)
wrn_40_2 = _register("wrn_40_2", 40, 2)
