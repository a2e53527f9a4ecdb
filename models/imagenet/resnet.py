"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

ResNet-18/34 (basic blocks) and ResNet-50/101 (bottleneck blocks, stride on the 3x3 conv as in
torchvision's "v1.5"), with torchvision's attribute names (``conv1``, ``bn1``, ``layer1..4``,
``downsample``, ``fc``), so a torchvision state_dict loads unchanged. The blocks are the CIFAR
ResNet's (``models.blocks``), which have the same layout.

CA-MKD's names (its ``models/resnet_imagenet.py``, torchvision's code; also in the CIFAR zoo, where
CA-MKD's scripts ask for them): ``wrn_50_2`` is torchvision's Wide ResNet-50-2 (Zagoruyko &
Komodakis, BMVC 2016: bottleneck inner width doubled); ``ResNet10`` is basic blocks (1, 1, 1, 1)
(SemCKD's ``resnet10``, which CA-MKD's train_student.py lists but its model_dict lacks);
``ResNet34x2`` is CA-MKD's ``wide_resnet34_2``, whose width multiplier is never applied (its
check ``isinstance(block, BasicBlock)`` tests a class, not an instance, and basic blocks ignore
``width_per_group``), so it has ResNet-34's layout exactly and is registered as that network.

Stages: 0 = the stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pooling), 1..4 = layer1..4.
Features: the five stage outputs (56, 56, 28, 14 and 7 px for a 224-px input; post-ReLU, or each
layer's last block before its final ReLU with ``preact``; the stem is always post-ReLU), then the
pooled vector (the mean over the map, as ``models.base``: torchvision's ``AdaptiveAvgPool2d(1)``
gives the same numbers, but its CUDA backward is not deterministic).
"""
from __future__ import annotations

import torch.nn as nn

from ..blocks import BasicBlock, Bottleneck, FourLayerResNet, init_weights
from ..registry import register_model


class ImageNetResNet(FourLayerResNet):
    def __init__(self, block, layers, num_classes=1000, **block_kw):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = self._make_layers(block, layers, **block_kw)
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool, *self._layers])


@register_model("ResNet18", family="resnet", input_size=224, default_lr=0.1)
def resnet18(num_classes=1000):
    """ImageNet ResNet-18 (torchvision layout)."""
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model("ResNet34", family="resnet", input_size=224, default_lr=0.1)
def resnet34(num_classes=1000):
    """ImageNet ResNet-34 (torchvision layout)."""
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@register_model("ResNet50", family="resnet_bottleneck", input_size=224, default_lr=0.1)
def resnet50(num_classes=1000):
    """ImageNet ResNet-50 (torchvision layout, stride on the 3x3 conv)."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


@register_model("ResNet101", family="resnet_bottleneck", input_size=224, default_lr=0.1)
def resnet101(num_classes=1000):
    """ImageNet ResNet-101 (torchvision layout, stride on the 3x3 conv)."""
    return ImageNetResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes)


@register_model("ResNet10", family="resnet", input_size=224, default_lr=0.1, cifar_lr=0.05)
def resnet10(num_classes=1000):
    """ImageNet ResNet-10: basic blocks (1, 1, 1, 1), torchvision layout (SemCKD's ``resnet10``)."""
    return ImageNetResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


@register_model("ResNet34x2", family="resnet", input_size=224, default_lr=0.1, cifar_lr=0.05)
def resnet34x2(num_classes=1000):
    """CA-MKD's ``ResNet34x2``: ResNet-34's layout exactly (see the module docstring)."""
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@register_model("wrn_50_2", family="resnet_bottleneck", input_size=224, default_lr=0.1, cifar_lr=0.05)
def wide_resnet50_2(num_classes=1000):
    """Wide ResNet-50-2 (torchvision layout): bottlenecks (3, 4, 6, 3) with twice the inner width."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, base_width=128)
