"""The zoo's names beyond RepDistiller's 22 (issue 27 item 1: every name RepDistiller's resnetv2.py,
CA-MKD's scripts and mdistiller's CIFAR dictionary use builds), the de-duplicated model code
(issue 29: initial weights and outputs unchanged), and the CIFAR zoo at 64 px (issue 26).

Reference layouts: tests/fixtures/reference_extra_models.json (derived from the reference code);
the state before the de-duplication: tests/fixtures/model_init_digests.json."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train_student
from distiller_zoo import DISTILLERS
from distiller_zoo.base import BuildContext
from distiller_zoo.routing import OUTPUT, distiller_rows, plan_spots
from models import imagenet_model_cfg, imagenet_model_dict, model_cfg, model_dict
from models.checkpoint import load_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")      # a loaded 2-core machine

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reference_extra_models.json").read_text())["models"]
DIGESTS = json.loads((FIXTURES / "model_init_digests.json").read_text())
REPDISTILLER = json.loads((FIXTURES / "repdistiller_cifar_models.json").read_text())["models"]

# Every --model / --model_s choice of RepDistiller's and CA-MKD's train_teacher.py and train_student.py,
# mdistiller's cifar_model_dict, and RepDistiller's resnetv2.py constructors (read from their code).
REPDISTILLER_CHOICES = {
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16",
    "vgg19", "ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2"}
RESNETV2 = {"ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"}
CAMKD_CHOICES = REPDISTILLER_CHOICES | {
    "ResNet18", "ResNet34", "ResNet101", "resnet8x4_double", "resnet20x4", "wrn_50_2", "vgg8_imagenet",
    "ShuffleV2_0_5", "ResNet10", "shufflenet_v2_x0_5", "MobileNetV2_Imagenet", "ShuffleV2_Imagenet",
    "ResNet34x2"}
MDISTILLER_CIFAR = REPDISTILLER_CHOICES | {"ResNet18"}
# CA-MKD's 224-px networks: in the ImageNet zoo, and in the CIFAR zoo under the same name
IMAGENET_ALIASES = {"ResNet10", "ResNet34x2", "wrn_50_2", "vgg8_imagenet", "MobileNetV2_Imagenet",
                    "ShuffleV2_Imagenet", "shufflenet_v2_x0_5"}
LIGHT = {"MobileNetV2_Imagenet", "ShuffleV2_Imagenet", "shufflenet_v2_x0_5", "ShuffleV2_0_5"}   # lr 0.01
NEW_CIFAR = sorted((RESNETV2 | CAMKD_CHOICES | MDISTILLER_CIFAR) - REPDISTILLER_CHOICES)


def tables_of(key):
    """(table name, table, model name) pairs a reference fixture entry describes."""
    if key.startswith("camkd:"):
        return [("imagenet", imagenet_model_dict, key.split(":", 1)[1])]
    out = [("cifar", model_dict, key)]
    if key in IMAGENET_ALIASES:                     # the same network in both zoos
        out.append(("imagenet", imagenet_model_dict, key))
    return out


def on_meta(build, **kw):
    """The network's layout without drawing or storing weights (fast for 100M-parameter VGGs)."""
    with torch.device("meta"):
        return build(**kw)


