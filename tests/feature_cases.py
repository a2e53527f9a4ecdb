"""The hand-built feature maps, configuration, context and share check the classic feature-loss test files share."""
import pytest
import torch

from distiller_zoo import DISTILLERS
from distiller_zoo.base import Batch, BuildContext, NetOutput

from builders import step_config

NUM_CLASSES = 10


def options(**kw):
    return step_config(**{"beta": 1.0, "beta_delay_epochs": 0, "epochs": 10, **kw})


def context(s_shapes, t_shapes, **kw):
    return BuildContext(opt=options(**kw), student_shapes=list(s_shapes), teacher_shapes=list(t_shapes),
                        num_classes=NUM_CLASSES)


# hand-built features (float64, post-ReLU-like: non-negative)
S_SHAPES = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2), (8,)]
T_SHAPES = [(3, 16, 16), (3, 16, 16), (5, 8, 8), (7, 4, 4), (7, 2, 2), (7,)]


def hand_feats(shapes, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, *s, generator=g, dtype=torch.float64) for s in shapes]


def outputs(feats):
    return NetOutput(feats=feats, logits=torch.zeros(feats[0].shape[0], NUM_CLASSES, dtype=feats[0].dtype))


def run_loss(name, s_feats, t_feats, **kw):
    d = DISTILLERS[name](context([tuple(f.shape[1:]) for f in s_feats], [tuple(f.shape[1:]) for f in t_feats], **kw))
    d.double()
    return d, d(outputs(s_feats), outputs(t_feats), Batch(images=None, labels=None))


def check_shares(term, expected_rows, batch_value=None):
    """per_sample equals the reference's shares and its mean equals the batch loss."""
    expected = torch.tensor(expected_rows, dtype=torch.float64)
    assert term.per_sample.shape == expected.shape
    torch.testing.assert_close(term.per_sample, expected, rtol=1e-9, atol=1e-12)
    batch_value = expected.mean().item() if batch_value is None else batch_value
    assert term.per_sample.mean().item() == pytest.approx(batch_value, rel=1e-9, abs=1e-12)
