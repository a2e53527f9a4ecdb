"""The vision-transformer students (DeiT-Tiny, T2T-ViT-7, PiT-Tiny, PVT-Tiny): parameter counts of
the reference implementations, the zoo contract, drop path, input resizing, and a tiny ViT that
learns digits.

Reference counts (100 classes, 224 px): tiny-transformers' own classes (``pycls/models/
transformers/{deit,t2t_vit,pit,pvt}.py`` at sunshangquan/logit-standardization-KD f6e5aa5,
``tiny-transformers/``) copied verbatim into a scratch folder outside this repository, with the
config values of ``configs/{deit,t2t,pit,pvt}/*_c100_ours.yaml`` (``DISTILLATION.ENABLE_LOGIT``
off), timm's parameter-free helpers (DropPath, trunc_normal_, to_2tuple) stubbed, then
``sum(p.numel() for p in model.parameters() if p.requires_grad)`` (the reference's
``complexity()``) and the same sum over all parameters. T2T-ViT keeps its Performer random
features and sinusoid position table as frozen parameters (54,528 values); ours holds them as
buffers, so our parameter count is the trainable count and parameters + buffers the total. The
same scratch copy, with its weights loaded into ours, gave identical logits and guidance maps.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model, get_model_cfg
from models.deit import DeiT
from models.vit_blocks import DropPath

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name: (trainable parameters, parameters incl. frozen ones, guidance map shapes at 224 px)
REFERENCE = {
    "deit_tiny": (5_543_716, 5_543_716, [(192, 14, 14)] * 3),
    "t2t_vit_7": (4_024_394, 4_078_922, [(256, 14, 14)] * 3),
    "pit_tiny": (4_615_972, 4_615_972, [(64, 27, 27), (128, 14, 14), (256, 7, 7)]),
    "pvt_tiny": (12_767_588, 12_767_588, [(64, 56, 56), (128, 28, 28), (512, 7, 7)]),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameter_counts_match_the_reference(name):
    model = build_model(name, 100)
    trainable, total, maps = REFERENCE[name]
    assert sum(p.numel() for p in model.parameters()) == trainable
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == total
    assert model.input_size == 224 and get_model_cfg(name).family == "vit"
    # shapes without running the 224-px network: the stage maps after the guidance blocks
    assert [tuple(s) for s in model.feature_shapes(32)[:-1]] == maps


@pytest.mark.parametrize("name", list(REFERENCE))
def test_small_vit_follows_the_zoo_contract(name):
    torch.manual_seed(0)
    model = build_model(name, 10, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, logits = model(x, is_feat=True)
    assert logits.shape == (2, 10) and len(feats) == model.num_stages + 1 == 4
    assert all(f.dim() == 4 for f in feats[:-1]) and feats[-1].dim() == 2
    assert [tuple(f.shape[1:]) for f in feats] == model.feature_shapes()
    assert torch.equal(model(x), logits)
    # run_stages + pool/classify reproduce forward; the last stage's state feeds the pooled vector
    state = model.run_stages(x, 0, model.num_stages)
    assert torch.allclose(model.classify(model.pool(state)), logits, atol=1e-6)
    # head() classifies a last-stage map (the class token is absent: normed mean of the patch tokens)
    t = feats[-2].flatten(2).transpose(1, 2)
    assert torch.allclose(model.head(feats[-2]), model.fc(model.norm(t).mean(1)), atol=1e-6)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_input_is_resized_on_its_device_to_the_models_size():
    model = build_model("deit_tiny", 10, img_size=32, patch_size=4).eval()
    x = torch.randn(2, 3, 8, 8)
    up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(model(x), model(up))
    assert model.feature_shapes(8)[0] == (192, 8, 8)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model("deit_tiny", 10, img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="takes no option"):
        build_model("resnet8", 10, img_size=64)


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    dp = DropPath(0.25).train()
    y = dp(torch.ones(4000, 3, 2))
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0) | torch.isclose(per_sample, torch.tensor(1 / 0.75)))
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)   # all or nothing per sample
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(dp.eval()(torch.ones(5, 3)), torch.ones(5, 3))
    # the rule: 0 for the first block rising linearly to the rate for the last (DeiT), i/total for PiT
    deit = build_model("deit_tiny", 10, img_size=32, patch_size=8, drop_path=0.1)
    rates = [layer.drop_path.p for layer in deit.layers]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1) and rates[6] == pytest.approx(0.1 * 6 / 11)
    pit = build_model("pit_tiny", 10, img_size=32, drop_path=0.12)
    assert pit.transformers[2][3].drop_path.p == pytest.approx(0.12 * 11 / 12)


def test_tiny_vit_learns_digits():
    """A 2-block, 48-wide DeiT at the digits' own 8 px with 2-pixel patches (16 tokens): the
    32-px images are resized on the fly by the model; about 0.69 test accuracy (chance 0.1) after
    8 epochs, a few seconds on one CPU thread."""
    from dataset.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data
    data = load_digits_data()

    def prep(images):
        return (images.float() / 255 - DIGITS_MEAN) / DIGITS_STD

    x, y = prep(data.train_images), data.train_labels
    torch.manual_seed(0)
    model = DeiT(num_classes=10, img_size=8, patch_size=2, dim=48, depth=2, num_heads=2, mlp_ratio=2,
                 guide_blocks=(0, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(prep(data.test_images)).argmax(1) == data.test_labels).float().mean().item()
    assert acc > 0.5, acc      # chance is 0.1
