"""What the benchmarks share: device timing helpers, and students built as a run builds them (a
configuration through ``train_student.py``'s parser and resolution, the objective through
``helper.student_run.make_objective``)."""
from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train_student  # noqa: E402
from helper.student_run import make_objective  # noqa: E402
from helper.student_step import StudentTask  # noqa: E402
from helper.teachers import TeacherEnsemble  # noqa: E402
from models import model_dict  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if torch.device(device).type == "cuda" else float("nan")


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def student_config(method, num_teachers: int, device, *extra, distill="inter", beta=50.0):
    """CA-MKD's setting: ``-r 1 -a 1 -b 50``, ``--distill inter``, feature terms from the first
    epoch, under ``method``, resolved for ``device`` as ``train_student.py`` resolves it."""
    plan = train_student.parse_args(["--distill", distill, "--ensemble_method", method, "-r", "1", "-a", "1",
                                     "-b", str(beta), "--beta_delay_epochs", "0", "--teacher_num", str(num_teachers),
                                     "--device", str(device), *extra])
    return plan.shared


def student_task(config, teachers, student: str, num_classes: int, num_data: int, image_size: int = 32, seed=0):
    """A ``StudentTask`` for ``student`` (a zoo name) and ``teachers`` (an ensemble, or its shared
    view), on the configuration's device and memory format."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    net = model_dict[student](num_classes=num_classes).to(config.device, memory_format=fmt)
    return StudentTask(make_objective(config, net, teachers, num_classes, num_data, image_size))


def teachers_on(names, num_classes: int, config, seed=0) -> TeacherEnsemble:
    torch.manual_seed(seed)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    return TeacherEnsemble([model_dict[n](num_classes=num_classes) for n in names], list(names),
                           fuse=config.fuse_teachers, fold_bn=config.fold_bn).to(config.device, memory_format=fmt)
