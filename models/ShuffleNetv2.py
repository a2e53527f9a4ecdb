"""CIFAR ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), RepDistiller's ``ShuffleV2`` (net size 1.0).

A 1x1 stem conv to 24 channels (no downsampling), then three layers with 116/232/464 channels,
each a stride-2 ``DownBlock`` (two branches, concatenated and shuffled) followed by 3/7/3 basic
units (split the channels in half, transform one half with 1x1-BN-ReLU, 3x3 depthwise-BN,
1x1-BN-ReLU, concatenate, shuffle), then ``conv2`` (1x1 to 1024) with ``bn2`` and ReLU, global
average pooling and ``linear``. Weights keep PyTorch's default initialisation, as in RepDistiller.

Stages: 0 = conv1/bn1/relu, 1..3 = layer1..layer3; ``pool`` is relu(bn2(conv2(x))) plus global
pooling. Features: the four stage outputs, then the pooled 1024-vector. With ``preact`` a layer's
feature is its last unit's concatenation [untouched half, branch before its last ReLU] *before*
the channel shuffle, exactly as RepDistiller reports it: the same channels as the plain feature
in a different order. The stem is always post-ReLU. ``get_bn_before_relu`` is not supported (as
in RepDistiller).

``ShuffleV2_0_5`` is CA-MKD's 0.5x network (48/96/192 channels, same units and head). CA-MKD's copy
of this file reports ``relu(bn2(conv2(.)))`` of the last layer as the last map; this zoo reports
the layer output for both sizes, as RepDistiller does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ShuffleBlock, ShuffleNetStages
from .registry import register_model


class SplitBlock(nn.Module):
    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    def __init__(self, in_channels, split_ratio=0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock()

    def forward(self, x, return_preact=False):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch_pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(branch_pre)], 1))
        if return_preact:
            return out, torch.cat([x1, branch_pre], 1)   # unshuffled, as RepDistiller reports it
        return out


class DownBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 2
        # left branch: 3x3 depthwise stride 2, then 1x1
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1, 3x3 depthwise stride 2, 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(ShuffleNetStages):
    def __init__(self, out_channels, num_blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels, num_blocks):
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def pool(self, x):
        return super().pool(F.relu(self.bn2(self.conv2(x))))


@register_model("ShuffleV2", family="shufflenetv2", default_lr=0.01)
def ShuffleV2(num_classes=100):
    """ShuffleNet V2 (1.0x) for CIFAR: channels 116/232/464, units 3/7/3, 1024-d head."""
    return ShuffleNetV2(out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3), num_classes=num_classes)


@register_model("ShuffleV2_0_5", family="shufflenetv2", default_lr=0.01)
def ShuffleV2_0_5(num_classes=100):
    """ShuffleNet V2 (0.5x) for CIFAR (CA-MKD's ``ShuffleV2_0_5``): channels 48/96/192, units 3/7/3,
    1024-d head."""
    return ShuffleNetV2(out_channels=(48, 96, 192, 1024), num_blocks=(3, 7, 3), num_classes=num_classes)
