"""CIFAR ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The ImageNet bottleneck layout adapted to 32x32 inputs, as in RepDistiller's ``resnetv2.py``: a
3x3 stride-1 stem with 64 channels (no max pooling), then layer1..layer4 of bottleneck blocks
(3, 4, 6, 3) with 256/512/1024/2048 output channels and a linear classifier named ``linear``.
Projection shortcuts are called ``shortcut`` (not torchvision's ``downsample``).
Stages: 0 = conv1/bn1/relu, 1..4 = layer1..layer4. Features: the five stage outputs (post-ReLU, or
each layer's last block before its final ReLU with ``preact``; the stem is always post-ReLU), then
the pooled vector.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .base import ZooModel, run_blocks
from .registry import register_model


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()          # identity; a projection when the shape changes
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x, return_preact=False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ResNetV2(ZooModel):
    num_stages = 5

    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    @property
    def _layers(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        return run_blocks(self._layers[i - 1], x, preact)

    def classify(self, pooled):
        return self.linear(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, *self._layers])

    def get_bn_before_relu(self):
        return [layer[-1].bn3 for layer in self._layers]


@register_model("ResNet50", family="resnet_bottleneck")
def ResNet50(num_classes=100):
    """CIFAR ResNet-50: bottleneck blocks (3, 4, 6, 3), 3x3 stem with 64 channels."""
    return ResNetV2([3, 4, 6, 3], num_classes=num_classes)