def seeded(name: str):
    """A seeded CIFAR-zoo model in eval mode with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = model_dict[name](num_classes=100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- issue 27: every name builds, with the reference's state_dict ------------------------------
def test_every_script_name_is_registered():
    assert set(NEW_CIFAR) == {"ResNet18", "ResNet34", "ResNet101", "ResNet152", "resnet8x4_double", "resnet20x4",
                              "wrn_50_2", "vgg8_imagenet", "ShuffleV2_0_5", "ResNet10", "shufflenet_v2_x0_5",
                              "MobileNetV2_Imagenet", "ShuffleV2_Imagenet", "ResNet34x2"}
    missing = sorted((CAMKD_CHOICES | MDISTILLER_CIFAR | RESNETV2) - set(model_dict))
    assert not missing, f"CIFAR-side names that do not build: {missing}"
    assert IMAGENET_ALIASES | {"ResNet101"} <= set(imagenet_model_dict)
    assert set(REFERENCE) == set(NEW_CIFAR) | {"camkd:ResNet18", "camkd:ResNet34", "camkd:ResNet50", "camkd:ResNet101"}


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_state_dict_matches_reference(key):
    spec = REFERENCE[key]
    for where, table, name in tables_of(key):
        model = on_meta(table[name], num_classes=100)
        sd = model.state_dict()
        assert list(sd) == list(spec["state_dict"]), f"{where}/{name}: state_dict keys or their order differ"
        assert {k: list(v.shape) for k, v in sd.items()} == spec["state_dict"], f"{where}/{name}"
        assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]
        assert model.arch == name


@pytest.mark.parametrize("name", NEW_CIFAR)
def test_registry_entry(name):
    cfg = model_cfg[name]
    assert cfg.input_size == 32 and on_meta(model_dict[name], num_classes=3).input_size == 32
    assert cfg.default_lr == (0.01 if name in LIGHT else 0.05)    # RepDistiller: 0.01 for MobileNet/ShuffleNet
    assert cfg.family
    if name in IMAGENET_ALIASES:
        assert imagenet_model_cfg[name].input_size == 224 and imagenet_model_cfg[name].family == cfg.family
        assert imagenet_model_cfg[name].default_lr == 0.1


def test_families():
    assert {n: model_cfg[n].family for n in ("ResNet18", "ResNet34", "ResNet101", "ResNet152", "resnet20x4",
                                             "resnet8x4_double", "ShuffleV2_0_5")} == {
        "ResNet18": "resnetv2_basic", "ResNet34": "resnetv2_basic", "ResNet101": "resnet_bottleneck",
        "ResNet152": "resnet_bottleneck", "resnet20x4": "resnet", "resnet8x4_double": "resnet",
        "ShuffleV2_0_5": "shufflenetv2"}
    assert imagenet_model_cfg["ResNet34x2"].family == imagenet_model_cfg["ResNet34"].family == "resnet"


# feature shapes at 32 px (2-D entries: the pooled vector), derived from each network's stage layout
SHAPES_32 = {
    "ResNet18": [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)],
    "ResNet34": [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512,)],
    "ResNet101": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)],
    "ResNet152": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)],
    "resnet20x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
    "resnet8x4_double": [(64, 32, 32), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512,)],
    "ShuffleV2_0_5": [(24, 32, 32), (48, 16, 16), (96, 8, 8), (192, 4, 4), (1024,)],
    # 224-px layouts at 32 px: stem /4, then /2 per stage
    "ResNet10": [(64, 8, 8), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1), (512,)],
    "ResNet34x2": [(64, 8, 8), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1), (512,)],
    "wrn_50_2": [(64, 8, 8), (256, 8, 8), (512, 4, 4), (1024, 2, 2), (2048, 1, 1), (2048,)],
    "vgg8_imagenet": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2), (25088,)],
    "MobileNetV2_Imagenet": [(16, 16, 16), (24, 8, 8), (32, 4, 4), (96, 2, 2), (320, 1, 1), (1280,)],
    "ShuffleV2_Imagenet": [(24, 8, 8), (116, 4, 4), (232, 2, 2), (464, 1, 1), (1024,)],
    "shufflenet_v2_x0_5": [(24, 8, 8), (48, 4, 4), (96, 2, 2), (192, 1, 1), (1024,)],
}
# what preact reports for stages 1..K-1: the last block before its ReLU, or (inverted residuals
# end linearly) the plain feature
LINEAR_END = {"MobileNetV2_Imagenet"}
NO_BN_BEFORE_RELU = {"ShuffleV2_0_5", "ShuffleV2_Imagenet", "shufflenet_v2_x0_5"}


@pytest.mark.parametrize("name", NEW_CIFAR)
def test_forward_contract_and_checkpoint_round_trip(name, tmp_path):
    model = seeded(name)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        pre, pre_logits = model(x, is_feat=True, preact=True)
        assert [tuple(f.shape[1:]) for f in feats] == SHAPES_32[name]
        assert [f.shape for f in pre] == [f.shape for f in feats] and logits.shape == (1, 100)
        close(pre_logits, logits)
        close(model.head(feats[-2]), logits)
        close(model.run_stages(model.run_stages(x, 0, 2), 2), feats[-2])
    assert on_meta(model_dict[name], num_classes=100).feature_shapes() == SHAPES_32[name]
    close(pre[0], feats[0])
    close(pre[-1], feats[-1])
    for i in range(1, model.num_stages):
        if name in LINEAR_END:
            close(pre[i], feats[i])
        elif name == "ShuffleV2_0_5":                 # RepDistiller's: before the channel shuffle
            close(model.layer1[-1].shuffle(F.relu(pre[i])), feats[i])
        else:
            close(F.relu(pre[i]), feats[i])
            assert (pre[i] < 0).any()
    if name in NO_BN_BEFORE_RELU:
        with pytest.raises(NotImplementedError, match="no BN right before"):
            model.get_bn_before_relu()
    else:
        bns = model.get_bn_before_relu()
        assert [bn.num_features for bn in bns] == [s[0] for s in SHAPES_32[name][1:-1]]
        assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    ids = {id(m) for m in model.modules()}
    assert all(id(m) in ids for m in model.get_feat_modules())

    # a RepDistiller-style checkpoint of it loads unchanged, the architecture read from its name
    path = tmp_path / f"{name}_cifar100_lr_0.05_decay_0.0005_trial_0" / f"{name}_best.pth"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "epoch": 240, "best_acc": torch.tensor(70.0)}, path)
    loaded = load_model(path, num_classes=100)
    assert type(loaded) is type(model) and loaded.arch == name and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)


IMAGENET_224 = {
    "ResNet101": [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (2048,)],
    "ResNet10": [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512,)],
    "wrn_50_2": [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7), (2048,)],
    "vgg8_imagenet": [(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28), (512, 14, 14), (25088,)],
    "ShuffleV2_Imagenet": [(24, 56, 56), (116, 28, 28), (232, 14, 14), (464, 7, 7), (1024,)],
    "MobileNetV2_Imagenet": [(16, 112, 112), (24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7), (1280,)],
}


@pytest.mark.parametrize("name", sorted(IMAGENET_224))
def test_imagenet_side_feature_shapes_at_224(name):
    model = on_meta(imagenet_model_dict[name], num_classes=1000)
    assert model.input_size == 224
    assert model.feature_shapes() == IMAGENET_224[name]          # shapes only: a forward on meta tensors


@pytest.mark.parametrize("name", ["ResNet18", "ResNet50"])
def test_camkd_torchvision_layout_checkpoint_loads_under_its_cifar_name(name, tmp_path):
    """CA-MKD's model_dict gives ResNet18/34/50/101 torchvision's layout; the CIFAR zoo (like
    RepDistiller and mdistiller) gives them resnetv2's. Such a CIFAR checkpoint still loads."""
    torch.manual_seed(0)
    camkd = imagenet_model_dict[name](num_classes=100).eval()
    path = tmp_path / f"{name}_best.pth"
    torch.save({"model": camkd.state_dict()}, path)
    loaded = load_model(path, num_classes=100)
    assert type(loaded) is type(camkd) and loaded.arch == name and loaded.input_size == 32
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), camkd(x))
    repd = on_meta(model_dict[name], num_classes=100)
    assert type(repd) is not type(camkd)                          # the CIFAR name is RepDistiller's network


