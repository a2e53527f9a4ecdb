"""ImageNet MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", arXiv:1704.04861, 2017), width 1.0.

The layout is mdistiller's: one ``model`` Sequential of a stride-2 3x3 conv-BN-ReLU and 13
depthwise-separable units (3x3 depthwise-BN-ReLU, 1x1 pointwise-BN-ReLU), then ``fc``; weights
keep PyTorch's default initialisation, as in mdistiller. (``model[14]`` is the pooling, without
parameters; here it is adaptive so smaller inputs work.)

Stages, grouped by resolution for a 224-px input: 0 = model[0:2] (112 px, 64 ch), 1 = model[2:4]
(56 px, 128), 2 = model[4:6] (28 px, 256), 3 = model[6:12] (14 px, 512), 4 = model[12:14]
(7 px, 1024). Features: the five stage outputs (post-ReLU, or the last unit's pointwise BN output
before its ReLU with ``preact``, as mdistiller's ``preact_feats``; the stem is always post-ReLU),
then the pooled vector.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..base import ZooModel
from ..registry import register_model


def conv_bn(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_dw(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


# (out channels, stride) of the 13 depthwise-separable units
UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
         (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNetV1(ZooModel):
    num_stages = 5
    # model[] index ranges of the stages
    STAGES = ((0, 2), (2, 4), (4, 6), (6, 12), (12, 14))

    def __init__(self, num_classes=1000):
        super().__init__()
        layers, inp = [conv_bn(3, 32, 2)], 32
        for oup, stride in UNITS:
            layers.append(conv_dw(inp, oup, stride))
            inp = oup
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def stage(self, i, x, preact=False):
        begin, end = self.STAGES[i]
        for j in range(begin, end - 1):
            x = self.model[j](x)
        last = self.model[end - 1]
        if preact and i > 0:
            pre = last[:-1](x)        # everything but the final ReLU
            return F.relu(pre), pre
        x = last(x)
        return x, x

    def pool(self, x):
        return self.model[14](x).flatten(1)

    def get_feat_modules(self):
        return nn.ModuleList([self.model])

    def get_bn_before_relu(self):
        return [self.model[end - 1][-2] for _, end in self.STAGES[1:]]


@register_model("MobileNetV1", family="mobilenetv1", input_size=224, default_lr=0.1)
def mobilenet_v1(num_classes=1000):
    """ImageNet MobileNetV1, width 1.0 (mdistiller layout)."""
    return MobileNetV1(num_classes=num_classes)
