"""``train_student.py``'s flags resolved, once, into the frozen configuration of each student.

``resolve(parser, namespace)`` checks every flag that argparse's types cannot check alone, fills
every derived value (the model's learning rate, the device and what follows from it, the teacher
count, each student's ensemble strategy and loss weights, the objective's formula, the settings of
this process under torchrun) and returns a ``StudentPlan``: one ``StudentConfig`` per student (one
for a solo run; the cross product of the lists for a group), each holding its ``RunConfig``.
Nothing changes a configuration afterwards. A bad flag is one line naming it (``parser.error``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from distiller_zoo.registry import ENSEMBLES
from models import get_model_cfg, imagenet_model_dict, model_dict

from . import distributed
from .config import RunConfig
from .config_files import given_flags
from .distributed import DistContext
from .execution import backend_description
from .objective import loader_views, parse_distill, resolve_objective, student_choices
from .options import fail, model_options, resolve_common

WEIGHT_FLAGS = ("gamma", "alpha", "beta")      # -r, -a, -b: resolved per student from its objective


@dataclass(frozen=True)
class StudentConfig:
    """One student's resolved configuration, the log lines its resolution produced (the
    objective's formula and the losses' notes), and the loader it needs (views, index)."""
    config: RunConfig
    notes: Tuple[str, ...]
    views: Tuple[str, ...]
    with_index: bool


@dataclass(frozen=True)
class StudentPlan:
    """Every student of the command line; ``members[0].config`` holds the flags they share."""
    members: Tuple[StudentConfig, ...]

    @property
    def shared(self) -> RunConfig:
        return self.members[0].config

    @property
    def is_group(self) -> bool:
        return len(self.members) > 1


def check_models(parser, ns):
    imagenet = ns.dataset == "imagenet"
    if ns.model_s not in model_dict and ns.model_s not in imagenet_model_dict:
        fail(parser, f"--model_s {ns.model_s!r} is not a zoo model; expected one of: {', '.join(sorted(model_dict))}")
    table = imagenet_model_dict if imagenet else model_dict
    if ns.model_s not in table:
        fail(parser, f"--model_s {ns.model_s} is an {'CIFAR-sized' if imagenet else 'ImageNet'} model, and "
                     f"--dataset {ns.dataset} needs {'an ImageNet' if imagenet else 'a CIFAR-sized'} one: "
                     f"{', '.join(sorted(table))}")
    if ns.spot_adaptive and (ns.student_img_size is not None or get_model_cfg(ns.model_s, imagenet).family == "vit"):
        fail(parser, "--spot_adaptive grafts student and teacher stages: it needs a CNN student at the teachers' image size")
    try:
        model_options(ns.drop_path, ns.model_s, imagenet)
    except ValueError as exc:
        fail(parser, str(exc))


def teacher_count(parser, ns) -> int:
    """``--teacher_num``, or the number of teachers given by name or path (else 1), checked."""
    if ns.teachers and ns.path_t:
        fail(parser, "give teachers either by --teachers NAME or by --path_t PATH, not both")
    for flag, items in (("--teachers", ns.teachers or []), ("--path_t", [os.path.abspath(p) for p in ns.path_t or []])):
        twice = sorted({i for i in items if items.count(i) > 1})
        if twice:
            fail(parser, f"{flag} names {', '.join(twice)} more than once; each teacher counts once")
    given = len(ns.teachers or ns.path_t or [])
    count = ns.teacher_num if ns.teacher_num is not None else (given or 1)
    if given and given != count:
        fail(parser, f"--teacher_num {count} does not match the {given} teachers given")
    if ns.model_t and (not ns.path_t or len(ns.model_t) not in (1, len(ns.path_t))):
        fail(parser, "--model_t needs --path_t and either one architecture or one per path")
    return count


def resolve(parser, ns, stand_values: Optional[Sequence[bool]] = None,
            ctx: Optional[DistContext] = None, device: Optional[str] = None) -> StudentPlan:
    """Every student's frozen configuration from the parsed flags ``ns`` (see the module docstring);
    ``stand_values`` is ``[False, True]`` for ``--logit-stand both``; ``ctx`` this process's place
    in a torchrun job (default: read from the environment); ``device`` the device asked for when it
    is not ``--device``'s (``--gpu_id``). Each configuration's ``given_flags`` records the flags of
    that student as given (``helper.config_files``: what ``--config args.json`` reads back)."""
    ctx = distributed.context_from_env() if ctx is None else ctx
    check_models(parser, ns)
    imagenet = ns.dataset == "imagenet"
    common = resolve_common(parser, ns, default_lr=get_model_cfg(ns.model_s, imagenet).default_lr, device=device)
    teacher_num = teacher_count(parser, ns)
    try:
        choices = student_choices(ns.distill, ns.ensemble_method, ns.logit_stand, stand_values)
        per_rank = distributed.rank_settings(ctx, common["device"], ns.batch_size)
    except ValueError as exc:
        fail(parser, str(exc))
    fold_bn = common["device"].startswith("cuda") if ns.fold_bn is None else ns.fold_bn
    base = RunConfig.from_namespace(ns, **common, teacher_num=teacher_num, fold_bn=fold_bn, **per_rank)
    base = base.replace(backend_mode=backend_description(base.deterministic, base.device))
    given = {name for name in WEIGHT_FLAGS if getattr(ns, name) is not None}
    members: List[StudentConfig] = []
    for distill, asked, stand in choices:
        method = asked or ("CAMKD" if teacher_num > 1 else "AVERAGE_LOSS")
        for strategy, flag in [(method, "--ensemble_method ")] + [(e, f"--distill {n}@")
                                                                   for n, _, e in parse_distill(distill) if e]:
            need = ENSEMBLES[strategy].min_teachers
            if teacher_num < need:
                fail(parser, f"{flag}{strategy} needs at least {need} teachers, got --teacher_num {teacher_num}")
        flags = given_flags(parser, ns, distill=distill, ensemble_method=asked, logit_stand=stand)
        config, notes = resolve_objective(base.replace(distill=distill, ensemble_method=method, logit_stand=stand,
                                                       given_flags=flags), given)
        views, with_index = loader_views(distill, config.train_view)
        members.append(StudentConfig(config, (f"==> objective: {config.objective}" + ("; " + "; ".join(notes)
                                                                                     if notes else ""),),
                                     views, with_index))
    return StudentPlan(tuple(members))
