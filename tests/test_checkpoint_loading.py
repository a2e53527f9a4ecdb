"""models.checkpoint: reading RepDistiller/mdistiller/CA-MKD-style checkpoints and one-line errors."""
from __future__ import annotations

import argparse
import functools
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from models import imagenet_model_dict, model_dict
from models.checkpoint import CheckpointError, infer_arch, load_model, num_classes_of, read_state_dict

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "repdistiller_cifar_models.json").read_text())["models"]


@functools.lru_cache(maxsize=None)
def trained_like(name: str, num_classes: int = 100):
    """A seeded model with non-trivial BN statistics (so a wrong load would show in the outputs)."""
    torch.manual_seed(0)
    model = model_dict[name](num_classes=num_classes)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def same_outputs(a, b):
    with torch.no_grad():
        assert torch.equal(a(X), b(X))


def assert_one_line_error(excinfo, path: Path, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------
def test_round_trip_repdistiller_format(tmp_path):
    model = trained_like("resnet8")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "epoch": 3, "best_acc": torch.tensor(71.5),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]}}, path)
    sd, meta = read_state_dict(path)
    assert list(sd) == list(model.state_dict())
    assert meta == {"epoch": 3, "best_acc": 71.5}
    loaded = load_model(path, arch="resnet8", num_classes=100)
    assert loaded.arch == "resnet8" and not loaded.training
    same_outputs(loaded, model)


def test_bare_state_dict(tmp_path):
    model = trained_like("resnet8")
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    same_outputs(load_model(path, arch="resnet8"), model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapped_prefixes_are_stripped(tmp_path, prefix):
    model = trained_like("resnet8")
    path = tmp_path / "ddp.pth"
    torch.save({"model": OrderedDict((prefix + k, v) for k, v in model.state_dict().items())}, path)
    sd, _ = read_state_dict(path)
    assert list(sd) == list(model.state_dict())
    same_outputs(load_model(path, arch="resnet8"), model)


def test_arch_from_repdistiller_teacher_folder(tmp_path):
    model = trained_like("resnet32x4")
    folder = tmp_path / "save" / "models" / "resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0"
    folder.mkdir(parents=True)
    best, epoch = folder / "resnet32x4_best.pth", folder / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "best_acc": torch.tensor(79.4)}, best)
    torch.save({"epoch": 240, "model": model.state_dict()}, epoch)
    for path in (best, epoch):
        loaded = load_model(path)
        assert loaded.arch == "resnet32x4"         # not resnet32: the longest name wins
        same_outputs(loaded, model)


def test_arch_from_meta(tmp_path):
    model = trained_like("resnet8")
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict(), "arch": "resnet8", "dataset": "cifar100"}, path)
    loaded = load_model(path)
    assert loaded.arch == "resnet8"
    same_outputs(loaded, model)


def test_explicit_arch_wins_over_the_name(tmp_path):
    model = trained_like("resnet8")
    path = tmp_path / "resnet14_best.pth"
    torch.save({"model": model.state_dict()}, path)
    assert load_model(path, arch="resnet8").arch == "resnet8"


def test_saved_options_namespace_is_accepted(tmp_path):
    model = trained_like("resnet8")
    path = tmp_path / "resnet8_last.pth"
    torch.save({"model": model.state_dict(), "opt": argparse.Namespace(model="resnet8", lr=0.05)}, path)
    _, meta = read_state_dict(path)
    assert "opt" not in meta
    same_outputs(load_model(path), model)


def test_imagenet_round_trip(tmp_path):
    torch.manual_seed(0)
    model = imagenet_model_dict["ResNet18"](num_classes=10).eval()
    path = tmp_path / "ResNet18_best.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = load_model(path, imagenet=True)
    assert loaded.arch == "ResNet18"
    same_outputs(loaded, model)


@pytest.mark.parametrize("path,arch", [
    ("save/models/resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0/resnet32x4_best.pth", "resnet32x4"),
    ("save/models/resnet32_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth", "resnet32"),
    ("save/models/resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth", "resnet32x4"),
    ("save/models/wrn_40_2_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_10.pth", "wrn_40_2"),
    ("save/models/ResNet50_cifar100_lr_0.05_decay_0.0005_trial_1/ResNet50_last.pth", "ResNet50"),
    ("save/student_model/S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_1/ckpt_epoch_40.pth", "resnet8x4"),
    ("save/student_model/S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_1/resnet8x4_best.pth", "resnet8x4"),
    ("save/CAMKD/S~MobileNetV2_cifar100_camkd_r~1_a~0_b~50_1/ckpt_epoch_5.pth", "MobileNetV2"),
    ("download_ckpts/cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth", "vgg13"),
    ("teachers/ShuffleV2.pth", "ShuffleV2"),
    ("some/where/ckpt_epoch_240.pth", None),
    ("some/where/weights.pth", None),
])
def test_infer_arch_from_names(path, arch):
    assert infer_arch(path, {}) == arch


