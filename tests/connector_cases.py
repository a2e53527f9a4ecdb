"""The configuration, context, random outputs, value check and task that the connector-loss test files share."""
import pytest
import torch

from distiller_zoo.base import BuildContext, NetOutput

from builders import step_config, student_task

NUM_CLASSES = 10


def options(distill="vid", method="AVERAGE_LOSS", **kw):
    return step_config(**dict(dict(distill=distill, ensemble_method=method, gamma=1.0, alpha=1.0, beta=1.0,
                                   beta_delay_epochs=0, learning_rate=0.05, nce_k=16, feat_dim=8), **kw))


def context(s_shapes, t_shapes, opt, num_data=0, labels=None, num_teachers=1):
    return BuildContext(opt=opt, student_shapes=list(s_shapes), teacher_shapes=list(t_shapes),
                        num_classes=NUM_CLASSES, num_data=num_data, train_labels=labels,
                        num_teachers=num_teachers)


def outputs(shapes, B, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(B, *shape, generator=g).requires_grad_(grad) for shape in shapes]
    return NetOutput(feats=feats, logits=torch.randn(B, NUM_CLASSES, generator=g))


def check_term(term, expected_batch_loss, B):
    assert term.per_sample.shape == (B,)
    assert term.per_sample.mean().item() == pytest.approx(expected_batch_loss, rel=1e-5, abs=1e-6)
    if term.per_layer is not None:
        assert term.per_layer.shape[1] == B
        assert torch.allclose(term.per_layer.sum(0), term.per_sample, rtol=1e-5, atol=1e-6)


def make_task(distill, archs, student="resnet8", method="AVERAGE_LOSS", seed=0, **kw):
    args = options(distill, method, teacher_num=len(archs), **kw)
    labels = torch.arange(64) % NUM_CLASSES
    task = student_task(args, archs, student, NUM_CLASSES, seed, num_data=64, train_labels=labels)
    return task, labels, args
