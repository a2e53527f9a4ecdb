"""The one pattern every zoo network follows: map stages, then a pooling, then a classifier.

A network is a chain ``x -> stage 0 -> stage 1 -> ... -> stage K-1 -> pool -> classify``. Each
stage takes the previous stage's output (the image for stage 0) and returns two tensors: ``out``,
which the next stage consumes, and ``feat``, the feature that ``forward(x, is_feat=True)`` reports
for that stage: ``out`` itself, or its pre-activation (before the last ReLU) when ``preact=True``.
That is exactly RepDistiller's forward contract, and everything distillation needs follows from it:

- ``forward(x, is_feat=True, preact=False) -> (feats, logits)``: the K stage features, then the
  pooled feature, as RepDistiller returns them;
- ``run_stages(x, begin, end)``: a slice of the network, for grafting student and teacher stages
  (spot-adaptive routing);
- ``head(feature_map)``: the network's own classifier head on any map shaped like its last stage
  output (CA-MKD classifies a student feature with each teacher's head);
- ``feature_shapes()``: the shapes of all features, from a dry forward.

Subclasses keep RepDistiller's attribute names (``conv1``, ``layer1``, ``fc``, ...) so that
state_dicts saved by RepDistiller, mdistiller or CA-MKD load unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class ZooModel(nn.Module):
    """Base class of all zoo models. Subclasses set ``num_stages`` and implement ``stage`` and
    ``pool``; ``classify`` defaults to ``self.fc``."""

    num_stages: int = 0
    arch: str = ""          # registry name, set by the registry's builder
    input_size: int = 32    # image size the model is built for, set by the registry's builder
    # When set, images of another size are resized (bilinear) to this square size on their device
    # before stage 0: a student trained at --student_img_size, or a ViT built for a fixed token grid.
    input_resize: Optional[int] = None

    # -- what subclasses implement --------------------------------------------------------------
    def stage(self, i: int, x: Tensor, preact: bool = False) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def pool(self, x: Tensor) -> Tensor:
        """Last stage output -> pooled feature vector [B, D] (global average pooling).

        A mean, not ``adaptive_avg_pool2d(x, 1)``: the same numbers, but its CUDA backward has no
        deterministic version (``--deterministic`` stopped every GPU run there) and under vmap
        (fused teachers) a channels_last input fell back to a slow per-teacher loop."""
        return x.mean((2, 3))

    def classify(self, pooled: Tensor) -> Tensor:
        return self.fc(pooled)

    def get_feat_modules(self) -> nn.ModuleList:
        raise NotImplementedError

    def get_bn_before_relu(self) -> List[nn.Module]:
        raise NotImplementedError

    # -- the shared contract --------------------------------------------------------------------
    def fit_input(self, x: Tensor) -> Tensor:
        """The image at ``input_resize`` (bilinear, as tiny-transformers resizes for its teacher)."""
        size = self.input_resize
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False):
        x = self.fit_input(x)
        feats = []
        for i in range(self.num_stages):
            x, feat = self.stage(i, x, preact)
            if is_feat:
                feats.append(feat)
        pooled = self.pool(x)
        logits = self.classify(pooled)
        if is_feat:
            feats.append(pooled)
            return feats, logits
        return logits

    def run_stages(self, x: Tensor, begin: int = 0, end: int | None = None) -> Tensor:
        """Run stages ``begin .. end-1`` on ``x`` (the output of stage ``begin-1``, or the image)."""
        end = self.num_stages if end is None else end
        if begin == 0:
            x = self.fit_input(x)
        for i in range(begin, end):
            x, _ = self.stage(i, x, False)
        return x

    def head(self, feature_map: Tensor) -> Tensor:
        """The classifier head (pool + classifier) on a map shaped like the last stage output."""
        return self.classify(self.pool(feature_map))

    @torch.no_grad()
    def feature_shapes(self, image_size: int | None = None, channels: int = 3) -> List[Tuple[int, ...]]:
        """Shapes (without the batch dimension) of ``forward(x, is_feat=True)``'s features for a
        square ``image_size`` input (default: the size the model is registered for)."""
        image_size = self.input_size if image_size is None else image_size
        was_training = self.training
        param = next(self.parameters())
        self.eval()
        try:
            x = torch.zeros(2, channels, image_size, image_size, device=param.device, dtype=param.dtype)
            feats, _ = self.forward(x, is_feat=True)
        finally:
            self.train(was_training)
        return [tuple(f.shape[1:]) for f in feats]


def batch_norm_without_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(x)`` without touching its running statistics.

    Pre-activation networks (WRN) report a stage's pre-activation feature as the next BN's output;
    calling the BN module a second time in training mode would update its running statistics
    twice per step (RepDistiller does this). This computes the same values and updates nothing.
    """
    if bn.training or bn.running_mean is None:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def run_blocks(blocks: Sequence[nn.Module], x: Tensor, preact: bool) -> Tuple[Tensor, Tensor]:
    """Run residual blocks; the last one is asked for its pre-activation when ``preact``.

    Blocks take ``forward(x, return_preact=False)`` and return ``out`` or ``(out, preact)``.
    """
    for block in blocks[:-1]:
        x = block(x)
    if preact:
        return blocks[-1](x, return_preact=True)
    x = blocks[-1](x)
    return x, x
