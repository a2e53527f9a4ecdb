"""PiT-Tiny (Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", ICCV 2021), as
tiny-transformers builds it for CIFAR-100 (``pit-ti_c100_*.yaml``): a 16x16 stride-8 convolutional
patch embedding (27x27 tokens at 224 px), three transformer stages of widths 64/128/256, depths
2/6/4, heads 2/4/8, MLP ratio 4, qkv bias, joined by depthwise stride-2 "conv head pooling"
(the class token goes through a linear layer). 4,615,972 parameters for 100 classes at 224 px.

Stages end after blocks 0, 6 and 11 (tiny-transformers' guidance indices), i.e. token maps of
64@27x27, 128@14x14 and 256@7x7 at 224 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model
from .vit_blocks import TransformerLayer, ViTBase, flat_blocks, layernorm, tokens_to_map


class ConvHeadPooling(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=stride + 1, padding=stride // 2, stride=stride,
                              groups=in_dim)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, state):
        x, _ = state
        fmap = self.conv(tokens_to_map(state))
        cls = self.fc(x[:, :1])
        h, w = fmap.shape[-2:]
        return torch.cat([cls, fmap.flatten(2).transpose(1, 2)], dim=1), (h, w)


class PiT(ViTBase):
    guide_blocks = (0, 6, 11)

    def __init__(self, num_classes=100, img_size=224, patch_size=16, stride=8, dims=(64, 128, 256),
                 depths=(2, 6, 4), heads=(2, 4, 8), mlp_ratio=4.0, drop_path=0.0, in_channels=3):
        super().__init__(img_size)
        if img_size < patch_size:
            raise ValueError(f"pit: image size {img_size} is smaller than the patch size {patch_size}")
        self.depth = sum(depths)
        self.grid = (img_size - patch_size) // stride + 1
        self.pos_embed = nn.Parameter(torch.randn(1, dims[0], self.grid, self.grid))
        self.patch_embed = nn.Conv2d(in_channels, dims[0], kernel_size=patch_size, stride=stride)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dims[0]))
        total = self.depth
        self.transformers = nn.ModuleList()
        self.pools = nn.ModuleList()
        start = 0
        for s, d in enumerate(depths):
            # PiT's rule: rate * i / total for the i-th block (not a linspace ending at rate)
            self.transformers.append(nn.ModuleList([
                TransformerLayer(dims[s], heads[s], mlp_ratio, qkv_bias=True, drop_path=drop_path * i / total)
                for i in range(start, start + d)]))
            start += d
            if s < len(depths) - 1:
                self.pools.append(ConvHeadPooling(dims[s], dims[s + 1], stride=2))
        self._where = flat_blocks(self.transformers)
        self.norm = layernorm(dims[-1])
        self.fc = nn.Linear(dims[-1], num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x):
        fmap = self.patch_embed(x) + self.pos_embed
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), fmap.flatten(2).transpose(1, 2)], dim=1)
        return tokens, (self.grid, self.grid)

    def block(self, j, state):
        s, b = self._where[j]
        if b == 0 and s > 0:
            state = self.pools[s - 1](state)
        x, hw = state
        return self.transformers[s][b](x), hw


@register_model("pit_tiny", family="vit", options=("img_size", "patch_size", "drop_path"))
def pit_tiny(num_classes=100, img_size=224, patch_size=16, drop_path=0.0):
    """PiT-Tiny: widths 64/128/256, depths 2/6/4 (tiny-transformers' pit-ti); stride = patch / 2."""
    return PiT(num_classes, img_size=img_size, patch_size=patch_size, stride=max(patch_size // 2, 1),
               drop_path=drop_path)
