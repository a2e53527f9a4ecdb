"""Pieces that several zoo networks share: weight initialisation, residual blocks and layers, the
channel shuffle and ShuffleNet's stage methods.

Each piece reproduces the code it replaced exactly, down to the order in which modules are made
(a module draws its default initial weights from the global random stream when it is made), so
``torch.manual_seed(s); model_dict[name]()`` builds the same weights as before the merge
(``tests/test_models_zoo.py`` checks every name against ``tests/fixtures/model_init_digests.json``).

- ``init_weights(model, conv, linear_std, linear_bias)``: one loop for the initialisations of the
  ResNets (He et al., ICCV 2015, torchvision's ``kaiming_normal_(mode="fan_out")``), RepDistiller's
  VGG/MobileNetV2/WRN (``N(0, sqrt(2 / (k * k * out_channels)))``) and torchvision's MobileNetV2.
- ``BasicBlock``/``Bottleneck`` (He et al., "Deep Residual Learning for Image Recognition", CVPR
  2016) with the projection shortcut named as the checkpoints name it: ``downsample``
  (torchvision, RepDistiller's ``resnet.py``, CA-MKD's ImageNet ResNets; made before the
  convolutions) or ``shortcut`` (RepDistiller's ``resnetv2.py``; made after them).
- ``make_layer``: a group of blocks, the first one with the stride; ``FourLayerResNet``: the
  stages of the ImageNet ResNets and of RepDistiller's CIFAR ``resnetv2`` networks.
- ``ShuffleBlock`` (Zhang et al., CVPR 2018) and ``ShuffleNetStages``, the stem-plus-three-layers
  stage methods of RepDistiller's ShuffleNet V1 and V2.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch.nn as nn
import torch.nn.functional as F

from .base import ZooModel, run_blocks


# -- initialisation ------------------------------------------------------------------------------
def he_fan_out(weight):
    """torchvision's ResNet initialisation: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``."""
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def normal_fan_out(weight):
    """RepDistiller's VGG/MobileNetV2/WRN initialisation: ``N(0, sqrt(2 / (kh * kw * out_channels)))``
    (the variance of ``he_fan_out``; its standard deviation is computed in another order, which
    can differ in the last bit, so each network keeps the formula it was written with)."""
    fan_out = weight.shape[2] * weight.shape[3] * weight.shape[0]
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_out))


def init_weights(model: nn.Module, conv=he_fan_out, linear_std: Optional[float] = None,
                 linear_bias: bool = False) -> None:
    """Initialise ``model`` in place, module by module in ``model.modules()`` order: every Conv2d's
    weight by ``conv`` (and a bias to 0), every BatchNorm2d/GroupNorm to weight 1 and bias 0, every
    Linear's weight from ``N(0, linear_std)`` when ``linear_std`` is given and its bias to 0 when
    ``linear_std`` or ``linear_bias`` is given (otherwise Linear layers keep PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            conv(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if linear_std is not None or linear_bias:
                nn.init.zeros_(m.bias)


# -- residual blocks ------------------------------------------------------------------------------
def conv3x3(in_planes, out_planes, stride=1, groups=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def projection(in_planes, out_planes, stride) -> Optional[nn.Sequential]:
    """The 1x1 conv + BN shortcut of a block that changes shape, or None (the identity)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class _Residual(nn.Module):
    """A residual block: ``relu(branch(x) + shortcut(x))``; ``forward(x, return_preact=True)`` also
    returns the sum before the ReLU. Subclasses build the branch in ``_branch`` and run it in
    ``branch``; ``shortcut_name`` is the attribute (and state_dict prefix) of the projection."""

    expansion = 1
    shortcut_name = "downsample"

    def __init__(self, inplanes, planes, stride=1, **branch_kw):
        super().__init__()
        out_planes = planes * self.expansion
        early = self.shortcut_name == "downsample"      # torchvision makes the projection first
        proj = projection(inplanes, out_planes, stride) if early else None
        self._branch(inplanes, planes, stride, **branch_kw)
        if not early:
            proj = projection(inplanes, out_planes, stride)
        setattr(self, self.shortcut_name, proj)

    def _branch(self, inplanes, planes, stride, **kw):
        raise NotImplementedError

    def branch(self, x):
        raise NotImplementedError

    def forward(self, x, return_preact=False):
        proj = getattr(self, self.shortcut_name)
        preact = self.branch(x) + (x if proj is None else proj(x))
        out = F.relu(preact)
        return (out, preact) if return_preact else out


