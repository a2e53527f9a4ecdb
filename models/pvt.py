"""PVT-Tiny (Wang et al., "Pyramid Vision Transformer", ICCV 2021), as tiny-transformers builds it
for CIFAR-100 (``pvt-ti_c100_*.yaml``): four stages of widths 64/128/320/512, two blocks each,
heads 1/2/5/8, MLP ratios 8/8/4/4, spatial-reduction ratios 8/4/2/1, patch embeddings 4/2/2/2 with
LayerNorm, a class token in the last stage only. At 224 px the token grids are 56/28/14/7.
12,767,588 parameters for 100 classes at 224 px.

Stages end after blocks 0, 3 and 7 (tiny-transformers' guidance indices): token maps of 64@56x56,
128@28x28 and 512@7x7 at 224 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .vit_blocks import DropPath, ViTBase, drop_path_rates, flat_blocks, init_vit_weights, layernorm, tokens_to_map


class SRAttention(nn.Module):
    """Spatial-reduction attention: keys and values from a stride-``sr`` convolution of the map."""

    def __init__(self, dim, num_heads, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = layernorm(dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = x.transpose(1, 2).reshape(b, c, h, w)
            x = self.norm(self.sr(x).reshape(b, c, -1).transpose(1, 2))
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.softmax(q @ kv[0].transpose(-2, -1) * self.scale, dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, sr_ratio, drop_path):
        super().__init__()
        self.norm1 = layernorm(dim)
        self.attn = SRAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layernorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_dim, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel_size=patch, stride=patch)
        self.norm = layernorm(dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class PVT(ViTBase):
    guide_blocks = (0, 3, 7)

    def __init__(self, num_classes=100, img_size=224, patches=(4, 2, 2, 2), dims=(64, 128, 320, 512),
                 depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
                 drop_path=0.0, in_channels=3):
        super().__init__(img_size)
        self.depth = sum(depths)
        self.num_levels = len(dims)
        dpr = drop_path_rates(drop_path, self.depth)
        grid, cur = img_size, 0
        for i in range(self.num_levels):
            grid //= patches[i]
            if grid < 1:
                raise ValueError(f"pvt: image size {img_size} gives a {grid}x{grid} grid at stage {i}")
            last = i == self.num_levels - 1
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(patches[i], in_channels if i == 0 else dims[i - 1], dims[i]))
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid * grid + int(last), dims[i])))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                Block(dims[i], heads[i], mlp_ratios[i], sr_ratios[i], dpr[cur + j]) for j in range(depths[i])]))
            cur += depths[i]
        self._where = flat_blocks([getattr(self, f"block{i + 1}") for i in range(self.num_levels)])
        self.norm = layernorm(dims[-1])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1]))
        self.fc = nn.Linear(dims[-1], num_classes)
        for i in range(self.num_levels):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        self.apply(init_vit_weights)

    def _enter(self, level: int, image_or_map):
        x, (h, w) = getattr(self, f"patch_embed{level + 1}")(image_or_map)
        if level == self.num_levels - 1:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + getattr(self, f"pos_embed{level + 1}"), (h, w)

    def embed(self, x):
        return self._enter(0, x)

    def block(self, j, state):
        s, b = self._where[j]
        if b == 0 and s > 0:
            state = self._enter(s, tokens_to_map(state))
        x, (h, w) = state
        return getattr(self, f"block{s + 1}")[b](x, h, w), (h, w)


@register_model("pvt_tiny", family="vit", options=("img_size", "drop_path"))
def pvt_tiny(num_classes=100, img_size=224, drop_path=0.0):
    """PVT-Tiny: widths 64/128/320/512, two blocks per stage (tiny-transformers' pvt-ti)."""
    return PVT(num_classes, img_size=img_size, drop_path=drop_path)
