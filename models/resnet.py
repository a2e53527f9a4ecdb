"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

Three groups of residual blocks on 32x32 inputs, as in RepDistiller's ``resnet.py``: resnet8 ...
resnet110 with 16/32/64 channels, and the 4x-wide resnet8x4/resnet32x4 with 64/128/256.
Stages: 0 = conv1/bn1/relu, 1..3 = layer1..layer3. Features: the four stage outputs (post-ReLU,
or each group's last block before its final ReLU with ``preact``), then the pooled vector.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .base import ZooModel, run_blocks
from .registry import register_model


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x, return_preact=False):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + residual
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x, return_preact=False):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + residual
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class ResNet(ZooModel):
    num_stages = 4

    def __init__(self, depth, num_filters, block_name="basicblock", num_classes=10):
        super().__init__()
        if block_name.lower() == "basicblock":
            assert (depth - 2) % 6 == 0, "basic-block depth must be 6n+2 (20, 32, 44, 56, 110, ...)"
            n, block = (depth - 2) // 6, BasicBlock
        elif block_name.lower() == "bottleneck":
            assert (depth - 2) % 9 == 0, "bottleneck depth must be 9n+2 (20, 29, 47, 56, 110, ...)"
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError("block_name must be 'basicblock' or 'bottleneck'")

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        return run_blocks((self.layer1, self.layer2, self.layer3)[i - 1], x, preact)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        last = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(layer[-1], last) for layer in (self.layer1, self.layer2, self.layer3)]


def _register(name, depth, filters):
    @register_model(name, family="resnet")
    def build(num_classes=100):
        return ResNet(depth, filters, "basicblock", num_classes=num_classes)
    build.__doc__ = f"CIFAR ResNet-{depth}, channels {filters}."
    return build


resnet8 = _register("resnet8", 8, [16, 16, 32, 64])
resnet14 = _register("resnet14", 14, [16, 16, 32, 64])
resnet20 = _register("resnet20", 20, [16, 16, 32, 64])
resnet32 = _register("resnet32", 32, [16, 16, 32, 64])
resnet44 = _register("resnet44", 44, [16, 16, 32, 64])
resnet56 = _register("resnet56", 56, [16, 16, 32, 64])
resnet110 = _register("resnet110", 110, [16, 16, 32, 64])
resnet8x4 = _register("resnet8x4", 8, [32, 64, 128, 256])
resnet32x4 = _register("resnet32x4", 32, [32, 64, 128, 256])
