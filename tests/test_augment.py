"""The views of dataset/augment.py: crop and flip, normalisation, registry, the strong view against Pillow, CPU = CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import dataset
from dataset import DataError, DataSpec, DeviceLoader
from dataset.augment import (AUGMENTATIONS, CUTOUT_FILL, RANDAUG_OPS, RANDAUG_RANGES, crop_flip, crop_flip_params,
                             cutout, randaugment_round, register_augmentation, strong_params)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD = 4


def reference(img: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """torchvision's recipe on one CHW uint8 image: zero-pad 4, crop 32x32 at (top, left), mirror."""
    padded = np.pad(img, ((0, 0), (PAD, PAD), (PAD, PAD)), mode="constant", constant_values=0)
    out = padded[:, top:top + img.shape[1], left:left + img.shape[2]]
    return out[:, :, ::-1] if flip else out


def test_crop_flip_matches_numpy_for_every_offset_and_flip():
    g = torch.Generator().manual_seed(0)
    combos = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    images = torch.randint(0, 256, (len(combos), 3, 32, 32), generator=g, dtype=torch.uint8)
    top, left, flip = (torch.tensor(c) for c in zip(*combos))
    out = crop_flip(images, top, left, flip)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i, (t, l, f) in enumerate(combos):
        assert np.array_equal(out[i].numpy(), reference(images[i].numpy(), t, l, f)), (t, l, f)


def test_seeded_standard_augmentation_is_a_valid_crop_with_known_pixels():
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    out = AUGMENTATIONS["standard"](images, torch.Generator().manual_seed(123))
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # the same seed gives the same parameters (drawn in the documented order) ...
    top, left, flip = crop_flip_params(16, torch.Generator().manual_seed(123))
    for i in range(16):
        ref = reference(images[i].numpy(), int(top[i]), int(left[i]), bool(flip[i]))
        assert np.array_equal(np.rint(out[i].numpy() * 255).astype(np.uint8), ref)
        # ... and, independently of the parameters, the output is exactly one crop/flip candidate
        matches = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)
                   if np.array_equal(np.rint(out[i].numpy() * 255), reference(images[i].numpy(), t, l, f))]
        assert len(matches) == 1
    again = AUGMENTATIONS["standard"](images, torch.Generator().manual_seed(123))
    assert torch.equal(out, again)


