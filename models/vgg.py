"""CIFAR VGG with batch normalisation (Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015).

RepDistiller's ``vgg*_bn`` (registered under the names vgg8/11/13/16/19): five conv blocks
``block0..block4`` of 3x3 conv-BN-ReLU layers (each block's final ReLU is left to the forward),
max pooling ``pool0..pool3`` between them, global average pooling ``pool4`` and a single linear
``classifier`` (the three fully connected layers of the ImageNet VGG are gone).

Stages: 0 = block0, i = 1..4 = the pooling before block i, then block i. ``pool3`` is applied only
when the map entering stage 4 is larger than 4x4 (RepDistiller: only for 64-px inputs), so a
32-px input reaches block4 at 4x4. Features: the five block outputs after ReLU (with ``preact``,
blocks 1..4 before it; block0 is reported after its ReLU either way, as RepDistiller does), then
the pooled vector.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .base import ZooModel
from .blocks import init_weights, normal_fan_out
from .registry import register_model

# channels of the conv layers in block0..block4
CFG = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(channels, in_channels):
    """conv3x3-BN-ReLU for each width, without the last ReLU (the block ends with its BN)."""
    layers = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, kernel_size=3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        in_channels = c
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    num_stages = 5

    def __init__(self, cfg, num_classes=100):
        super().__init__()
        self.block0 = make_block(cfg[0], 3)
        self.block1 = make_block(cfg[1], cfg[0][-1])
        self.block2 = make_block(cfg[2], cfg[1][-1])
        self.block3 = make_block(cfg[3], cfg[2][-1])
        self.block4 = make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        init_weights(self, conv=normal_fan_out, linear_std=0.01)

    @property
    def _blocks(self):
        return (self.block0, self.block1, self.block2, self.block3, self.block4)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = F.relu(self.block0(x))
            return x, x
        if i < 4:
            x = (self.pool0, self.pool1, self.pool2)[i - 1](x)
        elif x.shape[-2] > 4 or x.shape[-1] > 4:
            x = self.pool3(x)
        pre = self._blocks[i](x)
        out = F.relu(pre)
        return out, (pre if preact else out)

    def pool(self, x):
        return x.mean((2, 3))          # = pool4 (global average); see models/base.py pool()

    def classify(self, pooled):
        return self.classifier(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
                              self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self):
        return [block[-1] for block in self._blocks[1:]]


def _register(name, cfg_key):
    def build(num_classes=100):
        return VGG(CFG[cfg_key], num_classes=num_classes)
    build.__doc__ = f"VGG with BN for CIFAR, configuration {cfg_key!r} ({name})."
    return register_model(name, family="vgg")(build)


vgg8 = _register("vgg8", "S")
vgg11 = _register("vgg11", "A")
vgg13 = _register("vgg13", "B")
vgg16 = _register("vgg16", "D")
vgg19 = _register("vgg19", "E")
