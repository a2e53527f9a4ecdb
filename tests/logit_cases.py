"""The hand-built and seeded logits and the small builders that the logit-loss test files share."""
import numpy as np
import torch

from distiller_zoo.base import BuildContext

from builders import step_config, student_plan, student_task

# hand-built logits of a student and a teacher (4 samples, 5 classes) and their labels
S = np.array([[2.0, -1.0, 0.5, 3.0, 0.0],
              [0.1, 0.2, -0.3, 0.4, 1.5],
              [-2.0, 4.0, 1.0, -1.0, 0.5],
              [1.0, 1.0, 1.0, 2.0, -3.0]])
T_ = np.array([[3.0, -2.0, 1.0, 5.0, -1.0],
               [0.0, 1.0, -1.0, 2.0, 3.0],
               [-1.0, 6.0, 0.0, -2.0, 1.0],
               [2.0, 0.5, 1.5, 4.0, -2.0]])
Y = np.array([3, 4, 1, 0])


def tt(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


def make_inputs(M, B=16, C=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(M, B, C, generator=g) * 3
    s = torch.randn(B, C, generator=g) * 3
    y = torch.randint(0, C, (B,), generator=g)
    return t, s, y


def ctx(opt, num_classes=5, teacher_index=0):
    return BuildContext(opt=opt, student_shapes=[], teacher_shapes=[], num_classes=num_classes,
                        teacher_index=teacher_index)


def parse(*argv):
    member = student_plan(*argv).members[0]
    return member.config, member.notes[0]


def options(**kw):
    return step_config(**{"beta_delay_epochs": 0, "epochs": 10, **kw})


def make_run(archs=("resnet8", "resnet14", "resnet8"), student="resnet8", num_classes=10, seed=0, **kw):
    args = options(teacher_num=len(archs), **kw)
    return student_task(args, archs, student, num_classes, seed), args
