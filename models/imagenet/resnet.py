"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks, stride on the 3x3 conv as in
torchvision's "v1.5"), with torchvision's attribute names (``conv1``, ``bn1``, ``layer1..4``,
``downsample``, ``fc``), so a torchvision state_dict loads unchanged. The blocks are the CIFAR
ResNet's (``models.resnet``), which have the same layout.

Stages: 0 = the stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pooling), 1..4 = layer1..4.
Features: the five stage outputs (56, 56, 28, 14 and 7 px for a 224-px input; post-ReLU, or each
layer's last block before its final ReLU with ``preact``; the stem is always post-ReLU), then the
pooled vector.
"""
from __future__ import annotations

import torch.nn as nn

from ..base import ZooModel, run_blocks
from ..registry import register_model
from ..resnet import BasicBlock, Bottleneck


class ImageNetResNet(ZooModel):
    num_stages = 5

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

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

    @property
    def _layers(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return x, x
        return run_blocks(self._layers[i - 1], x, preact)

    def pool(self, x):
        return self.avgpool(x).flatten(1)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool, *self._layers])

    def get_bn_before_relu(self):
        last = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(layer[-1], last) for layer in self._layers]


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
