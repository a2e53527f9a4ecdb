"""T2T-ViT-7 (Yuan et al., "Tokens-to-Token ViT", ICCV 2021), as tiny-transformers builds it for
CIFAR-100 (``t2t-7_c100_*.yaml``): a tokens-to-token stem of three soft splits (unfold 7/4/2, 3/2/1,
3/2/1) with two Performer layers of width 64 between them, then 7 blocks of width 256, 4 heads,
MLP ratio 2, no qkv bias, fixed sinusoidal position embeddings. At 224 px: 14x14 tokens,
4,024,394 trainable parameters for 100 classes (plus 54,528 fixed values held as buffers: the
Performers' random projections and the position table, which the reference keeps as frozen
parameters).

Stages end after blocks 0, 3 and 6 (tiny-transformers' guidance indices for T2T-ViT-7).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .vit_blocks import MLP, TransformerLayer, ViTBase, drop_path_rates, layernorm


class PerformerAttention(nn.Module):
    """Single-head Performer attention with positive random features (FAVOR+), ``in != out``:
    ``y = v + proj(attention)``, as the T2T stem uses it."""

    def __init__(self, in_dim: int, out_dim: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.out_dim = out_dim
        self.qkv_transform = nn.Linear(in_dim, out_dim * 3)
        self.projection = nn.Linear(out_dim, out_dim)
        self.m = int(out_dim * kernel_ratio)
        # fixed random features: a buffer (the reference: a parameter with requires_grad=False)
        self.register_buffer("w", nn.init.orthogonal_(torch.randn(self.m, out_dim)) * math.sqrt(self.m))

    def prm_exp(self, x):
        xd = (x * x).sum(dim=-1, keepdim=True) / 2
        wtx = torch.einsum("bti,mi->btm", x.float(), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.qkv_transform(x), self.out_dim, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        d = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)
        kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (d + 1e-8)
        return v + self.projection(y)


class PerformerLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = layernorm(in_dim)
        self.attn = PerformerAttention(in_dim, out_dim)
        self.norm2 = layernorm(out_dim)
        self.mlp = MLP(out_dim, 1.0)

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Token2Token(nn.Module):
    def __init__(self, in_channels, dim, token_dim=64, kernels=(7, 3, 3), strides=(4, 2, 2), paddings=(2, 1, 1)):
        super().__init__()
        self.kernels, self.strides, self.paddings = tuple(kernels), tuple(strides), tuple(paddings)
        self.attention = nn.ModuleList()
        channels = in_channels * kernels[0] ** 2
        for k in kernels[1:]:
            self.attention.append(PerformerLayer(channels, token_dim))
            channels = token_dim * k ** 2
        self.projection = nn.Linear(channels, dim)

    def forward(self, x):
        size = x.shape[-1]
        x = F.unfold(x, self.kernels[0], stride=self.strides[0], padding=self.paddings[0]).transpose(1, 2)
        size = (size + 2 * self.paddings[0] - self.kernels[0]) // self.strides[0] + 1
        for i, attention in enumerate(self.attention, start=1):
            x = attention(x).transpose(1, 2)
            x = x.reshape(x.shape[0], x.shape[1], size, size)
            x = F.unfold(x, self.kernels[i], stride=self.strides[i], padding=self.paddings[i]).transpose(1, 2)
            size = (size + 2 * self.paddings[i] - self.kernels[i]) // self.strides[i] + 1
        return self.projection(x), size


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2).double() / dim)[None]
    table = pos / rate
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table.float()[None]


class T2TViT(ViTBase):
    guide_blocks = (0, 3, 6)

    def __init__(self, num_classes=100, img_size=224, dim=256, depth=7, num_heads=4, mlp_ratio=2.0,
                 token_dim=64, drop_path=0.0, in_channels=3):
        super().__init__(img_size)
        self.depth = depth
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.t2t_module = Token2Token(in_channels, dim, token_dim)
        grid = img_size
        for k, s, p in zip(self.t2t_module.kernels, self.t2t_module.strides, self.t2t_module.paddings):
            grid = (grid + 2 * p - k) // s + 1
        if grid < 1:
            raise ValueError(f"t2t_vit: image size {img_size} is too small for the tokens-to-token stem")
        self.grid = grid
        self.register_buffer("pos_embed", sinusoid_table(grid ** 2 + 1, dim))
        dpr = drop_path_rates(drop_path, depth)
        self.layers = nn.ModuleList([TransformerLayer(dim, num_heads, mlp_ratio, qkv_bias=False, drop_path=dpr[i])
                                     for i in range(depth)])
        self.norm = layernorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x):
        x, size = self.t2t_module(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return x, (size, size)

    def block(self, j, state):
        x, hw = state
        return self.layers[j](x), hw


@register_model("t2t_vit_7", family="vit", options=("img_size", "drop_path"))
def t2t_vit_7(num_classes=100, img_size=224, drop_path=0.0):
    """T2T-ViT-7: 256 wide, 7 blocks, 4 heads, MLP ratio 2 (tiny-transformers' t2t-7)."""
    return T2TViT(num_classes, img_size=img_size, drop_path=drop_path)