@pytest.fixture
def one_thread():
    """Thousands of tiny-batch calls: on a loaded 2-core machine every OpenMP parallel region can
    wait a whole scheduler time slice for its second thread, so run them single-threaded (this
    test is about statistics, not speed)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_offsets_and_flips_are_uniform(one_thread):
    """Recover (top, left, flip) from augmented position-encoding images; chi-square on 162 cells."""
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    probe = torch.stack([ys + 1, xs + 1, torch.zeros_like(ys)]).to(torch.uint8)  # 0 = padding
    batch, draws = 8, 4000
    images = probe.expand(batch, 3, 32, 32).contiguous()
    g = torch.Generator().manual_seed(2024)
    fn = AUGMENTATIONS["standard"]
    # keep only the two centre pixels of channels 0-1 of each output, decode in numpy afterwards
    centre = np.stack([fn(images, g)[:, :2, 16, 16:18].numpy() for _ in range(draws)])
    centre = np.rint(centre.reshape(-1, 2, 2) * 255).astype(np.int64)
    src_row = centre[:, 0, 0] - 1                       # the centre is never padding
    src_col = centre[:, 1, 0] - 1
    flipped = centre[:, 1, 1] < centre[:, 1, 0]
    top = src_row - 16 + PAD
    left = np.where(flipped, src_col - (31 - 16) + PAD, src_col - 16 + PAD)
    counts = np.zeros((9, 9, 2), dtype=np.int64)
    np.add.at(counts, (top, left, flipped.astype(np.int64)), 1)
    assert counts.sum() == batch * draws and counts.min() > 0
    assert chisquare(counts.ravel()).pvalue > 1e-4
    assert chisquare(counts.sum(axis=(1, 2))).pvalue > 1e-4       # rows
    assert chisquare(counts.sum(axis=(0, 2))).pvalue > 1e-4       # columns
    assert abs(counts[..., 1].sum() / counts.sum() - 0.5) < 0.01


def _loader(images, views, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), **kw):
    spec = DataSpec("t", 10, images.shape[-1], 3, mean, std, len(images), 0)
    labels = torch.arange(len(images)) % 10
    return DeviceLoader(images, labels, spec, batch_size=len(images), device="cpu", seed=0,
                        shuffle=False, views=views, **kw)


def test_normalisation_is_x_over_255_minus_mean_over_std():
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(3),
                           dtype=torch.uint8)
    x, _ = next(iter(_loader(images, ("none",))))
    mean = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)


def test_padding_is_black_before_normalisation():
    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    x, _ = next(iter(_loader(images, ("standard",))))
    mean = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    values = torch.unique(torch.round((x * std + mean) * 255))
    assert values.tolist() == [0.0, 255.0]                  # padded pixels are 0, nothing else


def test_registering_a_view_is_one_function():
    @register_augmentation("test_invert")
    def invert(images, generator):
        return 1 - images.float() / 255
    try:
        assert "test_invert" in dataset.augmentation_names()
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        (a, b), _ = next(iter(_loader(images, ("none", "test_invert"), mean=(0.5,) * 3,
                                      std=(0.5,) * 3)))
        torch.testing.assert_close(a, -b)
        with pytest.raises(ValueError, match="registered twice"):
            register_augmentation("test_invert")(invert)
    finally:
        AUGMENTATIONS.pop("test_invert")


def test_unknown_view_is_a_one_line_error():
    with pytest.raises(DataError, match=r"unknown view/augmentation 'strongest'.*standard"):
        _loader(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ("strongest",))


# -- the same on CPU and CUDA (the promise in dataset/augment.py's docstring) --------------------
def _seeded_images(n=32, seed=11):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("view", sorted(AUGMENTATIONS))
def test_random_draws_do_not_depend_on_the_device_of_the_images(view):
    """Every view draws on the CPU from the loader's generator, the same numbers in the same order
    whatever the images' device (``meta`` stands in for CUDA: it has no values, only shapes)."""
    images = _seeded_images()
    g_cpu, g_meta = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out_cpu = AUGMENTATIONS[view](images, g_cpu)
    out_meta = AUGMENTATIONS[view](images.to("meta"), g_meta)
    assert out_meta.device.type == "meta" and out_meta.shape == out_cpu.shape
    assert out_meta.dtype == out_cpu.dtype == torch.float32
    assert torch.equal(g_cpu.get_state(), g_meta.get_state())


