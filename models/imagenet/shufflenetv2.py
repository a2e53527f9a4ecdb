"""ImageNet ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018) with torchvision's state_dict layout, which CA-MKD's
``models/shuffleNetv2_imagenet.py`` keeps: ``conv1`` (3x3 stride-2 conv, BN, ReLU), a 3x3
stride-2 max pooling, ``stage2..stage4`` of 4/8/4 units, ``conv5`` (1x1 conv, BN, ReLU) and
``fc``. A unit with stride 2 runs both halves of the input through ``branch1`` (3x3 depthwise
stride-2 conv, BN, 1x1 conv, BN, ReLU) and ``branch2`` (1x1 conv, BN, ReLU, 3x3 depthwise conv,
BN, 1x1 conv, BN, ReLU) and concatenates them; a unit with stride 1 keeps the first half of the
channels and runs the second through ``branch2``; both end with a channel shuffle of 2 groups.
Weights keep PyTorch's default initialisation, as in torchvision.

Registered names (CA-MKD's): ``ShuffleV2_Imagenet`` (1.0x: 116/232/464 channels) and
``shufflenet_v2_x0_5`` (0.5x: 48/96/192), both with a 1024-channel ``conv5``; both are also in
the CIFAR zoo, where CA-MKD's scripts ask for them (they run at 32 px: the last stage is 1x1).

Stages: 0 = conv1 + max pooling (56 px for a 224-px input, 24 channels), 1..3 = stage2..stage4
(28, 14, 7 px); ``pool`` is conv5 plus global average pooling (the mean, as torchvision).
Features: the four stage outputs, then the pooled 1024-vector. With ``preact`` a stage's feature
is its last unit's [kept half, ``branch2`` before its final ReLU], shuffled like the output, so
``relu(preact) == feature`` (the kept half is already non-negative); the stem is post-ReLU.
``get_bn_before_relu`` is not supported (no BN spans a stage's channels before its ReLU).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..base import ZooModel, run_blocks
from ..blocks import ShuffleBlock
from ..registry import register_model


def depthwise(channels, stride):
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        half = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise(inp, stride), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, half, 1, 1, 0, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else half, half, 1, 1, 0, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            depthwise(half, stride), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, 1, 0, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        self.shuffle = ShuffleBlock(2)

    def forward(self, x, return_preact=False):
        if self.stride == 1:
            kept, x2 = x.chunk(2, dim=1)
        else:
            kept, x2 = self.branch1(x), x
        if return_preact:
            pre = torch.cat((kept, self.branch2[:-1](x2)), dim=1)
            return self.shuffle(pre.relu()), self.shuffle(pre)
        return self.shuffle(torch.cat((kept, self.branch2(x2)), dim=1))


class ShuffleNetV2(ZooModel):
    num_stages = 4

    def __init__(self, repeats, channels, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = channels[0]
        for name, n, oup in zip(("stage2", "stage3", "stage4"), repeats, channels[1:4]):
            setattr(self, name, nn.Sequential(InvertedResidual(inp, oup, 2),
                                              *[InvertedResidual(oup, oup, 1) for _ in range(n - 1)]))
            inp = oup
        self.conv5 = nn.Sequential(nn.Conv2d(inp, channels[4], 1, 1, 0, bias=False), nn.BatchNorm2d(channels[4]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[4], num_classes)

    @property
    def _stages(self):
        return (self.stage2, self.stage3, self.stage4)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.maxpool(self.conv1(x))
            return x, x
        return run_blocks(self._stages[i - 1], x, preact)

    def pool(self, x):
        return super().pool(self.conv5(x))

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.maxpool, *self._stages])

    def get_bn_before_relu(self):
        raise NotImplementedError(f"{self.arch or 'ShuffleNetV2'} has no BN right before its stage ReLUs "
                                  "(not supported by OFD)")


@register_model("ShuffleV2_Imagenet", family="shufflenetv2", input_size=224, default_lr=0.1, cifar_lr=0.01)
def shufflenet_v2_x1_0(num_classes=1000):
    """ImageNet ShuffleNet V2 1.0x (torchvision layout; CA-MKD's ``ShuffleV2_Imagenet``)."""
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes)


@register_model("shufflenet_v2_x0_5", family="shufflenetv2", input_size=224, default_lr=0.1, cifar_lr=0.01)
def shufflenet_v2_x0_5(num_classes=1000):
    """ImageNet ShuffleNet V2 0.5x (torchvision layout)."""
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], num_classes=num_classes)
