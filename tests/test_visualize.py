"""scripts/visualize.py: the class-mean logit heatmaps and the t-SNE figure on digits checkpoints,
their numbers against an independent computation, and its one-line errors."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from dataset.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data
from models import build_model

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "visualize.py")
spec = importlib.util.spec_from_file_location("visualize", SCRIPT)
visualize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(visualize)


def save(path, model, dataset="digits", args_json=None, **meta):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model.state_dict(), "arch": model.arch, "dataset": dataset, **meta}, path)
    if args_json is not None:
        with open(os.path.join(os.path.dirname(path), "args.json"), "w") as f:
            json.dump(args_json, f)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Randomly initialised digits models in the training scripts' checkpoint format: a resnet8
    teacher (its run's args.json beside it), a resnet8 student and a 32-px DeiT-Tiny student."""
    root = tmp_path_factory.mktemp("vis")
    torch.manual_seed(0)
    teacher = save(root / "t" / "resnet8_best.pth", build_model("resnet8", 10),
                   args_json={"dataset": "digits", "model": "resnet8"})
    s1 = save(root / "s1" / "resnet8_last.pth", build_model("resnet8", 10))
    s2 = save(root / "s2" / "deit_tiny_last.pth", build_model("deit_tiny", 10, img_size=32), img_size=32)
    return root, teacher, [s1, s2]


def test_standardize_and_class_means_by_hand():
    z = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0], [2.0, 2.0, 2.0]])
    y = torch.tensor([0, 1, 1])
    mean = visualize.class_mean_logits(z, y, 3)
    assert torch.allclose(mean[0], torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64))
    assert torch.allclose(mean[1], torch.tensor([1.0, 1.0, 2.5], dtype=torch.float64))
    assert torch.isnan(mean[2]).all()                    # no sample of class 2
    # row 0: mean 3, unbiased std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)
    st = visualize.standardize(z[:1])
    assert torch.allclose(st, (z[:1] - 3) / (7 ** 0.5 + 1e-7))
    assert torch.allclose(visualize.standardize(z[2:]), torch.zeros(1, 3))   # constant row: eps keeps it finite


def independent_class_means(path, stand):
    """Logits of the checkpoint's model on the digits test split, class means with numpy."""
    data = load_digits_data()
    x = (data.test_images.float() / 255 - DIGITS_MEAN) / DIGITS_STD
    sd = torch.load(path, weights_only=True)
    model = build_model(sd["arch"], 10, **({"img_size": sd["img_size"]} if "img_size" in sd else {}))
    model.load_state_dict(sd["model"])
    with torch.no_grad():
        z = model.eval()(x).double().numpy()
    if stand:
        z = (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)
    y = data.test_labels.numpy()
    return np.stack([z[y == c].mean(0) for c in range(10)])


@pytest.mark.parametrize("stand", [False, True])
def test_logit_heatmaps_hold_the_class_mean_differences(ckpts, tmp_path, capsys, stand):
    _, teacher, students = ckpts
    out = tmp_path / "fig"
    argv = ["logits", "--teacher", teacher, "--student", *students, "--out", str(out), "--device", "cpu"]
    assert visualize.main(argv + (["--stand"] if stand else [])) == 0
    printed = capsys.readouterr().out.split()
    pngs = [p for p in printed if p.endswith(".png")]
    assert len(pngs) == 2 and all(os.path.getsize(p) > 1000 for p in pngs)
    t_mean = independent_class_means(teacher, stand)
    for student, png in zip(students, pngs):
        drawn = np.load(png[:-4] + ".npy")
        assert drawn.shape == (10, 10)
        assert np.allclose(drawn, t_mean - independent_class_means(student, stand), atol=1e-4)
        assert ("standardized" if stand else "raw") in os.path.basename(png)


def test_tsne_writes_the_figure(ckpts, tmp_path, capsys):
    _, _, students = ckpts
    assert visualize.main(["tsne", "--model", students[0], "--out", str(tmp_path), "--device", "cpu",
                           "--max_samples", "120"]) == 0
    png = capsys.readouterr().out.split()[0]
    assert os.path.getsize(png) > 1000
    assert np.load(png[:-4] + ".npy").shape == (120, 2)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_a_one_line_error(ckpts, tmp_path, capsys):
    root, teacher, students = ckpts
    hundred = save(root / "c100" / "resnet8_best.pth", build_model("resnet8", 100))
    assert visualize.main(["tsne", "--model", hundred, "--out", str(tmp_path)]) == 2
    assert "has 100 classes, expected 10" in one_line_error(capsys)
    other = save(root / "other" / "resnet8_best.pth", build_model("resnet8", 10), dataset="cifar10")
    assert visualize.main(["logits", "--teacher", teacher, "--student", other, "--out", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "trained on digits" in err and "on cifar10" in err
    with pytest.raises(SystemExit) as exc:
        visualize.main(["heatmap", "--model", teacher])
    assert exc.value.code == 2
    assert "invalid choice: 'heatmap'" in one_line_error(capsys)
    assert visualize.main(["tsne", "--model", str(tmp_path / "missing.pth")]) == 2
    assert "no such file" in one_line_error(capsys)
