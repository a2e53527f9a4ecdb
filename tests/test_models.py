"""The model zoo against RepDistiller's ground truth (tests/fixtures/repdistiller_cifar_models.json)
and the ZooModel contract (forward / run_stages / head / feature_shapes / preact / BN hooks)."""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models import imagenet_model_cfg, imagenet_model_dict, model_cfg, model_dict
from models.base import ZooModel

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "repdistiller_cifar_models.json").read_text())["models"]
NAMES = list(FIXTURE)
NUM_CLASSES = 100
# RepDistiller raises NotImplementedError in get_bn_before_relu for these (no BN right before the ReLU)
NO_BN_BEFORE_RELU = {"ShuffleV1", "ShuffleV2"}


@functools.lru_cache(maxsize=None)
def cifar_model(name: str) -> ZooModel:
    """One seeded model per name for the whole module, in eval mode (tests that train copy it)."""
    torch.manual_seed(0)
    return model_dict[name](num_classes=NUM_CLASSES).eval()


@functools.lru_cache(maxsize=None)
def cifar_outputs(name: str):
    """(x, feats, logits, preact_feats) of the cached model in eval mode."""
    model = cifar_model(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, pre_logits = model(x, is_feat=True, preact=True)
    torch.testing.assert_close(pre_logits, logits)
    return x, feats, logits, pre


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# CIFAR zoo vs RepDistiller
# ---------------------------------------------------------------------------------------------
def test_registry_has_every_fixture_model():
    assert set(NAMES) <= set(model_dict)
    for name in NAMES:
        assert model_cfg[name].input_size == 32
    expected = {"ResNet50": "resnet_bottleneck", "wrn_40_2": "wrn", "vgg13": "vgg",
                "MobileNetV2": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2"}
    for name, family in expected.items():
        assert model_cfg[name].family == family
    for name in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
        assert model_cfg[name].default_lr == 0.01
    for name in ("ResNet50", "wrn_40_2", "vgg13"):
        assert model_cfg[name].default_lr == 0.05


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_repdistiller(name):
    model, spec = cifar_model(name), FIXTURE[name]
    sd = model.state_dict()
    assert list(sd) == list(spec["state_dict"]), "state_dict keys or their order differ"
    assert {k: list(v.shape) for k, v in sd.items()} == spec["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
    assert model.arch == name


@pytest.mark.parametrize("name", NAMES)
def test_forward_contract(name):
    model, spec = cifar_model(name), FIXTURE[name]
    x, feats, logits, pre = cifar_outputs(name)
    assert [list(f.shape) for f in feats] == spec["feat_shapes"]
    assert list(logits.shape) == spec["logit_shape"]
    assert [f.shape for f in pre] == [f.shape for f in feats]
    assert len(feats) == model.num_stages + 1
    with torch.no_grad():
        close(model(x), logits)
        close(model.head(feats[-2]), logits)
        close(model.head(model.run_stages(x)), logits)
        mid = model.run_stages(x, 0, 2)                   # grafting: a slice, then the rest
        close(model.run_stages(mid, 2), feats[-2])
    assert model.feature_shapes() == [tuple(s[1:]) for s in spec["feat_shapes"]]


@pytest.mark.parametrize("name", NAMES)
def test_preact_features_are_repdistillers(name):
    """What ``preact=True`` reports for features 1..K-1, per family, as RepDistiller defines it."""
    model = cifar_model(name)
    _, feats, _, pre = cifar_outputs(name)
    close(pre[0], feats[0])                               # the stem: as RepDistiller, never preact
    close(pre[-1], feats[-1])                             # the pooled vector
    family = model_cfg[name].family
    for i in range(1, model.num_stages):
        if family == "wrn":                               # the next BN's output of the raw block output
            bn = model.get_bn_before_relu()[i - 1]
            close(pre[i], bn(feats[i]))
        elif family == "mobilenetv2":                     # linear bottlenecks: preact == plain
            close(pre[i], feats[i])
        elif family == "shufflenetv2":                    # RepDistiller's preact is taken before the shuffle
            close(model.layer1[-1].shuffle(F.relu(pre[i])), feats[i])
        else:                                             # the last block before its final ReLU
            close(F.relu(pre[i]), feats[i])
            assert (pre[i] < 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_preact_updates_bn_like_plain_forward(name):
    """A preact feature pass must not update any BN's running statistics a second time (WRN)."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain, with_preact = copy.deepcopy(cifar_model(name)).train(), copy.deepcopy(cifar_model(name)).train()
    with torch.no_grad():
        out = plain(x)
        _, logits = with_preact(x, is_feat=True, preact=True)
    close(logits, out)
    for (key, a), b in zip(plain.state_dict().items(), with_preact.state_dict().values()):
        if "running" in key or "num_batches_tracked" in key:
            assert torch.equal(a, b), key


@pytest.mark.parametrize("name", NAMES)
def test_bn_before_relu(name):
    model = cifar_model(name)
    if name in NO_BN_BEFORE_RELU:
        with pytest.raises(NotImplementedError):
            model.get_bn_before_relu()
        return
    _, _, _, pre = cifar_outputs(name)
    bns = model.get_bn_before_relu()
    assert len(bns) == model.num_stages - 1
    for i, bn in enumerate(bns, start=1):
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.num_features == pre[i].shape[1]


@pytest.mark.parametrize("name", NAMES)
def test_feat_modules(name):
    model = cifar_model(name)
    feat_m = model.get_feat_modules()
    assert isinstance(feat_m, nn.ModuleList) and len(feat_m) > 0
    ids = {id(m) for m in model.modules()}
    assert all(id(m) in ids for m in feat_m)


def test_vgg_pools_before_block4_only_for_larger_maps():
    model = cifar_model("vgg8")
    with torch.no_grad():
        feats32, _ = model(torch.zeros(1, 3, 32, 32), is_feat=True)
        feats64, _ = model(torch.zeros(1, 3, 64, 64), is_feat=True)
    assert feats32[3].shape[-1] == 4 and feats32[4].shape[-1] == 4      # RepDistiller: no pool3 at 32 px
    assert feats64[3].shape[-1] == 8 and feats64[4].shape[-1] == 4      # and pool3 at 64 px


def test_wrn_dropout_argument():
    model = model_dict["wrn_16_1"](num_classes=10, drop_rate=0.3)
    assert model.block1.layer[0].droprate == 0.3
    assert model_dict["wrn_16_1"](num_classes=10, dropRate=0.2).block3.layer[1].droprate == 0.2
    assert model_dict["wrn_16_1"](num_classes=10).block2.layer[0].droprate == 0.0


def test_no_torchvision_import():
    root = Path(models.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import torchvision" not in text and "from torchvision" not in text, path


# ---------------------------------------------------------------------------------------------
# ImageNet zoo (224 px)
# ---------------------------------------------------------------------------------------------
IMAGENET = {
    # name: (parameter count with 1000 classes, feature shapes at 224 px)
    "ResNet18": (11_689_512, [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)]),
    "ResNet34": (21_797_672, [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)]),
    "ResNet50": (25_557_032, [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7),
                              (2048,)]),
    "MobileNetV1": (4_231_976, [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 7, 7),
                                (1024,)]),
    "MobileNetV2": (3_504_872, [(16, 112, 112), (24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7),
                                (1280,)]),
}
# torchvision's key layout (spot checks; the parameter counts above are torchvision's too)
TORCHVISION_KEYS = {
    "ResNet18": ["conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight", "fc.bias"],
    "ResNet50": ["layer1.0.conv3.weight", "layer1.0.bn3.running_mean", "layer1.0.downsample.0.weight",
                 "layer4.2.bn3.weight", "fc.weight"],
    "MobileNetV2": ["features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
                    "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
                    "features.2.conv.1.1.weight", "features.2.conv.2.weight", "features.2.conv.3.running_var",
                    "features.18.0.weight", "features.18.1.bias", "classifier.1.weight", "classifier.1.bias"],
    "MobileNetV1": ["model.0.0.weight", "model.0.1.running_var", "model.13.3.weight", "model.13.4.bias",
                    "fc.weight"],
}


@functools.lru_cache(maxsize=None)
def imagenet_model(name: str) -> ZooModel:
    torch.manual_seed(0)
    return imagenet_model_dict[name](num_classes=1000).eval()


def test_imagenet_registry():
    assert set(IMAGENET) <= set(imagenet_model_dict)      # the others: tests/test_models_zoo.py
    for name in IMAGENET:
        assert imagenet_model_cfg[name].input_size == 224
    # the CIFAR and ImageNet tables share names without clashing
    assert model_dict["ResNet50"] is not imagenet_model_dict["ResNet50"]


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_at_224(name):
    model = imagenet_model(name)
    n_params, shapes = IMAGENET[name]
    assert sum(p.numel() for p in model.parameters()) == n_params
    sd = model.state_dict()
    assert all(k in sd for k in TORCHVISION_KEYS.get(name, [])), [k for k in TORCHVISION_KEYS[name] if k not in sd]
    assert list(sd)[-2:] == [k for k in sd if k.endswith(("fc.weight", "fc.bias", "classifier.1.weight",
                                                          "classifier.1.bias"))]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, pre_logits = model(x, is_feat=True, preact=True)
        close(model.head(feats[-2]), logits)
    assert [tuple(f.shape[1:]) for f in feats] == shapes
    assert logits.shape == (1, 1000)
    close(pre_logits, logits)
    assert [f.shape for f in pre] == [f.shape for f in feats]
    close(pre[0], feats[0])
    for i in range(1, model.num_stages):
        if name.startswith("MobileNetV2"):
            close(pre[i], feats[i])
        else:
            close(F.relu(pre[i]), feats[i])
    bns = model.get_bn_before_relu()
    assert len(bns) == model.num_stages - 1
    assert [bn.num_features for bn in bns] == [s[0] for s in shapes[1:-1]]
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert isinstance(model.get_feat_modules(), nn.ModuleList)
    assert model.feature_shapes() == shapes                   # defaults to the registered 224 px


@pytest.mark.parametrize("name", list(IMAGENET))
def test_imagenet_small_input(name):
    """The same contract on a 64-px batch: forward, run_stages, head, train-mode BN updates."""
    model = imagenet_model(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        close(model(x), logits)
        close(model.head(model.run_stages(model.run_stages(x, 0, 3), 3)), logits)
    assert [tuple(f.shape[1:]) for f in feats] == model.feature_shapes(64)
    assert feats[-2].shape[-1] == 2
    plain, with_preact = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    with torch.no_grad():
        plain(x)
        with_preact(x, is_feat=True, preact=True)
    for (key, a), b in zip(plain.state_dict().items(), with_preact.state_dict().values()):
        assert torch.equal(a, b), key