class BasicBlock(_Residual):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (``downsample``)."""

    expansion = 1

    def _branch(self, inplanes, planes, stride):
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def branch(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Residual):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN plus the shortcut (``downsample``).
    ``base_width`` widens the inner convolutions as torchvision's wide ResNets do
    (``width = planes * base_width / 64``; 128 for Wide ResNet-50-2)."""

    expansion = 4

    def _branch(self, inplanes, planes, stride, base_width=64):
        width = int(planes * (base_width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def branch(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ShortcutBasicBlock(BasicBlock):
    """RepDistiller's ``resnetv2.py`` basic block: the projection is ``shortcut``, made last."""
    shortcut_name = "shortcut"


class ShortcutBottleneck(Bottleneck):
    """RepDistiller's ``resnetv2.py`` bottleneck: the projection is ``shortcut``, made last."""
    shortcut_name = "shortcut"


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1, **block_kw) -> Tuple[nn.Sequential, int]:
    """``blocks`` blocks, the first with ``stride`` (and the projection when the shape changes);
    returns the layer and its output channels."""
    layers = []
    for i in range(blocks):
        layers.append(block(inplanes, planes, stride if i == 0 else 1, **block_kw))
        inplanes = planes * block.expansion
    return nn.Sequential(*layers), inplanes


def last_bns(layers) -> List[nn.Module]:
    """The BN before the final ReLU of each layer's last block (``get_bn_before_relu``)."""
    return [layer[-1].bn3 if isinstance(layer[-1], Bottleneck) else layer[-1].bn2 for layer in layers]


class FourLayerResNet(ZooModel):
    """A stem (``stem``, stage 0), then ``layer1..layer4`` of residual blocks with 64/128/256/512
    planes and strides 1/2/2/2 (stages 1..4): the ImageNet ResNet and RepDistiller's CIFAR
    ``resnetv2`` family. Features: the stem output, each layer's output (its last block before the
    final ReLU with ``preact``), then the pooled vector."""

    num_stages = 5

    def _make_layers(self, block, num_blocks, **block_kw) -> int:
        """Make layer1..layer4 in order; returns the channels of layer4's output."""
        planes = 64
        for k, (width, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            layer, planes = make_layer(block, planes, width, n, stride=1 if k == 0 else 2, **block_kw)
            setattr(self, f"layer{k + 1}", layer)
        return planes

    @property
    def _layers(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stem(self, x):
        raise NotImplementedError

    def stage(self, i, x, preact=False):
        if i == 0:
            x = self.stem(x)
            return x, x
        return run_blocks(self._layers[i - 1], x, preact)

    def get_bn_before_relu(self):
        return last_bns(self._layers)


# -- ShuffleNets ----------------------------------------------------------------------------------
class ShuffleBlock(nn.Module):
    """Channel shuffle (ShuffleNet): view channels as [groups, C/groups], transpose, flatten."""

    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNetStages(ZooModel):
    """RepDistiller's ShuffleNets: stage 0 = ``relu(bn1(conv1(x)))`` (always post-ReLU), stages
    1..3 = ``layer1..layer3`` (the last unit's pre-activation with ``preact``), classifier
    ``linear``; no BN right before the stage ReLUs (``get_bn_before_relu`` raises, as in RepDistiller)."""

    num_stages = 4

    def stage(self, i, x, preact=False):
        if i == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        return run_blocks((self.layer1, self.layer2, self.layer3)[i - 1], x, preact)

    def classify(self, pooled):
        return self.linear(pooled)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        raise NotImplementedError(f"{self.arch or type(self).__name__} has no BN right before its stage ReLUs "
                                  "(not supported by OFD, as in RepDistiller)")
