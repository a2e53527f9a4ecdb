"""DeiT-Tiny (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021), as tiny-transformers builds it for CIFAR-100 (``deit-ti_c100_*.yaml``):
16-pixel patches at 224 px (14x14 tokens), width 192, 12 blocks, 3 heads, MLP ratio 4, qkv bias,
a class token, learned position embeddings. 5,543,716 parameters for 100 classes at 224 px.

Stages end after blocks 0, 6 and 11 (the blocks locality guidance reads), so ``forward(x,
is_feat=True)`` returns three ``[B, 192, 14, 14]`` token maps, then the class token.
The DeiT distillation token that the reference adds for its KD row is not built (see README).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model
from .vit_blocks import TransformerLayer, ViTBase, check_sizes, drop_path_rates, init_vit_weights, layernorm


class PatchEmbedding(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.projection(x).flatten(2).transpose(1, 2)


class DeiT(ViTBase):
    guide_blocks = (0, 6, 11)

    def __init__(self, num_classes=100, img_size=224, patch_size=16, dim=192, depth=12, num_heads=3,
                 mlp_ratio=4.0, drop_path=0.0, guide_blocks=None, in_channels=3):
        super().__init__(img_size)
        check_sizes(img_size, patch_size, "deit")
        self.depth = depth
        if guide_blocks is not None:
            self.guide_blocks = tuple(guide_blocks)
        self.grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = PatchEmbedding(patch_size, in_channels, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, dim))
        dpr = drop_path_rates(drop_path, depth)
        self.layers = nn.ModuleList([TransformerLayer(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i])
                                     for i in range(depth)])
        self.norm = layernorm(dim)
        self.apply(init_vit_weights)
        self.fc = nn.Linear(dim, num_classes)          # the reference's ``head``, zero-initialised
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)

    def embed(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return x, (self.grid, self.grid)

    def block(self, j, state):
        x, hw = state
        return self.layers[j](x), hw


@register_model("deit_tiny", family="vit", options=("img_size", "patch_size", "drop_path"))
def deit_tiny(num_classes=100, img_size=224, patch_size=16, drop_path=0.0):
    """DeiT-Tiny: 192 wide, 12 blocks, 3 heads (tiny-transformers' deit-ti)."""
    return DeiT(num_classes, img_size=img_size, patch_size=patch_size, drop_path=drop_path)
