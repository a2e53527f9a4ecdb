"""Locality guidance (distiller_zoo/LG.py); students at another image size than their teachers (--student_img_size)."""
from __future__ import annotations

import pytest
import torch

from distiller_zoo.base import BuildContext, NetOutput
from distiller_zoo.LG import LocalityGuidance, guidance_pairs
from distiller_zoo.registry import DISTILLERS, ENSEMBLES
from helper.teachers import TeacherEnsemble
from models import build_model, model_dict

from builders import forward, student_config, student_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(*argv):
    return student_config("--dataset", "digits", *argv)


def test_lg_per_sample_loss_equals_a_hand_computation():
    # pair 1: student 2 channels at 1x1, teacher 3 channels at 2x2 (the student map is upsampled:
    # bilinear from 1x1 is a constant map); pair 2: student 2x2, teacher 1x1 (the teacher is upsampled)
    s_shapes, t_shapes = [(2, 1, 1), (2, 2, 2), (2,)], [(4, 8, 8), (3, 2, 2), (1, 1, 1), (1,)]
    lg = LocalityGuidance(BuildContext(opt=None, student_shapes=s_shapes, teacher_shapes=t_shapes, num_classes=10))
    assert lg.pairs == [(0, 1), (1, 2)]
    assert [tuple(c.weight.shape) for c in lg.connectors] == [(3, 2, 1, 1), (1, 2, 1, 1)]
    g = torch.Generator().manual_seed(0)
    s0, s1 = torch.randn(2, 2, 1, 1, generator=g), torch.randn(2, 2, 2, 2, generator=g)
    t1, t2 = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 1, 1, 1, generator=g)
    out = lg(NetOutput([s0, s1, torch.zeros(2, 2)], torch.zeros(2, 10)),
             NetOutput([torch.zeros(2, 4, 8, 8), t1, t2, torch.zeros(2, 1)], torch.zeros(2, 10)), None)
    W0, b0 = lg.connectors[0].weight[:, :, 0, 0], lg.connectors[0].bias
    W1, b1 = lg.connectors[1].weight[:, :, 0, 0], lg.connectors[1].bias
    expected = []
    for i in range(2):
        p0 = W0 @ s0[i, :, 0, 0] + b0                              # [3], the same at every position
        loss0 = sum((p0[c] - t1[i, c, y, x]) ** 2 for c in range(3) for y in range(2) for x in range(2)) / 12
        loss1 = sum((W1[0] @ s1[i, :, y, x] + b1[0] - t2[i, 0, 0, 0]) ** 2 for y in range(2) for x in range(2)) / 4
        expected.append(loss0 + loss1)
    assert out.per_sample.shape == (2,)
    assert torch.allclose(out.per_sample, torch.stack(expected), atol=1e-6)
    assert torch.allclose(out.per_layer.sum(0), out.per_sample)
    assert out.anchor is s1
    out.per_sample.mean().backward()
    assert all(p.grad is not None for p in lg.parameters())
    assert DISTILLERS["lg"].default_weight == 2.5 and DISTILLERS["lg"].kind == "feature"


def test_lg_pairs_vit_blocks_with_the_resnet_stages():
    s = build_model("deit_tiny", 100).feature_shapes(32)       # resized to 224: blocks 0, 6, 11
    t = model_dict["resnet56"](num_classes=100).feature_shapes()
    assert guidance_pairs(s, t) == [(0, 1), (1, 2), (2, 3)]      # layer1..layer3 (the reference's 0, 1, 2)


@pytest.mark.parametrize("method", sorted(ENSEMBLES))
def test_larger_student_steps_with_32px_teachers_under_every_strategy(method):
    """A DeiT seeing 64-px images (4x4 tokens) distils two 32-px CNN teachers with locality guidance."""
    args = parse("--model_s", "deit_tiny", "--student_img_size", "64", "--distill", "lg",
                 "--ensemble_method", method, "--teacher_num", "2", "-b", "2.5")
    torch.manual_seed(0)
    teachers = TeacherEnsemble([model_dict[a](num_classes=10) for a in ("resnet8", "resnet14")], ["a", "b"])
    student = build_model("deit_tiny", 10, img_size=args.student_img_size)
    task = student_task(args, (), student=student, teachers=teachers)
    lg_term = task.terms[1]
    # connectors built from each net's shapes at its own size: 192 channels @4x4 -> 16/32/64 @32/16/8
    assert [tuple(c.weight.shape[:2]) for c in lg_term.distillers[0].connectors] == [(16, 192), (32, 192), (64, 192)]
    task.train_mode()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    out = forward(task, x, y, epoch=2)
    assert torch.isfinite(out.loss) and out.metrics["loss_lg"] > 0
    out.loss.backward()
    assert student.patch_embed.projection.weight.grad is not None
    assert all(c.weight.grad is not None for d in lg_term.distillers for c in d.connectors)


def test_student_img_size_resizes_a_cnn_student_and_is_checked():
    args = parse("--model_s", "resnet8", "--student_img_size", "48", "--distill", "hint", "--path_t", "x.pth")
    assert args.student_img_size == 48
    student = model_dict["resnet8"](num_classes=10)
    student.input_resize = args.student_img_size           # what train_student does for a CNN
    assert student.feature_shapes(32)[-2] == (64, 12, 12)  # 48 px through two stride-2 stages
    x = torch.randn(2, 3, 32, 32)
    up = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    student.eval()
    assert torch.equal(student(x), student(up))
    for bad, message in [(["--model_s", "resnet8", "--drop_path", "0.1"], "has no drop path"),
                         (["--student_img_size", "0"], "--student_img_size must be a positive"),
                         (["--drop_path", "1.5", "--model_s", "deit_tiny"], "--drop_path must lie"),
                         (["--min_lr", "1"], "--min_lr below")]:
        with pytest.raises(SystemExit):
            parse(*bad)


def test_student_img_size_error_messages(capsys):
    with pytest.raises(SystemExit):
        parse("--model_s", "resnet8", "--drop_path", "0.1")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--drop_path 0.1: resnet8 has no drop path" in err
