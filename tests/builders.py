"""The one place the tests build what a run builds: configurations through the scripts' own parsers
and resolution (``train_student.parse_args``, ``train_teacher.parse_args``), objectives and tasks
through the library's builders (``helper.student_run.make_objective``), small data.

Flags are given as keyword arguments named as the parser's ``dest`` (``kd_T=2``, ``distill="kd+hint"``,
``gamma=1`` for ``-r``); they become a command line (``argv_for``), so every value goes through the
flag's own type and the same resolution as a real run.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Sequence

import torch

import train_student
import train_teacher
from helper.config import RunConfig
from helper.run_identity import teacher_identity
from helper.student_run import identity, make_objective
from helper.student_step import StudentTask
from helper.teachers import TeacherEnsemble
from models import model_dict

# What the step tests assume unless they say otherwise: plain weights and one strategy (a term's
# weight is then its own, not a loss's usual -b), on the CPU.
STEP_DEFAULTS = dict(gamma=1.0, alpha=1.0, beta=0.0, ensemble_method="AVERAGE_LOSS")


def argv_for(parser: argparse.ArgumentParser, **flags) -> list:
    """The command line that sets each ``dest=value`` of ``flags`` (a misspelt name fails)."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(flags) - set(actions))
    assert not unknown, f"no such option(s): {unknown}"
    argv = []
    for dest, value in flags.items():
        action = actions[dest]
        longs = [o for o in action.option_strings if o.startswith("--")]
        flag = (longs or action.option_strings)[0]
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if bool(value) != bool(action.default):
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def student_plan(*argv, **flags):
    """``train_student.py ARGV FLAGS --device cpu`` resolved: the ``StudentPlan``."""
    parser = train_student.build_parser()
    return train_student.parse_args(["--device", "cpu", *argv, *argv_for(parser, **flags)], parser)


def student_config(*argv, **flags) -> RunConfig:
    """One student's resolved configuration (see ``student_plan``)."""
    plan = student_plan(*argv, **flags)
    assert not plan.is_group, "student_config is for one student; use student_plan for a group"
    return plan.members[0].config


def step_config(*argv, **flags) -> RunConfig:
    """A student's configuration with ``STEP_DEFAULTS`` unless given."""
    return student_config(*argv, **dict(STEP_DEFAULTS, **flags))


def teacher_configs(*argv, **flags):
    """``train_teacher.py ARGV FLAGS --device cpu`` resolved: one configuration per trial."""
    parser = train_teacher.build_parser()
    return train_teacher.parse_args(["--device", "cpu", *argv, *argv_for(parser, **flags)], parser)


def student_name(config: RunConfig, teacher_archs: Sequence[str], teacher_digests: Sequence[str] = ()) -> str:
    """The folder name a run gives this student with these teachers."""
    return identity(train_student.build_parser(), config, teacher_archs, teacher_digests)[0]


def teacher_folder(config: RunConfig) -> str:
    """The folder name of a teacher trial."""
    return teacher_identity(train_teacher.build_parser(), config)[0]


# The suite's digits are 16 px, not the default 32: the same 8x8 digits (nearest x2 instead of x4)
# at a quarter of the pixels, so every end-to-end run costs about a third (dataset/digits.py).
SUITE_DIGITS_PX = 16
SUITE_DIGITS = ("--img_size", str(SUITE_DIGITS_PX))

# The flags of conftest.digits_teachers' runs (its trials 0, 1, 2 are these with --trial N): a test
# that continues, repeats or breaks one of those runs does it on a copy (``copy_session_teacher``).
SESSION_TEACHER = ("--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--epochs", "8",
                   "--lr_decay_epochs", "6", "--batch_size", "64", "--quiet")


def session_teacher_folder(trial="0") -> str:
    """The folder name of a session teacher's trial."""
    return teacher_folder(teacher_configs(*SESSION_TEACHER, "--trial", str(trial))[0])


def session_teacher_checkpoint(digits_teachers: str, trial="0") -> str:
    """The best checkpoint of a session teacher's trial (read-only; ``--path_t`` for a student)."""
    return os.path.join(digits_teachers, "teachers", session_teacher_folder(trial), "resnet8_best.pth")


def copy_session_teacher(digits_teachers: str, save_dir: str, trial="0") -> str:
    """A copy of a session teacher's run folder (``digits_teachers``' trial) under ``save_dir``
    (``save_dir/teachers/<its name>``); returns the copy's folder. Tests change copies only."""
    name = session_teacher_folder(trial)
    source = os.path.join(digits_teachers, "teachers", name)
    assert os.path.isdir(source), f"no session teacher {source}: SESSION_TEACHER no longer matches conftest"
    target = os.path.join(save_dir, "teachers", name)
    shutil.copytree(source, target)
    return target


def as_if_on(config: RunConfig, device: str) -> RunConfig:
    """``config`` as resolution gives it on a machine where ``device`` exists (a pretend CUDA
    device on the CPU: ``tests/device_guard.py``)."""
    return config.replace(device=device)


def teachers_of(archs: Sequence[str], num_classes: int = 10, fuse=None) -> TeacherEnsemble:
    return TeacherEnsemble([model_dict[a](num_classes=num_classes) for a in archs], list(archs), fuse=fuse)


def student_task(config: RunConfig, archs: Sequence[str], student="resnet8", num_classes: int = 10,
                 seed: int = 0, num_data: int = 100, image_size: int = 32, train_labels=None,
                 fuse=None, teachers=None) -> StudentTask:
    """A ``StudentTask`` over freshly initialised zoo models (teachers ``archs``, or a built
    ``teachers`` ensemble; ``student`` a zoo name or a network), built as a run builds it
    (``make_objective``), for one-step tests."""
    torch.manual_seed(seed)
    teachers = teachers if teachers is not None else teachers_of(archs, num_classes, fuse)
    net = model_dict[student](num_classes=num_classes) if isinstance(student, str) else student
    return StudentTask(make_objective(config, net, teachers, num_classes, num_data, image_size,
                                      train_labels=train_labels))


def random_batch(B=8, num_classes=10, seed=1, size=32):
    """Images ``[B, 3, size, size]`` and labels ``[B]`` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g), torch.randint(0, num_classes, (B,), generator=g)


def forward(task: StudentTask, x, y, index=None, epoch: int = 2):
    """The objective's forward on one batch (no optimiser step): the ``StepOutput``."""
    return task.objective(x, y, index, epoch)
