"""Batched augmentations for device-resident data: ``fn(images, generator) -> float in [0, 1]``.

``images`` is a uint8 batch ``[B, C, H, W]`` on the training device; ``generator`` is the loader's
per-epoch ``torch.Generator``. The function returns float32 in [0, 1]; the loader then normalises
with the data set's mean/std. Adding a view (e.g. MLKD's 'strong') is one
``@register_augmentation('name')`` function in this file or anywhere else.

What "the same on CPU and CUDA" means (the promise every view here keeps, and the CUDA tests
check): for the same uint8 images and the same seed, a view returns *bit-identical* float32
images on any device. It is kept by construction:

1. Every random draw is made on the CPU, from the loader's CPU generator, in a documented order
   that does not depend on the images' device (``crop_flip_params``, ``strong_params``; a test
   checks that augmenting CPU and ``meta`` images consumes the generator identically). Anything
   computed from the draws alone with floating-point library functions (the rotation's sine and
   cosine, the fixed-point affine coefficients) is computed there too, so CUDA's ``sin``/``cos``,
   which may differ from the CPU's in the last bit, never decide a pixel.
2. On the device the images only meet integer arithmetic, gathers, comparisons, and single
   IEEE float operations (one rounding each, the same on every device: no reductions whose
   summation order could differ, no fused multiply-adds, no division by a scalar, which CUDA turns
   into a multiplication by its reciprocal).
3. uint8 -> [0, 1] is a lookup in a 256-entry table made on the CPU (``x / 255`` there), not a
   division on the device.

The loader's normalisation ``(x - mean) / std`` divides by a device tensor (one correctly rounded
IEEE division), so its output is the same on every device too.

'standard' is RepDistiller's CIFAR training augmentation, ``RandomCrop(32, padding=4)`` followed
by ``RandomHorizontalFlip()``, done for the whole batch with one gather instead of a per-image
loop: the batch is zero-padded by 4 pixels in uint8 (torchvision pads the PIL image with 0 before
``ToTensor``/``Normalize``, so padded pixels are black, not the mean), then for each sample a
top/left offset, each uniform on 0..8 (81 equally likely positions, as ``RandomCrop.get_params``
draws them), and a flip with probability 1/2 are drawn; an index grid built from those picks the
output pixels out of the padded batch.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataError

AugmentFn = Callable[[Tensor, torch.Generator], Tensor]
AUGMENTATIONS: Dict[str, AugmentFn] = {}
CROP_PADDING = 4


def register_augmentation(name: str):
    """Register a batched augmentation ``fn(uint8 [B,C,H,W], generator) -> float [0,1]``."""
    def wrap(fn: AugmentFn) -> AugmentFn:
        if name in AUGMENTATIONS:
            raise ValueError(f"augmentation {name!r} is registered twice")
        AUGMENTATIONS[name] = fn
        return fn
    return wrap


def augmentation_names():
    return sorted(AUGMENTATIONS)


def get_augmentation(name: str) -> AugmentFn:
    if name not in AUGMENTATIONS:
        raise DataError(f"unknown view/augmentation {name!r}; expected one of: "
                        f"{', '.join(augmentation_names())}")
    return AUGMENTATIONS[name]


def to_unit(images: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1] (``x / 255``, as ``ToTensor`` does), by a lookup in a table made
    on the CPU: CUDA divides by a scalar as a multiplication by ``1/255``, which is not always the
    correctly rounded quotient, so a division on the device could differ from the CPU in the last bit."""
    table = (torch.arange(256, dtype=torch.float32) / 255).to(images.device)
    return table[images.long()]


