"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2).

Three groups of residual blocks on 32x32 inputs, as in RepDistiller's ``resnet.py``: resnet8 ...
resnet110 with 16/32/64 channels, the 4x-wide resnet8x4/resnet32x4 with 64/128/256, and CA-MKD's
resnet20x4 (64/128/256) and resnet8x4_double (128/256/512). Global average pooling is a mean over
the map (RepDistiller's ``AvgPool2d(8)`` assumes 32 px), so any input size works.
Stages: 0 = conv1/bn1/relu, 1..3 = layer1..layer3. Features: the four stage outputs (post-ReLU,
or each group's last block before its final ReLU with ``preact``), then the pooled vector.
"""
from __future__ import annotations

import torch.nn as nn

from .base import ZooModel, run_blocks
from .blocks import BasicBlock, Bottleneck, init_weights, last_bns, make_layer
from .registry import register_model


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

        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        planes = num_filters[0]
        self.layer1, planes = make_layer(block, planes, num_filters[1], n)
        self.layer2, planes = make_layer(block, planes, num_filters[2], n, stride=2)
        self.layer3, planes = make_layer(block, planes, num_filters[3], n, stride=2)
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        return run_blocks((self.layer1, self.layer2, self.layer3)[i - 1], x, preact)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        return last_bns((self.layer1, self.layer2, self.layer3))


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
# CA-MKD's additions (its models/resnet.py)
resnet20x4 = _register("resnet20x4", 20, [32, 64, 128, 256])
resnet8x4_double = _register("resnet8x4_double", 8, [64, 128, 256, 512])
