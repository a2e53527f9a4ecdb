"""dataset.transforms: torchvision's Resize / CenterCrop / RandomResizedCrop / RandomHorizontalFlip
written with torch on uint8 tensors, checked against hand-computed values, against Pillow's
resampling, and -- where torchvision imports (not on CPU CI) -- against torchvision itself."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dataset import DataError
from dataset.transforms import (Box, center_crop, center_crop_box, crop, eval_resize_size, eval_view,
                                fit_square, get_image_view, hflip, random_hflip, random_resized_crop_box,
                                resize, resize_shorter, rrc_fallback, rrc_try, shorter_side_size,
                                standard_view)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image(h, w, c=3, seed=0):
    return torch.randint(0, 256, (c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# -- Resize ------------------------------------------------------------------------------------
def test_shorter_side_rule():
    assert shorter_side_size(480, 640, 256) == (256, 341)        # int(256 * 640 / 480) = 341
    assert shorter_side_size(640, 480, 256) == (341, 256)        # orientation kept
    assert shorter_side_size(300, 300, 256) == (256, 256)
    assert shorter_side_size(64, 64, 73) == (73, 73)
    assert shorter_side_size(333, 500, 256) == (256, 384)        # 384.38 truncated
    with pytest.raises(DataError, match="cannot resize"):
        shorter_side_size(0, 5, 3)


def test_resize_hand_computed_antialiased_bilinear():
    # 4 -> 2 with antialias: the triangle filter stretched by the scale 2; output 0 is centred at
    # input 1.0 with weights 3/7, 3/7, 1/7 on inputs 0, 1, 2; output 1 at 3.0 with 1/7, 3/7, 3/7.
    row = torch.tensor([0, 70, 140, 210], dtype=torch.uint8)
    x = row.view(1, 1, 4).expand(1, 4, 4).contiguous()
    out = resize(x, 2, 2)
    assert out.dtype == torch.uint8 and out.shape == (1, 2, 2)
    assert out[0].tolist() == [[50, 160], [50, 160]]             # (0*3+70*3+140)/7, (70+140*3+210*3)/7
    same = image(5, 7)
    assert resize(same, 5, 7) is same                            # already that size: untouched
    batch = torch.stack([image(9, 6, seed=s) for s in range(3)])
    assert torch.equal(resize(batch, 4, 3)[1], resize(batch[1], 4, 3))   # batched = one by one


def test_resize_is_within_one_grey_level_of_pillow_bilinear():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.RandomState(0)
    a = (rng.rand(97, 131, 3) * 60 + np.linspace(0, 180, 131)[None, :, None]).astype(np.uint8)
    for h, w in ((50, 61), (224, 224), (73, 99)):
        ours = resize(torch.from_numpy(a).permute(2, 0, 1).contiguous(), h, w).permute(1, 2, 0).numpy()
        pil = np.array(Image.fromarray(a).resize((w, h), Image.BILINEAR))
        diff = np.abs(ours.astype(int) - pil.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.7, (h, w)


def test_resize_shorter_and_fit_square():
    x = image(30, 40)
    assert resize_shorter(x, 15).shape == (3, 15, 20)
    sq = fit_square(x, 12)
    assert sq.shape == (3, 12, 12)
    assert torch.equal(sq, center_crop(resize_shorter(x, 12), 12))
    y = image(12, 12)
    assert fit_square(y, 12) is y


# -- CenterCrop --------------------------------------------------------------------------------
def test_center_crop_rounds_as_torchvision():
    assert center_crop_box(256, 341, 224, 224) == Box(16, 58, 224, 224)     # round(58.5) = 58 (even)
    assert center_crop_box(257, 256, 224, 224) == Box(16, 16, 224, 224)     # round(16.5) = 16
    assert center_crop_box(259, 256, 224, 224) == Box(18, 16, 224, 224)     # round(17.5) = 18
    x = torch.arange(6 * 7, dtype=torch.uint8).view(1, 6, 7)
    out = center_crop(x, 3, 4)                                   # top round(1.5)=2, left round(1.5)=2
    assert torch.equal(out, x[:, 2:5, 2:6])


def test_center_crop_pads_a_small_image_with_zeros():
    x = torch.full((1, 3, 5), 9, dtype=torch.uint8)
    out = center_crop(x, 4, 8)        # width 5 -> 8: 1 column before, 2 after; height 3 -> 4: 0, 1
    assert out.shape == (1, 4, 8)
    expected = torch.zeros(1, 4, 8, dtype=torch.uint8)
    expected[:, 0:3, 1:6] = 9
    assert torch.equal(out, expected)


def test_crop_outside_the_image_is_refused():
    with pytest.raises(DataError, match="does not lie inside a 4x4 image"):
        crop(image(4, 4), Box(2, 0, 3, 4))


# -- RandomResizedCrop -------------------------------------------------------------------------
def test_one_try_hand_computed():
    assert rrc_try(0.5, 1.0, 100, 100) == (71, 71)               # sqrt(5000) = 70.7
    assert rrc_try(0.5, 4 / 3, 100, 100) == (61, 82)             # sqrt(3750) = 61.2, sqrt(6666.7) = 81.6
    assert rrc_try(1.0, 4 / 3, 100, 100) is None                 # w = 115 > 100
    assert rrc_try(0.08, 0.75, 375, 500) == (141, 106)           # area 15000: sqrt(20000), sqrt(11250)


def test_fallback_boxes_hand_computed():
    assert rrc_fallback(10, 1000) == Box(0, 493, 10, 13)         # wide: h = 10, w = round(13.3)
    assert rrc_fallback(1000, 10) == Box(493, 0, 13, 10)         # tall: w = 10, h = round(13.3)
    assert rrc_fallback(100, 120) == Box(0, 0, 100, 120)         # ratio 1.2 allowed: whole image
    assert rrc_fallback(100, 200) == Box(0, 33, 100, 133)        # w = round(133.3), left (200-133)//2


def test_all_ten_tries_fail_then_the_fallback_after_exactly_twenty_draws():
    # a 10 x 1000 strip: every candidate is at least sqrt(0.08 * 10000 / (4/3)) = 24.5 rows high
    g = torch.Generator().manual_seed(3)
    assert random_resized_crop_box(10, 1000, g) == Box(0, 493, 10, 13)
    ref = torch.Generator().manual_seed(3)
    for _ in range(20):                                          # scale and log-ratio, ten times
        torch.empty(1).uniform_(generator=ref)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))


def expected_box(height, width, seed):
    """The documented draws, re-derived with torch.rand / randint: try t takes u_scale, u_ratio,
    then (if the box fits) top and left."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (math.log(0.75), math.log(4 / 3))
    lo, hi = torch.tensor([lo, hi], dtype=torch.float32).tolist()   # float32 logs, as torchvision
    for _ in range(10):
        fraction = float(torch.empty(1).uniform_(0.08, 1.0, generator=g))
        aspect = float(torch.exp(torch.empty(1).uniform_(lo, hi, generator=g)))
        w = int(round(math.sqrt(height * width * fraction * aspect)))
        h = int(round(math.sqrt(height * width * fraction / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return Box(top, left, h, w)
    return None


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (64, 64), (224, 224)])
def test_seeded_boxes_follow_the_documented_draws(height, width):
    boxes = []
    for seed in range(40):
        box = random_resized_crop_box(height, width, torch.Generator().manual_seed(seed))
        assert box == expected_box(height, width, seed)
        assert 0 <= box.top and box.top + box.height <= height and 0 <= box.left \
            and box.left + box.width <= width
        area = box.height * box.width / (height * width)
        assert 0.07 < area <= 1.0 and 0.7 < box.width / box.height < 1.4
        boxes.append(box)
    assert len(set(boxes)) == 40                                 # the seed matters


def test_log_uniform_aspect_ratio():
    """Accepted boxes of a large square: log(w/h) is symmetric about 0 (log-uniform draws), which
    a uniform draw on (3/4, 4/3) would not be (its mean log is +0.018)."""
    g = torch.Generator().manual_seed(0)
    logs = [math.log(b.width / b.height) for b in (random_resized_crop_box(4000, 4000, g) for _ in range(4000))]
    assert abs(float(np.mean(logs))) < 0.01
    assert max(logs) <= math.log(4 / 3) + 0.01 and min(logs) >= math.log(3 / 4) - 0.01


# -- flip and views ----------------------------------------------------------------------------
def test_flip_mirrors_columns_when_the_draw_is_below_one_half():
    x = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    assert hflip(x)[0, 0].tolist() == [3, 2, 1, 0]
    flips = 0
    for seed in range(20):
        u = float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))
        out = random_hflip(x, torch.Generator().manual_seed(seed))
        assert torch.equal(out, x.flip(-1) if u < 0.5 else x)
        flips += u < 0.5
    assert 0 < flips < 20