def crop_flip_params(batch: int, generator: torch.Generator, pad: int = CROP_PADDING
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-sample (top, left, flip): offsets uniform on 0..2*pad, flip a fair coin.

    Drawn in this order from ``generator``: all tops, all lefts, all flips."""
    dev = generator.device
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=dev)
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=dev)
    flip = torch.randint(0, 2, (batch,), generator=generator, device=dev).bool()
    return top, left, flip


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int = CROP_PADDING
              ) -> Tensor:
    """Zero-pad by ``pad``, crop ``H x W`` at (top, left) of the padded image, then mirror the
    samples with ``flip``: ``out[b, :, y, x] = padded[b, :, top+y, left+x']`` with ``x' = x`` or
    ``W-1-x``. uint8 in, uint8 out; one gather for the whole batch."""
    b, c, h, w = images.shape
    dev = images.device
    top, left, flip = top.to(dev), left.to(dev), flip.to(dev)
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros, still uint8
    wp = w + 2 * pad
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    rows = top[:, None] + ys                                        # [B, H]
    cols = left[:, None] + torch.where(flip[:, None], (w - 1) - xs, xs)  # [B, W]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


@register_augmentation("none")
def no_augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
    """Evaluation view: the image itself."""
    return to_unit(images)


@register_augmentation("standard")
def standard_augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
    """RepDistiller's CIFAR training view: 4-pixel zero-padded random crop + horizontal flip."""
    top, left, flip = crop_flip_params(images.shape[0], generator)
    # one host-to-device copy for the three parameter vectors instead of three
    top, left, flip = torch.stack([top, left, flip.long()]).to(images.device)
    return to_unit(crop_flip(images, top, left, flip.bool()))


# --------------------------------------------------------------------------------------------
# 'strong': MLKD's strong view (Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023).
#
# The MLKD reference (and the logit-standardization code built on it) makes its strong view with
# ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()`` and FixMatch's RandAugment variant
# (Sohn et al., NeurIPS 2020): two operations drawn uniformly with replacement from 14, each with a
# magnitude drawn uniformly from its own range, then Cutout of a random size. Here the same recipe
# runs batched on the training device, each operation following Pillow's arithmetic (blend with
# truncation, ITU-R 601 grey ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, 16.16 fixed-point
# nearest-neighbour affine warps with black fill, ...): on the CPU every operation equals Pillow's
# pixel for pixel (tests/test_augment.py). The random parameters are drawn on the CPU, so a
# seed gives the same parameters on every device; the arithmetic is integer, or float32/float64
# elementwise in Pillow's order, so the pixels are the same on CUDA (see the module docstring).
# Operations (range of the magnitude v):
#   autocontrast, equalize, identity (no magnitude); brightness, color, contrast, sharpness
#   (v in [0.05, 0.95]: blend with black / grey / mean grey / 3x3-smoothed image); posterize
#   (v in [4, 8]: keep int(v) bits); solarize (v in [0, 256]: invert pixels >= v); rotate (v in
#   [-30, 30] degrees about the centre); shear_x, shear_y (v in [-0.3, 0.3]); translate_x,
#   translate_y (v in [-0.3, 0.3] of the width/height).
# Cutout: a square of side ``s = u * W`` with ``u`` uniform on [0, 0.5), centre uniform on the
# image, corner ``(int(max(0, c - s/2)))``, pixels from the corner to ``int(min(W, corner + s))``
# inclusive set to (125, 123, 114) (grey 124 for other channel counts), as the reference draws
# it; the reference draws the centre with ``np.random.uniform(w)``, i.e. on (1, w] (numpy's
# ``uniform(low=w, high=1)``), we draw it on [0, w).
# Random numbers, all from the loader's CPU generator and moved to the device in one copy, in this
# order: crop tops, lefts, flips (as 'standard'); the operation index of every sample for round 1
# then round 2 (``randint(0, 14)``); the uniform magnitude draws for round 1 then round 2; the
# Cutout size fraction, centre x and centre y.
# --------------------------------------------------------------------------------------------

RANDAUG_OPS = ("autocontrast", "brightness", "color", "contrast", "equalize", "identity", "posterize",
               "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
RANDAUG_RANGES = {"autocontrast": (0.0, 1.0), "brightness": (0.05, 0.95), "color": (0.05, 0.95),
                  "contrast": (0.05, 0.95), "equalize": (0.0, 1.0), "identity": (0.0, 1.0),
                  "posterize": (4.0, 8.0), "rotate": (-30.0, 30.0), "sharpness": (0.05, 0.95),
                  "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0.0, 256.0),
                  "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3)}
RANDAUG_NUM_OPS = 2
CUTOUT_MAX_FRACTION = 0.5
CUTOUT_FILL = (125, 123, 114)
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _col(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def blend(degenerate: Tensor, images: Tensor, alpha: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, image, alpha)`` per sample: ``d + alpha * (x - d)`` in
    float32, clipped to [0, 255] and truncated. uint8 in (broadcastable), uint8 out."""
    d = degenerate.to(torch.float32)
    out = d + _col(alpha.to(torch.float32)) * (images.to(torch.float32) - d)
    return out.clamp_(0, 255).to(torch.uint8)


def grey(images: Tensor) -> Tensor:
    """Pillow's RGB -> L: ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, ``[B, 1, H, W]`` uint8.
    Images with other channel counts: the rounded channel mean."""
    x = images.to(torch.int32)
    if images.shape[1] == 3:
        g = (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768) >> 16
    else:
        g = (x.sum(1, keepdim=True) * 2 + images.shape[1]) // (2 * images.shape[1])
    return g.to(torch.uint8)


def apply_lut(images: Tensor, lut: Tensor) -> Tensor:
    """Per (sample, channel) lookup table ``lut [B, C, 256]`` applied to uint8 images."""
    b, c, h, w = images.shape
    out = lut.to(torch.uint8).gather(2, images.reshape(b, c, h * w).long())
    return out.reshape(b, c, h, w)


def histograms(images: Tensor) -> Tensor:
    """``[B, C, 256]`` pixel counts (int64) of every channel of every sample."""
    b, c, h, w = images.shape
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(1, images.reshape(b * c, h * w).long(), torch.ones(1, dtype=torch.int64,
                                                                          device=images.device).expand(b * c, h * w))
    return hist.reshape(b, c, 256)


def autocontrast(images: Tensor, v: Tensor = None) -> Tensor:
    """Pillow's ``ImageOps.autocontrast`` (no cutoff), per channel: ``int(i * s - lo * s)`` with
    ``s = 255 / (hi - lo)`` in double precision, clipped; unchanged where ``hi <= lo``."""
    flat = images.flatten(2)
    lo = flat.amin(2).double()[..., None]
    hi = flat.amax(2).double()[..., None]
    span = (hi - lo).clamp_min(1)
    scale = torch.full_like(span, 255.0) / span   # tensor / tensor: IEEE division like Python's
    i = torch.arange(256, dtype=torch.float64, device=images.device)
    lut = (i * scale + (-lo * scale)).trunc().clamp(0, 255)
    lut = torch.where(hi > lo, lut, i.expand_as(lut))
    return apply_lut(images, lut)


def equalize(images: Tensor, v: Tensor = None) -> Tensor:
    """Pillow's ``ImageOps.equalize``, per channel: ``step = (n - h[last used level]) // 255``,
    ``lut[i] = (step // 2 + sum(h[:i])) // step`` (clipped to 255); unchanged with fewer than
    two used levels or ``step == 0``."""
    hist = histograms(images)
    levels = torch.arange(256, device=images.device)
    used = hist > 0
    last = (levels * used).amax(2, keepdim=True)
    step = (hist.sum(2, keepdim=True) - hist.gather(2, last)) // 255
    before = hist.cumsum(2) - hist
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    keep = (used.sum(2, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, levels.expand_as(lut), lut)
    return apply_lut(images, lut)


def brightness(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageEnhance.Brightness(v)``: blend with black."""
    return blend(torch.zeros((), dtype=torch.uint8, device=images.device), images, v)


def color(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageEnhance.Color(v)``: blend with the grey image."""
    return blend(grey(images), images, v)


def contrast(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageEnhance.Contrast(v)``: blend with the mean grey level ``int(mean + 0.5)``."""
    # int(mean + 0.5) in exact integer arithmetic: floor((2 * sum + n) / (2 n)). Equal to Pillow's
    # float mean (two means differ by at least 1/n, far above a double's rounding) and free of
    # the device's summation order.
    g = grey(images).flatten(1).to(torch.int64)
    n = g.shape[1]
    level = (2 * g.sum(1) + n) // (2 * n)
    return blend(_col(level).to(torch.uint8), images, v)


SMOOTH_KERNEL = (1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0)   # Pillow's ImageFilter.SMOOTH, scale 13


def smooth(images: Tensor) -> Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3x3, weights 1 and 5 in the centre, / 13) on the interior
    pixels, rounded half up; border pixels unchanged. Summation order as Pillow's (float32)."""
    x = images.to(torch.float32)
    k = torch.tensor(SMOOTH_KERNEL, dtype=torch.float32).div_(13.0).tolist()   # float32 weights

    def row(r, w0):   # r: rows slice of x, three taps at columns x-1, x, x+1
        return r[..., :-2] * w0[0] + r[..., 1:-1] * w0[1] + r[..., 2:] * w0[2]

    below, mid, above = x[..., 2:, :], x[..., 1:-1, :], x[..., :-2, :]
    ss = torch.zeros_like(mid[..., 1:-1])
    ss = ss + row(below, k[0:3])
    ss = ss + row(mid, k[3:6])
    ss = ss + row(above, k[6:9])
    inner = torch.where(ss <= 0, torch.zeros_like(ss),
                        torch.where(ss >= 255, torch.full_like(ss, 255), (ss + 0.5).floor()))
    out = images.clone()
    out[..., 1:-1, 1:-1] = inner.to(torch.uint8)
    return out


def sharpness(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageEnhance.Sharpness(v)``: blend with the smoothed image (v < 1 blurs)."""
    return blend(smooth(images), images, v)


def posterize(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageOps.posterize(max(1, int(v)))``: keep the top ``int(v)`` bits."""
    bits = v.to(torch.float32).trunc().clamp(1, 8).to(torch.int32)
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
    return images & _col(mask)


def solarize(images: Tensor, v: Tensor) -> Tensor:
    """Pillow's ``ImageOps.solarize(v)``: pixels ``>= v`` inverted."""
    return torch.where(images.to(torch.float32) < _col(v.to(torch.float32)), images, 255 - images)


def affine_matrices(op: Tensor, v: Tensor, h: int, w: int) -> Tensor:
    """Per-sample inverse affine maps ``(a, b, c, d, e, f)`` (output -> input, Pillow's
    convention ``x_in = a x + b y + c``) of the geometric operations, identity for the others;
    float64 ``[B, 6]``. Rotation by v degrees counter-clockwise about ``(w/2, h/2)`` as
    ``Image.rotate``; shears about the origin and translations by ``v * size`` as the reference."""
    v = v.to(torch.float64)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    rad = -torch.deg2rad(torch.remainder(v, 360.0))
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2.0, h / 2.0
    rot = torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], 1)
    mats = {"rotate": rot,
            "shear_x": torch.stack([one, v, zero, zero, one, zero], 1),
            "shear_y": torch.stack([one, zero, zero, v, one, zero], 1),
            "translate_x": torch.stack([one, zero, v * w, zero, one, zero], 1),
            "translate_y": torch.stack([one, zero, zero, zero, one, v * h], 1)}
    out = torch.stack([one, zero, zero, zero, one, zero], 1)
    for name, m in mats.items():
        out = torch.where((op == RANDAUG_OPS.index(name))[:, None], m, out)
    return out


def affine_fixed_point(mats: Tensor) -> Tensor:
    """Pillow's 16.16 fixed-point coefficients ``A = floor(65536 a + 0.5)`` of affine maps
    ``[B, 6]`` (float64), with the pixel-centre offsets folded into A2/A5; int64 ``[B, 6]``."""
    fix = lambda t: torch.floor(t * 65536.0 + 0.5).to(torch.int64)   # noqa: E731
    a2 = mats[:, 2] + mats[:, 0] * 0.5 + mats[:, 1] * 0.5
    a5 = mats[:, 5] + mats[:, 3] * 0.5 + mats[:, 4] * 0.5
    return fix(torch.stack([mats[:, 0], mats[:, 1], a2, mats[:, 3], mats[:, 4], a5], 1))


def affine_nearest(images: Tensor, mats: Tensor) -> Tensor:
    """Nearest-neighbour affine warp with Pillow's 16.16 fixed-point arithmetic: for output pixel
    (x, y) the input is ``((A2 + x A0 + y A1) >> 16, (A5 + x A3 + y A4) >> 16)`` with ``A`` from
    ``affine_fixed_point``; outside -> 0. ``mats``: float64 maps ``[B, 6]``, or their int64
    fixed-point coefficients (what the strong view passes: computed on the CPU)."""
    b, c, h, w = images.shape
    fixed = mats if not mats.is_floating_point() else affine_fixed_point(mats)
    fixed = fixed.to(images.device)
    a0, a1, a2, a3, a4, a5 = fixed.unbind(1)
    xs = torch.arange(w, device=images.device, dtype=torch.int64)[None, None, :]
    ys = torch.arange(h, device=images.device, dtype=torch.int64)[None, :, None]
    xin = (a2[:, None, None] + xs * a0[:, None, None] + ys * a1[:, None, None]) >> 16     # [B, H, W]
    yin = (a5[:, None, None] + xs * a3[:, None, None] + ys * a4[:, None, None]) >> 16
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    flat = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).reshape(b, 1, h * w).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)
    return torch.where(inside[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))


POINTWISE_OPS = {"autocontrast": autocontrast, "brightness": brightness, "color": color, "contrast": contrast,
                 "equalize": equalize, "posterize": posterize, "sharpness": sharpness, "solarize": solarize}


def randaugment_round(images: Tensor, op: Tensor, v: Tensor, fixed: Tensor = None) -> Tensor:
    """One RandAugment round: sample i gets operation ``RANDAUG_OPS[op[i]]`` with magnitude
    ``v[i]`` (uint8 in and out). Every operation runs on the whole batch and the results are
    selected per sample (no host synchronisation). ``fixed``: the round's fixed-point affine
    coefficients if already computed (on the CPU, see the module docstring), else computed here
    from ``op`` and ``v`` on their device."""
    b, c, h, w = images.shape
    if fixed is None:
        fixed = affine_fixed_point(affine_matrices(op, v, h, w))
    out = affine_nearest(images, fixed)                           # identity for non-geometric samples
    for name, fn in POINTWISE_OPS.items():
        out = torch.where(_col(op == RANDAUG_OPS.index(name)), fn(images, v), out)
    return out


def cutout(images: Tensor, fraction: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """The reference's Cutout: side ``s = fraction * W``; corner ``x0 = int(max(0, cx - s/2))``
    (same for y); pixels ``x0 <= x <= int(min(W, x0 + s))`` (inclusive, as ``ImageDraw.rectangle``)
    set to CUTOUT_FILL. ``fraction``, ``cx``, ``cy``: ``[B]``; ``fraction <= 0`` leaves the image."""
    b, c, h, w = images.shape
    dev = images.device
    s = fraction.to(torch.float64) * w
    x0 = (cx.to(torch.float64) - s / 2).clamp_min(0).trunc()
    y0 = (cy.to(torch.float64) - s / 2).clamp_min(0).trunc()
    x1 = torch.minimum(x0 + s, torch.full_like(s, float(w))).trunc()
    y1 = torch.minimum(y0 + s, torch.full_like(s, float(h))).trunc()
    xs = torch.arange(w, device=dev, dtype=torch.float64)[None, None, :]
    ys = torch.arange(h, device=dev, dtype=torch.float64)[None, :, None]
    box = ((xs >= x0[:, None, None]) & (xs <= x1[:, None, None]) & (ys >= y0[:, None, None])
           & (ys <= y1[:, None, None]) & (fraction > 0)[:, None, None])
    fill = CUTOUT_FILL if c == 3 else (round(sum(CUTOUT_FILL) / 3),) * c
    fill = torch.tensor(fill, dtype=torch.uint8, device=dev).view(1, c, 1, 1)
    return torch.where(box[:, None], fill, images)


def strong_params(batch: int, generator: torch.Generator, h: int, w: int) -> Tuple[Tensor, ...]:
    """The strong view's random parameters in the documented order (CPU tensors):
    top, left, flip ``[B]``; op ``[N, B]``; magnitude ``[N, B]`` (float32); cutout fraction,
    centre x, centre y ``[B]`` (float32)."""
    dev = generator.device
    top, left, flip = crop_flip_params(batch, generator)
    op = torch.randint(0, len(RANDAUG_OPS), (RANDAUG_NUM_OPS, batch), generator=generator, device=dev)
    u = torch.rand(RANDAUG_NUM_OPS, batch, generator=generator, device=dev)
    lo = torch.tensor([RANDAUG_RANGES[n][0] for n in RANDAUG_OPS], dtype=torch.float32)[op]
    hi = torch.tensor([RANDAUG_RANGES[n][1] for n in RANDAUG_OPS], dtype=torch.float32)[op]
    magnitude = lo + (hi - lo) * u
    cut = torch.rand(3, batch, generator=generator, device=dev)
    return top, left, flip, op, magnitude, cut[0] * CUTOUT_MAX_FRACTION, cut[1] * w, cut[2] * h


@register_augmentation("strong")
def strong_augmentation(images: Tensor, generator: torch.Generator) -> Tensor:
    """MLKD's strong view: crop + flip as 'standard', FixMatch RandAugment (2 of 14 operations),
    Cutout; see the comment above for every operation and the order of the random draws."""
    b, c, h, w = images.shape
    top, left, flip, op, magnitude, frac, cx, cy = strong_params(b, generator, h, w)
    n = RANDAUG_NUM_OPS
    # the affine coefficients from the draws alone, on the CPU (sin/cos: see the module docstring)
    fixed = torch.cat([affine_fixed_point(affine_matrices(op[r], magnitude[r], h, w)).t() for r in range(n)])
    # one host-to-device copy for all parameters (every value is exact in float64)
    packed = torch.cat([torch.stack([top, left, flip.long()]).double(), op.double(), magnitude.double(),
                        torch.stack([frac, cx, cy]).double(), fixed.double()]).to(images.device)
    top, left, flip = packed[0].long(), packed[1].long(), packed[2].bool()
    op, magnitude = packed[3:3 + n].long(), packed[3 + n:3 + 2 * n].float()
    frac, cx, cy = packed[3 + 2 * n], packed[4 + 2 * n], packed[5 + 2 * n]
    fixed = packed[6 + 2 * n:].long()                             # [6 n, B]: round r in rows 6r..6r+5
    x = crop_flip(images, top, left, flip)
    for r in range(n):
        x = randaugment_round(x, op[r], magnitude[r], fixed[6 * r:6 * r + 6].t())
    return to_unit(cutout(x, frac, cx, cy))
