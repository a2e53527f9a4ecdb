"""CIFAR ShuffleNet V1 (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018), RepDistiller's ``ShuffleV1`` (groups g=3).

A 1x1 stem conv to 24 channels (no downsampling), then three layers of 4/8/4 shuffle units with
240/480/960 output channels, global average pooling and ``linear``. A unit is a grouped 1x1
conv-BN-ReLU, a channel shuffle, a 3x3 depthwise conv-BN-ReLU and a grouped 1x1 conv-BN; the first
unit of each layer has stride 2 and concatenates a 3x3 average-pooled shortcut, the others add
the identity. The first grouped conv of the network takes its 24 input channels ungrouped.
Weights keep PyTorch's default initialisation, as in RepDistiller.

Stages: 0 = conv1/bn1/relu, 1..3 = layer1..layer3. Features: the four stage outputs (post-ReLU,
or each layer's last unit before its final ReLU with ``preact``; the stem is always post-ReLU),
then the pooled vector. ``get_bn_before_relu`` is not supported (as in RepDistiller).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ShuffleBlock, ShuffleNetStages
from .registry import register_model


class Bottleneck(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x, return_preact=False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ShuffleNet(ShuffleNetStages):
    def __init__(self, out_planes, num_blocks, groups, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes, num_blocks, groups):
        layers = []
        for i in range(num_blocks):
            # the strided first unit concatenates its input, so its branch makes the difference
            branch_planes = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(Bottleneck(self.in_planes, branch_planes, stride=2 if i == 0 else 1, groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)


@register_model("ShuffleV1", family="shufflenetv1", default_lr=0.01)
def ShuffleV1(num_classes=100):
    """ShuffleNet V1 for CIFAR: groups 3, channels 240/480/960, units 4/8/4."""
    return ShuffleNet(out_planes=[240, 480, 960], num_blocks=[4, 8, 4], groups=3, num_classes=num_classes)
