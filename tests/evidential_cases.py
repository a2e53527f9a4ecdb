"""The seeded logits, labels, configuration and distiller context that the evidential test files share."""
import math

import torch

from distiller_zoo.base import BuildContext
from distiller_zoo.EKD import EKD_PRIOR

from builders import step_config

C = 10
LAM = EKD_PRIOR
c = math.exp(LAM)


def logits(B=6, K=C, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, K, generator=g, dtype=torch.float64) * scale).to(dtype)


def labels(B=6, K=C, seed=0):
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed + 100))


def options(distill="kd", method="EVIDENTIAL", **kw):
    return step_config(**dict(dict(distill=distill, ensemble_method=method, gamma=1.0, alpha=1.0, beta=1.0,
                                   beta_delay_epochs=0, learning_rate=0.05, nce_k=16, feat_dim=8, epochs=10), **kw))


def ctx(opt, index=0, M=1, student=None):
    return BuildContext(opt=opt, student_shapes=[], teacher_shapes=[], num_classes=C, teacher_index=index,
                        num_teachers=M, student=student)