def test_to_unit_is_a_table_of_the_correctly_rounded_quotients():
    """x / 255 for every uint8 value, correctly rounded to float32 (what the CPU's division gives),
    looked up rather than divided on the device."""
    from dataset.augment import to_unit
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = (np.arange(256, dtype=np.float64) / 255).astype(np.float32).reshape(1, 1, 16, 16)
    assert np.array_equal(to_unit(levels).numpy(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_augment_identically():
    """The promise: the same uint8 images and seed give bit-identical float32 views on CPU and CUDA
    (the draws come from one CPU generator; see dataset/augment.py)."""
    images = _seeded_images()
    for view in sorted(AUGMENTATIONS):
        g_cpu, g_gpu = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        cpu = AUGMENTATIONS[view](images, g_cpu)
        gpu = AUGMENTATIONS[view](images.cuda(), g_gpu)
        assert gpu.device.type == "cuda"
        assert torch.equal(g_cpu.get_state(), g_gpu.get_state()), view
        assert torch.equal(cpu, gpu.cpu()), view


# ---------------------------------------------------------------------------- the 'strong' view
def test_strong_view_is_deterministic_for_a_seed_and_in_unit_range():
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    fn = AUGMENTATIONS["strong"]
    a = fn(images, torch.Generator().manual_seed(7))
    b = fn(images, torch.Generator().manual_seed(7))
    c = fn(images, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, AUGMENTATIONS["standard"](images, torch.Generator().manual_seed(7)))


def test_loader_serves_weak_and_strong_views_and_replays_an_epoch():
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    spec = DataSpec("toy", 10, 32, 3, (0.5,) * 3, (0.25,) * 3, 40, 0)
    loader = DeviceLoader(images, torch.arange(40) % 10, spec, batch_size=16, device="cpu", seed=3,
                          views=("standard", "strong"))
    loader.set_epoch(2)
    first = [(w.clone(), s.clone()) for (w, s), _ in loader]
    loader.set_epoch(2)
    again = [(w, s) for (w, s), _ in loader]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert all(w.shape == s.shape and not torch.equal(w, s) for w, s in first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_strong_view_is_the_same_on_cpu_and_cuda():
    """dataset/augment.py's promise: the same images and seed give bit-identical strong views on
    CPU and CUDA, for every operation (one batch per operation, so each runs on every sample)."""
    from dataset.augment import affine_fixed_point, affine_matrices, strong_params
    images = _test_images(16)
    for seed in range(8):
        cpu = AUGMENTATIONS["strong"](images, torch.Generator().manual_seed(seed))
        gpu = AUGMENTATIONS["strong"](images.cuda(), torch.Generator().manual_seed(seed))
        assert torch.equal(cpu, gpu.cpu()), seed
    for k in range(len(RANDAUG_OPS)):
        op = torch.full((len(images),), k)
        v = strong_params(len(images), torch.Generator().manual_seed(k), 32, 32)[4][0]
        fixed = affine_fixed_point(affine_matrices(op, v, 32, 32))   # from the draws, on the CPU
        cpu = randaugment_round(images, op, v, fixed)
        gpu = randaugment_round(images.cuda(), op.cuda(), v.cuda(), fixed)
        assert torch.equal(cpu, gpu.cpu()), RANDAUG_OPS[k]


def _pil_ops():
    pytest.importorskip("PIL")          # Pillow is optional (the 'vision' extra)
    from PIL import Image, ImageEnhance, ImageOps
    return {
        "autocontrast": lambda im, v: ImageOps.autocontrast(im),
        "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
        "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
        "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
        "equalize": lambda im, v: ImageOps.equalize(im),
        "identity": lambda im, v: im,
        "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
        "rotate": lambda im, v: im.rotate(v),
        "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
        "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda im, v: ImageOps.solarize(im, v),
        "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
        "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
    }


def to_pil(x):
    from PIL import Image
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def from_pil(im):
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _test_images(n=12):
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    blocky = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8).repeat_interleave(4, 2) \
        .repeat_interleave(4, 3)
    narrow = (noise.int() // 3 + 60).to(torch.uint8)
    return torch.cat([noise, blocky, narrow])


@pytest.mark.parametrize("name", RANDAUG_OPS)
def test_each_randaugment_operation_matches_pillow_pixel_for_pixel(name):
    images = _test_images()
    lo, hi = RANDAUG_RANGES[name]
    v = lo + (hi - lo) * torch.rand(len(images), generator=torch.Generator().manual_seed(1))
    ours = randaugment_round(images, torch.full((len(images),), RANDAUG_OPS.index(name)), v)
    op = _pil_ops()[name]
    ref = torch.stack([from_pil(op(to_pil(x), float(vi))) for x, vi in zip(images, v)])
    assert torch.equal(ours, ref)


def test_strong_view_equals_the_reference_recipe_in_pillow_with_the_same_draws():
    ops = _pil_ops()
    from PIL import ImageDraw
    images = _test_images(4)
    g_seed = 11
    ours = AUGMENTATIONS["strong"](images, torch.Generator().manual_seed(g_seed))
    top, left, flip, op, mag, frac, cx, cy = strong_params(len(images), torch.Generator().manual_seed(g_seed), 32, 32)
    cropped = crop_flip(images, top, left, flip)
    for i in range(len(images)):
        im = to_pil(cropped[i])
        for r in range(op.shape[0]):
            im = ops[RANDAUG_OPS[op[r, i]]](im, float(mag[r, i]))
        s = float(frac[i]) * 32                  # the reference's CutoutAbs with our centre draw
        if s > 0:
            x0, y0 = int(max(0, float(cx[i]) - s / 2)), int(max(0, float(cy[i]) - s / 2))
            im = im.copy()
            ImageDraw.Draw(im).rectangle((x0, y0, min(32, x0 + s), min(32, y0 + s)), CUTOUT_FILL)
        assert torch.equal(torch.round(ours[i] * 255).to(torch.uint8), from_pil(im)), i
    # cutout on its own: nothing happens for a zero size
    assert torch.equal(cutout(images, torch.zeros(len(images)), cx, cy), images)
