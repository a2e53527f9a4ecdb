"""CIFAR ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The ImageNet layouts adapted to 32x32 inputs, as in RepDistiller's ``resnetv2.py`` (and
mdistiller's, which has the same entries): a 3x3 stride-1 stem with 64 channels (no max pooling),
then layer1..layer4 with 64/128/256/512 planes of basic blocks (ResNet18: 2, 2, 2, 2; ResNet34:
3, 4, 6, 3) or bottleneck blocks (ResNet50: 3, 4, 6, 3; ResNet101: 3, 4, 23, 3; ResNet152: 3, 8,
36, 3; 256/512/1024/2048 output channels), global average pooling and a linear classifier named
``linear``. Projection shortcuts are called ``shortcut`` (not torchvision's ``downsample``); the
stride of a bottleneck is on its 3x3 conv.
Stages: 0 = conv1/bn1/relu, 1..4 = layer1..layer4. Features: the five stage outputs (post-ReLU, or
each layer's last block before its final ReLU with ``preact``; the stem is always post-ReLU), then
the pooled vector.

CA-MKD's model_dict gives ResNet18/34/50/101 torchvision's ImageNet layout instead (7x7 stem,
``downsample``, ``fc``); those checkpoints load through ``models.checkpoint.load_model`` into the
ImageNet zoo's network of the same name (see its docstring).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .blocks import FourLayerResNet, ShortcutBasicBlock, ShortcutBottleneck, init_weights
from .registry import register_model


class ResNetV2(FourLayerResNet):
    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes = self._make_layers(block, num_blocks)
        self.linear = nn.Linear(planes, num_classes)
        init_weights(self)

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def classify(self, pooled):
        return self.linear(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, *self._layers])


def _register(name, block, num_blocks, family):
    def build(num_classes=100):
        return ResNetV2(block, num_blocks, num_classes=num_classes)
    kind = "bottleneck" if block is ShortcutBottleneck else "basic"
    build.__doc__ = f"CIFAR {name}: {kind} blocks {tuple(num_blocks)}, 3x3 stem with 64 channels."
    return register_model(name, family=family)(build)


ResNet18 = _register("ResNet18", ShortcutBasicBlock, [2, 2, 2, 2], "resnetv2_basic")
ResNet34 = _register("ResNet34", ShortcutBasicBlock, [3, 4, 6, 3], "resnetv2_basic")
ResNet50 = _register("ResNet50", ShortcutBottleneck, [3, 4, 6, 3], "resnet_bottleneck")
ResNet101 = _register("ResNet101", ShortcutBottleneck, [3, 4, 23, 3], "resnet_bottleneck")
ResNet152 = _register("ResNet152", ShortcutBottleneck, [3, 8, 36, 3], "resnet_bottleneck")
