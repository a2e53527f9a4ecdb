"""ImageNet MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), width 1.0, with torchvision's state_dict layout (``features.0..18``, each inverted
residual's ``conv``, ``classifier.1``), so torchvision weights load unchanged. Activations are
ReLU6; initialisation as torchvision's.

Stages, grouped by resolution for a 224-px input: 0 = features[0:2] (112 px, 16 ch),
1 = features[2:4] (56 px, 24), 2 = features[4:7] (28 px, 32), 3 = features[7:14] (14 px, 96),
4 = features[14:18] (7 px, 320); ``pool`` is features[18] (1x1 conv to 1280, BN, ReLU6) plus
global average pooling. Features: the five stage outputs, then the pooled 1280-vector. Inverted
residual blocks end linearly (no activation), so the ``preact`` features equal the plain ones.
CA-MKD's ``MobileNetV2_Imagenet`` (torchvision's code) is this network under another name; CA-MKD
reports its features at ``features`` indices 1, 4, 7, 14, 18, this zoo at 2, 4, 7, 14, 18.
"""
from __future__ import annotations

import torch.nn as nn

from ..base import ZooModel
from ..blocks import init_weights
from ..registry import register_model


def make_divisible(v, divisor=8):
    """Round a channel count to a multiple of ``divisor``, never more than 10% down."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    def __init__(self, inp, oup, kernel_size=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        assert stride in (1, 2)
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNReLU6(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),   # depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),                  # linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(ZooModel):
    num_stages = 5
    # features[] index ranges of the stages
    STAGES = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 18))

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2):
        super().__init__()
        setting = [  # expansion, channels, blocks, first stride
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 3, 2],
            [6, 64, 4, 2],
            [6, 96, 3, 1],
            [6, 160, 3, 2],
            [6, 320, 1, 1],
        ]
        input_channel = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        init_weights(self, linear_std=0.01)

    def stage(self, i, x, preact=False):
        begin, end = self.STAGES[i]
        for j in range(begin, end):
            x = self.features[j](x)
        return x, x

    def pool(self, x):
        return super().pool(self.features[18](x))

    def classify(self, pooled):
        return self.classifier(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.features])

    def get_bn_before_relu(self):
        return [self.features[end - 1].conv[-1] for _, end in self.STAGES[1:]]


@register_model("MobileNetV2", family="mobilenetv2", input_size=224, default_lr=0.1)
def mobilenet_v2(num_classes=1000):
    """ImageNet MobileNetV2, width 1.0 (torchvision layout)."""
    return MobileNetV2(num_classes=num_classes)


@register_model("MobileNetV2_Imagenet", family="mobilenetv2", input_size=224, default_lr=0.1, cifar_lr=0.01)
def mobilenet_v2_imagenet(num_classes=1000):
    """CA-MKD's ``MobileNetV2_Imagenet``: the same network as ``MobileNetV2`` of this zoo (torchvision's)."""
    return MobileNetV2(num_classes=num_classes)
