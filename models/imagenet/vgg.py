"""ImageNet VGG with batch normalisation (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015) in torchvision's state_dict layout, as CA-MKD's
``models/vgg_imagenet.py`` builds it: ``features`` (3x3 conv with bias, BN, ReLU per width, a 2x2
max pooling after each block), an adaptive average pooling to 7x7 and the three-layer
``classifier`` (25088 -> 4096 -> 4096 -> classes, ReLU and dropout 0.5 between).
Initialisation as torchvision's (He-normal fan-out convolutions, N(0, 0.01) linear layers).

Registered: ``vgg8_imagenet`` (CA-MKD's ``vgg8_bn`` of ``vgg_imagenet.py``: configuration "S",
one conv per block, 64/128/256/512/512 channels; about 124M parameters, 103M of them in the first
linear layer), also in the CIFAR zoo, where CA-MKD's scripts ask for it (at 32 px the last block
is 1x1 and the 7x7 pooling repeats it, as in CA-MKD).

Stages: one per conv block: 0 = block 0 (224 px), i = 1..4 = the max pooling before block i,
then block i (112, 56, 28, 14 px). ``pool`` is the last max pooling, the 7x7 pooling and the
flattening (the pooled vector has 25088 entries, CA-MKD's last feature); the 7x7 pooling is
the identity at 224 px, a repetition at 32 px, and otherwise adaptive average pooling computed
as matrix products (deterministic on CUDA, unlike ``adaptive_avg_pool2d``). Features: the five block
outputs after ReLU (with ``preact``, blocks 1..4 before it; block 0 is post-ReLU either way, as
the CIFAR VGG), then the pooled vector. Unlike CA-MKD's forward, which reports features at fixed
``features[]`` indices (after a BN, after a pooling, ...), every feature is a block output.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import ZooModel
from ..blocks import init_weights
from ..registry import register_model

CFG = {"S": [64, "M", 128, "M", 256, "M", 512, "M", 512, "M"]}


def pooling_matrix(n_in: int, n_out: int, like):
    """``[n_out, n_in]``: row i averages adaptive pooling's window i (``floor(i * n_in / n_out)`` to
    ``ceil((i + 1) * n_in / n_out)``), on ``like``'s device and dtype."""
    rows = torch.arange(n_out, device=like.device)
    start = (rows * n_in) // n_out
    end = ((rows + 1) * n_in + n_out - 1) // n_out
    cols = torch.arange(n_in, device=like.device)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_average(x, h_out: int, w_out: int):
    """``adaptive_avg_pool2d(x, (h_out, w_out))`` as two small matrix products: the same windows,
    and a backward that is deterministic on CUDA (adaptive_avg_pool2d's is not)."""
    ph, pw = pooling_matrix(x.shape[-2], h_out, x), pooling_matrix(x.shape[-1], w_out, x)
    return torch.einsum("oh,nchw,pw->ncop", ph, x, pw)


def make_features(cfg):
    layers, in_channels = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.ModuleList(layers)


class ImageNetVGG(ZooModel):
    def __init__(self, cfg, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = make_features(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        width = [v for v in cfg if v != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(width * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        init_weights(self, linear_std=0.01)
        # features[] index ranges of the stages: each ends with a block's ReLU; the poolings
        # between blocks open the next stage, the last pooling belongs to ``pool``
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self.stage_ranges = tuple(zip([0] + pools[:-1], pools))
        self.num_stages = len(self.stage_ranges)

    def stage(self, i, x, preact=False):
        begin, end = self.stage_ranges[i]
        for j in range(begin, end - 1):             # up to the block's last BN
            x = self.features[j](x)
        if preact and i > 0:
            return F.relu(x), x
        x = self.features[end - 1](x)               # the block's ReLU
        return x, x

    def pool(self, x):
        x = self.features[len(self.features) - 1](x)
        h, w = x.shape[-2:]
        if (h, w) == (1, 1):                        # CIFAR-sized input: the 7x7 pooling repeats it
            x = x.expand(-1, -1, 7, 7)
        elif (h, w) != (7, 7):
            x = adaptive_average(x, 7, 7)
        return x.flatten(1)

    def classify(self, pooled):
        return self.classifier(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.features])

    def get_bn_before_relu(self):
        return [self.features[end - 2] for _, end in self.stage_ranges[1:]]


@register_model("vgg8_imagenet", family="vgg", input_size=224, default_lr=0.1, cifar_lr=0.05)
def vgg8_imagenet(num_classes=1000):
    """VGG-8 with BN, ImageNet layout (CA-MKD's ``vgg8_imagenet``): configuration "S"."""
    return ImageNetVGG(CFG["S"], num_classes=num_classes)