def test_infer_arch_meta_first_and_imagenet_names():
    assert infer_arch("resnet8_best.pth", {"arch": "wrn_16_2"}) == "wrn_16_2"
    assert infer_arch("x/MobileNetV1_best.pth", None, imagenet=True) == "MobileNetV1"
    assert infer_arch("x/MobileNetV1_best.pth", None) is None      # not a CIFAR model


@pytest.mark.parametrize("name", list(FIXTURE))
def test_num_classes_of_every_zoo_layout(name):
    sd = OrderedDict((k, torch.empty(shape, device="meta")) for k, shape in FIXTURE[name]["state_dict"].items())
    assert num_classes_of(sd) == 100


# ---------------------------------------------------------------------------------------------
# errors: one line, naming the file
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def resnet8_ckpt(tmp_path):
    path = tmp_path / "resnet8_best.pth"
    torch.save({"model": trained_like("resnet8").state_dict(), "epoch": 1}, path)
    return path


@pytest.mark.parametrize("arch,fragment", [
    ("resnet14", "missing keys layer1.1.conv1.weight"),               # deeper: keys it does not have
    ("resnet8x4", "shape of conv1.weight is (16, 3, 3, 3)"),          # wider: same keys, other shapes
    ("wrn_16_1", "unexpected keys"),                                  # another family
])
def test_wrong_architecture(resnet8_ckpt, arch, fragment):
    with pytest.raises(CheckpointError) as excinfo:
        load_model(resnet8_ckpt, arch=arch)
    assert_one_line_error(excinfo, resnet8_ckpt, repr(arch), fragment, "suggests 'resnet8'")


def test_wrong_class_count(resnet8_ckpt):
    with pytest.raises(CheckpointError) as excinfo:
        load_model(resnet8_ckpt, num_classes=10)
    assert_one_line_error(excinfo, resnet8_ckpt, "has 100 classes, expected 10")


def test_unknown_architecture(resnet8_ckpt):
    with pytest.raises(CheckpointError) as excinfo:
        load_model(resnet8_ckpt, arch="resnet9000")
    assert_one_line_error(excinfo, resnet8_ckpt, "unknown CIFAR architecture 'resnet9000'")


def test_architecture_not_inferable(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": trained_like("resnet8").state_dict()}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, path, "pass the architecture")


def test_truncated_file(resnet8_ckpt):
    data = resnet8_ckpt.read_bytes()
    path = resnet8_ckpt.with_name("resnet8_truncated.pth")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, path, "truncated or corrupt")


def test_text_file(tmp_path):
    path = tmp_path / "resnet8_best.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, path, "not a PyTorch checkpoint")


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle(tmp_path, protocol):
    import pickle
    path = tmp_path / "resnet8_best.pth"
    path.write_bytes(pickle.dumps({"model": [1, 2, 3]}, protocol=protocol))
    with pytest.raises(CheckpointError) as excinfo:
        read_state_dict(path)
    assert_one_line_error(excinfo, path, "not a PyTorch checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "resnet8_best.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as excinfo:
        read_state_dict(path)
    assert_one_line_error(excinfo, path, "is empty")


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "resnet8_best.pth"
    with pytest.raises(CheckpointError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, path, "no such file")


def test_directory(tmp_path):
    path = tmp_path / "resnet8_cifar100_lr_0.05"
    path.mkdir()
    with pytest.raises(CheckpointError) as excinfo:
        read_state_dict(path)
    assert_one_line_error(excinfo, path, "is a directory")


@pytest.mark.parametrize("content", [{"epoch": 3, "best_acc": 70.0}, {"model": {}}, torch.ones(3)])
def test_no_state_dict(tmp_path, content):
    path = tmp_path / "resnet8_best.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError) as excinfo:
        read_state_dict(path)
    assert "\n" not in str(excinfo.value) and path.name in str(excinfo.value)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert "\n" not in str(CheckpointError("a\nb\n  c"))