def test_standard_view_is_crop_resize_then_flip():
    x = image(120, 90)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        box = random_resized_crop_box(120, 90, g)
        flip = bool(torch.rand(1, generator=g) < 0.5)
        manual = resize(crop(x, box), 32, 32)
        manual = manual.flip(-1) if flip else manual
        out = standard_view(x, 32, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        assert torch.equal(out, manual)


def test_eval_view_is_resize_then_center_crop():
    assert eval_resize_size(224) == 256 and eval_resize_size(64) == 73 and eval_resize_size(32) == 36
    x = image(300, 400)
    out = eval_view(x, 224, torch.Generator())
    assert torch.equal(out, center_crop(resize(x, 256, 341), 224))
    with pytest.raises(DataError, match="view 'strong' is not available .*none, standard"):
        get_image_view("strong")


# -- torchvision itself (where it imports: a GPU machine's own torch build, never CPU CI) --------
def _torchvision():
    try:
        import torchvision.transforms as T
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails variously
        pytest.skip(f"torchvision does not import here ({type(exc).__name__})")
    return T


def test_random_resized_crop_and_flip_equal_torchvision_on_the_same_draws():
    T = _torchvision()
    for height, width in ((375, 500), (500, 333), (64, 64), (10, 1000)):
        x = image(height, width)
        for seed in range(25):
            torch.manual_seed(seed)
            params = T.RandomResizedCrop.get_params(x, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
            assert Box(*params) == random_resized_crop_box(height, width, torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)
            theirs = T.Compose([T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip()])(x)
            ours = standard_view(x, 224, torch.Generator().manual_seed(seed))
            assert (theirs.int() - ours.int()).abs().max() <= 1       # their uint8 kernel may round apart


def test_resize_and_center_crop_equal_torchvision():
    T = _torchvision()
    for height, width in ((375, 500), (500, 333), (256, 256), (64, 80)):
        x = image(height, width)
        theirs = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224)])(x)
        ours = eval_view(x, 224, torch.Generator())
        assert theirs.shape == ours.shape
        assert (theirs.int() - ours.int()).abs().max() <= 1
