"""CIFAR MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), in the half-width variant that RepDistiller calls ``mobile_half`` (from "Knowledge
Distillation via Route Constrained Optimization", Jin et al., ICCV 2019).

Expansion T=6, width 0.5: a stride-2 3x3 stem ``conv1`` to 16 channels, seven groups ``blocks[0..6]``
of inverted residual blocks (each ``conv`` = 1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1
project-BN, with an identity shortcut when the shape allows), a 1x1 ``conv2`` to 1280 channels
with BN and ReLU, global average pooling and ``classifier.0``. Unlike torchvision's version the
first group also has an expansion conv and the stride schedule is shifted for 32-px inputs.

Stages: 0 = conv1, 1 = blocks[0..1], 2 = blocks[2], 3 = blocks[3..4], 4 = blocks[5..6]; ``pool`` is
conv2 plus global pooling. Features: the five stage outputs, then the pooled 1280-vector. Blocks
end with a linear bottleneck (no ReLU), so the ``preact`` features equal the plain ones.
"""
from __future__ import annotations

import torch.nn as nn

from .base import ZooModel
from .blocks import init_weights, normal_fan_out
from .registry import register_model


def conv_bn_relu(inp, oup, kernel_size, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        assert stride in (1, 2)
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),                            # expand
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),     # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),                            # project (linear)
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(ZooModel):
    num_stages = 5
    # which of the seven block groups make up stages 1..4
    STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))

    def __init__(self, T=6, width_mult=0.5, num_classes=100):
        super().__init__()
        setting = [  # expansion, channels, blocks, first stride
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        init_weights(self, conv=normal_fan_out, linear_std=0.01)

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.conv1(x)
        else:
            for g in self.STAGE_GROUPS[i - 1]:
                x = self.blocks[g](x)
        return x, x

    def pool(self, x):
        return super().pool(self.conv2(x))

    def classify(self, pooled):
        return self.classifier(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.blocks])

    def get_bn_before_relu(self):
        return [self.blocks[groups[-1]][-1].conv[-1] for groups in self.STAGE_GROUPS]


@register_model("MobileNetV2", family="mobilenetv2", default_lr=0.01)
def mobile_half(num_classes=100):
    """MobileNetV2 for CIFAR, expansion 6, width 0.5 (RepDistiller's ``mobile_half``)."""
    return MobileNetV2(T=6, width_mult=0.5, num_classes=num_classes)