# -- issue 29: the de-duplicated code builds what the old code built ---------------------------
def sd_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", sorted(DIGESTS["models"]))
def test_initial_weights_and_outputs_unchanged(key):
    table_name, name = key.split("/")
    spec = DIGESTS["models"][key]
    table = model_dict if table_name == "cifar" else imagenet_model_dict
    torch.manual_seed(0)
    model = table[name]()
    if torch.__version__.split("+")[0] == DIGESTS["torch"]:
        assert sd_digest(model) == spec["init_sha256"], "initial weights for seed 0 changed"
    size = spec["image_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.eval()(x)
    torch.testing.assert_close(logits[0, :8], torch.tensor(spec["logits"]), rtol=1e-4, atol=1e-5)


def test_digest_notices_a_changed_initialisation():
    """The digest test can fail: one weight changed by one ulp changes the digest."""
    torch.manual_seed(0)
    model = model_dict["resnet8"]()
    assert sd_digest(model) == DIGESTS["models"]["cifar/resnet8"]["init_sha256"] or \
        torch.__version__.split("+")[0] != DIGESTS["torch"]
    with torch.no_grad():
        w = model.conv1.weight.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(1.0))
    assert sd_digest(model) != DIGESTS["models"]["cifar/resnet8"]["init_sha256"]


