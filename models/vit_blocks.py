"""Building blocks of the vision-transformer students (DeiT, T2T-ViT, PiT, PVT).

Written after the tiny-transformers code (Li et al., "Locality Guidance for Improving Vision
Transformers on Tiny Datasets", ECCV 2022; ``pycls/models/transformers/common.py``), which the
logit-standardization work (Sun et al., CVPR 2024) reuses for its "Distilling ViTs" table:
pre-norm blocks, LayerNorm eps 1e-6, exact GELU, drop path (stochastic depth) on both residual
branches. No timm: ``DropPath`` and the truncated-normal init are re-done here.

``ViTBase`` maps a transformer onto the zoo contract (``models.base.ZooModel``): the network is a
flat list of blocks; ``guide_blocks`` names the blocks after which a feature is reported (the
blocks locality guidance reads, e.g. 0, 6, 11 for DeiT-Tiny), and stage ``i`` runs the blocks up to
``guide_blocks[i]``. A stage's ``out`` is the token state ``(tokens [B, L, C], (H, W))`` where the
first ``L - H*W`` tokens are class tokens; its ``feat`` is the patch tokens as a ``[B, C, H, W]``
map. The pooled vector is the final-norm class token, as the reference classifies it.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .base import ZooModel

LN_EPS = 1e-6     # tiny-transformers' TRANSFORMER.LN_EPS


def layernorm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


def drop_path_rates(rate: float, depth: int) -> list:
    """The stochastic-depth rule of DeiT/T2T/PVT: 0 for the first block rising linearly to
    ``rate`` for the last."""
    return [x.item() for x in torch.linspace(0, rate, depth)]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016) per sample: in training, a residual branch is
    zeroed for a sample with probability ``p`` and scaled by ``1/(1-p)`` otherwise."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention (``MultiheadAttention`` of tiny-transformers, in == out)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv_transform = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.projection = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, c = x.shape
        qkv = self.qkv_transform(x).view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * self.scale, dim=-1)
        out = (attn @ qkv[2]).transpose(1, 2).reshape(n, length, c)
        return self.projection(out)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_ratio: float, out_dim: int | None = None):
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm block: ``x + dp(attn(ln(x)))``, then ``x + dp(mlp(ln(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = layernorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layernorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module, std: float = 0.02, truncated: bool = True):
    """DeiT/PVT init: linear weights N(0, 0.02) (truncated at +-2 in timm's sense), zero biases,
    LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        if truncated:
            nn.init.trunc_normal_(module.weight, std=std, a=-2.0, b=2.0)
        else:
            nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


TokenState = Tuple[Tensor, Tuple[int, int]]


def tokens_to_map(state: TokenState) -> Tensor:
    """The patch tokens of a state as a ``[B, C, H, W]`` map (class tokens dropped)."""
    x, (h, w) = state
    patches = x[:, x.shape[1] - h * w:]
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class ViTBase(ZooModel):
    """Zoo contract for a transformer given as a flat list of blocks; see the module docstring.

    Subclasses set ``guide_blocks``, ``depth``, ``num_features``, build ``self.fc`` and
    ``self.norm``, and implement ``embed(image) -> state`` and ``block(j, state) -> state``."""

    guide_blocks: Tuple[int, ...] = ()
    depth: int = 0

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = int(img_size)
        # the student sees the data at its own size: the image is resized on the device, after the
        # loader's crop and flip (the reference resizes on the CPU before the crop)
        self.input_resize = self.img_size

    @property
    def num_stages(self) -> int:   # type: ignore[override]
        return len(self.guide_blocks)

    def embed(self, x: Tensor) -> TokenState:
        raise NotImplementedError

    def block(self, j: int, state: TokenState) -> TokenState:
        raise NotImplementedError

    def stage(self, i: int, x, preact: bool = False):
        # preact has no meaning for a transformer (no ReLU); the token map is reported either way
        first = 0 if i == 0 else self.guide_blocks[i - 1] + 1
        last = self.depth - 1 if i == self.num_stages - 1 else self.guide_blocks[i]
        state = self.embed(x) if i == 0 else x
        for j in range(first, last + 1):
            state = self.block(j, state)
        return state, tokens_to_map(state)

    def pool(self, state) -> Tensor:
        """Final LayerNorm, then the class token (what the reference's head reads)."""
        x, _ = state
        return self.norm(x)[:, 0]

    def head(self, feature_map: Tensor) -> Tensor:
        """The classifier on a ``[B, C, H, W]`` map shaped like the last stage's token map: it has
        no class token, so the patch tokens are normed and averaged (an approximation of the
        network's own class-token path, for losses that classify student maps with a teacher head)."""
        if isinstance(feature_map, tuple):
            return self.classify(self.pool(feature_map))
        tokens = feature_map.flatten(2).transpose(1, 2)
        return self.fc(self.norm(tokens).mean(1))

    def get_feat_modules(self) -> nn.ModuleList:
        raise NotImplementedError(f"{type(self).__name__}: connector pre-training (FT/AB/FSP init stage) "
                                  "is not defined for transformers")

    def get_bn_before_relu(self):
        raise NotImplementedError(f"{type(self).__name__} has no BatchNorm before a ReLU")

    def no_weight_decay(self) -> set:
        """Parameter names the reference keeps out of weight decay besides biases and norms."""
        return {"cls_token", "pos_embed", "distill_token"}


def check_sizes(img_size: int, patch: int, name: str):
    if img_size < patch or img_size % patch:
        raise ValueError(f"{name}: image size {img_size} must be a multiple of the patch size {patch}")


def flat_blocks(stages: Sequence[Sequence[nn.Module]]):
    """``[(stage index, block index in stage)]`` for every block, in order."""
    return [(s, b) for s, blocks in enumerate(stages) for b in range(len(blocks))]