# -- issue 26: the CIFAR zoo at 64 px (Tiny-ImageNet) --------------------------------------------
@pytest.mark.parametrize("name", sorted(model_dict))
def test_cifar_zoo_at_64_px(name):
    torch.manual_seed(0)
    model = model_dict[name](num_classes=200).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats, logits = model(x, is_feat=True, preact=True)
    assert logits.shape == (2, 200) and torch.isfinite(logits).all()
    if model_cfg[name].family == "vit":         # resized to its own size: every shape as at 32 px
        return
    twin = on_meta(model_dict[name], num_classes=200)      # (shapes only)
    shapes64, shapes32 = twin.feature_shapes(64), twin.feature_shapes(32)
    assert [tuple(f.shape[1:]) for f in feats] == shapes64
    assert shapes64[-1] == shapes32[-1], "the pooled vector must not depend on the image size"
    assert shapes64[0][1:] == (2 * shapes32[0][1], 2 * shapes32[0][2])     # the first map does grow


def spot_args(distill):
    return train_student.build_parser().parse_args(
        ["--spot_adaptive", "--distill", distill, "-r", "1", "-a", "1", "-b", "1", "--learning_rate", "0.05"])


def spot_plan(distill, student_name, teacher_names, image_size=64, num_classes=200):
    """The routing plan ``helper.spot_adaptive.build_router`` makes, from the routing functions."""
    args = spot_args(distill)
    torch.manual_seed(0)
    student = model_dict[student_name](num_classes=num_classes)
    teachers = [model_dict[t](num_classes=num_classes).eval() for t in teacher_names]
    s_shapes = student.feature_shapes(image_size)
    t_shapes = [t.feature_shapes(image_size) for t in teachers]
    rows = []
    for m, teacher in enumerate(teachers):
        d = DISTILLERS[distill](BuildContext(opt=args, student_shapes=s_shapes, teacher_shapes=t_shapes[m],
                                             num_classes=num_classes, num_data=64, teacher_index=m,
                                             num_teachers=len(teachers), student=student, teacher=teacher))
        rows.append(distiller_rows(d, s_shapes, t_shapes[m], name=f"--distill {distill}", num_classes=num_classes,
                                   image_size=image_size, student=student, teacher=teacher))
    plan = plan_spots({distill: rows, "kd": [[(OUTPUT, OUTPUT)]] * len(teachers)},
                      {distill: False, "kd": False}, s_shapes, t_shapes)
    return plan, s_shapes


@pytest.mark.parametrize("distill", ["attention", "hint"])
@pytest.mark.parametrize("student,teachers", [("resnet8x4", ("resnet32x4", "resnet32x4")),   # same family
                                              ("vgg8", ("resnet32x4", "wrn_40_2"))])          # cross family
def test_spot_adaptive_plan_at_64_px(distill, student, teachers):
    plan, s_shapes = spot_plan(distill, student, teachers)
    labels = [s.label for s in plan.spots]
    assert labels[-1] == "out" and len(labels) >= 2
    for spot in plan.feature_spots:
        assert len(spot.teachers) == len(teachers)
        assert s_shapes[spot.student][-1] >= 4                    # a 64-px map: at least 4x4
    if distill == "attention":                                    # the three maps RepDistiller pairs
        assert [s.student for s in plan.feature_spots] == [1, 2, 3]


@pytest.mark.parametrize("size", [(2, 2), (4, 4), (3, 5), (14, 14)])
def test_vgg8_imagenet_pooling_is_adaptive_average_pooling(size):
    """vgg8_imagenet's 7x7 pooling, as matrix products (deterministic on CUDA), at other map sizes."""
    from models.imagenet.vgg import adaptive_average
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5), requires_grad=True)
    ours = adaptive_average(x, 7, 7)
    torch.testing.assert_close(ours, F.adaptive_avg_pool2d(x, (7, 7)))
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0],
                               torch.autograd.grad(F.adaptive_avg_pool2d(x, (7, 7)), x, g)[0])
