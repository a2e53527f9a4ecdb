"""A student run built from its resolved configuration (``helper.student_config``) and trained.

What the students of a run share is built once (``SharedParts``): the data (one loader per set of
views the students' losses ask for), the teachers (loaded, checked, evaluated; their forward shared
between the students of a group) and their checkpoints' digests. Each student is then built from
it (``StudentRun``): its folder and name, its network and objective, lock, logger, optimiser, step
function and trainer. A solo run is a group of one; every run trains through the one loop,
``helper.trainer.fit``.

The order of the random draws is what makes a student in a group bit-identical to its solo run
(``helper.group``): seed, loaders, teachers, then each student in its own stream: its network, its
terms' connectors, the routing policy, the connector pre-training, its steps.

Every student is built and checked before any folder is created or locked: a refused loss option,
a folder that holds another run, a resume that does not fit leave nothing behind.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dataset import DataError, loaders_from_args
from models import build_model, get_model_cfg
from models.checkpoint import CheckpointError, load_model, read_state_dict

from . import cuda_graphs, runfolder
from .checkpoint import checkpoint_paths, load_for_resume, rng_state, state_mismatch
from .distributed import DistContext
from .errors import NonFiniteLoss, RunError
from .evaluate import evaluate
from .execution import apply_backend, autocast_context, execution_lines, memory_format
from .group import GroupStage, RngStream, SharedTeachers, measured_first_step
from .init_stage import run_init_stage
from .objective import ObjectiveSchedule
from .options import model_options, trial_seed
from .run_identity import config_hash, file_digest, parser_defaults, student_identity
from .runlog import RunLogger, environment_info
from .schedule import build_optimizer
from .spot_adaptive import build_routing
from .stop_messages import checkpoint_status
from .student_config import StudentConfig, StudentPlan
from .student_step import StudentObjective, StudentTask, build_terms
from .teachers import TeacherEnsemble
from .trainer import LoopSettings, Member, Trainer, fit

# the checks whose settings differ between a run and its --resume that names the same run
IDENTITY = ("model_s", "dataset", "trial")
NAN_CAUSES = ("a teacher whose outputs are not finite, a too small --kd_T, a NaN or huge loss weight "
              "(-r/-a/-b), a too high --learning_rate or --weight_decay")


def identity(parser, config, teacher_archs: Sequence[str], teacher_digests: Sequence[str]):
    """``(folder name, result settings)`` of a student with these teachers (``run_identity``)."""
    default_lr = get_model_cfg(config.model_s, config.dataset == "imagenet").default_lr
    return student_identity(parser, config, teacher_archs, teacher_digests, default_lr)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher of the run: its name (manifest entry or folder), checkpoint and architecture
    (None: read from the checkpoint or its file name)."""
    name: str
    path: str
    arch: Optional[str] = None


def check_teachers(specs: Sequence[TeacherSpec], models, data_name: str) -> List[str]:
    """The teachers' checkpoint digests; a one-line ``RunError`` for the same checkpoint twice, a
    teacher trained on another data set, or non-finite weights."""
    digests = [file_digest(t.path) for t in specs]
    for i, d in enumerate(digests):
        if d in digests[:i]:
            first = specs[digests.index(d)].name
            raise RunError(f"teachers {first} and {specs[i].name} are the same checkpoint ({specs[i].path}); "
                           f"each teacher counts once")
    for t, model in zip(specs, models):
        trained_on = read_state_dict(t.path)[1].get("dataset")
        if trained_on is not None and str(trained_on) != data_name:
            raise RunError(f"teacher {t.name} ({t.path}) was trained on {trained_on}, this run uses "
                           f"--dataset {data_name}")
        if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
            raise RunError(f"teacher {t.name} ({t.path}) holds non-finite (NaN/inf) weights")
    return digests


def evaluate_teachers(config, teachers: TeacherEnsemble, loaders) -> Tuple[Dict[str, Any], List[str]]:
    """The teachers' test accuracies (``args.json``'s report) and the log lines saying them."""
    if config.skip_validation:
        return {}, []
    ev = evaluate(teachers.models, loaders.test, config.device, config.amp)
    report = {"teacher_acc": ev["top1"], "teacher_names": teachers.names}
    lines = [f"    teacher {name}: test acc {acc:.2f}" for name, acc in zip(teachers.names, ev["top1"])]
    if len(teachers.models) > 1:
        report["ensemble_acc"] = ev["ensemble_top1"]
        lines.append(f"    teachers' ensemble (averaged probabilities): test acc {ev['ensemble_top1']:.2f}")
    return report, lines


@dataclass
class SharedParts:
    """What the students of a run share: built once."""
    seed: int
    loaders: Dict[tuple, Any]               # views -> Loaders
    teachers: Any                           # TeacherEnsemble, or SharedTeachers for a group
    teacher_specs: List[TeacherSpec]
    archs: List[str]
    digests: List[str]
    start_state: Optional[Dict[str, Any]]   # the global RNG where each student's solo run builds it
    report: Dict[str, Any] = field(default_factory=dict)   # the teachers' test accuracies
    report_lines: List[str] = field(default_factory=list)

    @property
    def spec(self):
        return next(iter(self.loaders.values())).spec


def build_shared(plan: StudentPlan, teacher_specs: Sequence[TeacherSpec], ctx: DistContext) -> SharedParts:
    """Data, teachers and their digests, in the order a solo run draws its random numbers."""
    config = plan.shared
    seed = trial_seed(config.seed, config.trial)
    torch.manual_seed(seed)
    views = list(dict.fromkeys(m.views for m in plan.members))
    with_index = {v: any(m.with_index for m in plan.members if m.views == v) for v in views}
    kw = dict(batch_size=config.batch_size, device=config.device, seed=seed,
              test_batch_size=cuda_graphs.eval_batch_size(config), rank=ctx.rank, world_size=ctx.world_size)
    imagenet = config.dataset == "imagenet"
    try:
        loaders = {views[0]: loaders_from_args(config, with_index=with_index[views[0]], views=views[0], **kw)}
        spec = loaders[views[0]].spec
        models = [load_model(t.path, arch=t.arch, num_classes=spec.num_classes, imagenet=imagenet)
                  for t in teacher_specs]
        digests = check_teachers(teacher_specs, models, spec.name)
        teachers = TeacherEnsemble(models, [t.name for t in teacher_specs], fuse=config.fuse_teachers,
                                   fold_bn=config.fold_bn)
        teachers = teachers.to(config.device, memory_format=memory_format(config.channels_last))
        start_state = rng_state() if plan.is_group else None   # the loaders below draw from their own generators
        for v in views[1:]:
            loaders[v] = loaders_from_args(config, with_index=with_index[v], views=v, **kw)
    except (DataError, CheckpointError, ValueError) as exc:
        raise RunError(exc) from None
    return SharedParts(seed, loaders, SharedTeachers(teachers) if plan.is_group else teachers,
                       list(teacher_specs), [m.arch for m in models], digests, start_state)


def build_student(config, spec) -> torch.nn.Module:
    imagenet = config.dataset == "imagenet"
    student = build_model(config.model_s, spec.num_classes, imagenet=imagenet,
                          **model_options(config.drop_path, config.model_s, imagenet, config.student_img_size))
    if config.student_img_size is not None:     # a CNN student: resize its input (a ViT is built at the size)
        student.input_resize = config.student_img_size
    return student.to(config.device, memory_format=memory_format(config.channels_last))


def make_objective(config, student, teachers, num_classes: int, num_data: int, image_size: int,
                   train_labels=None) -> StudentObjective:
    """The objective of ``student`` and ``teachers`` under ``config``: its terms (moved to the
    student's device) and, with ``--spot_adaptive``, its routing. A loss that refuses its options
    is a one-line ``RunError``."""
    try:
        terms = build_terms(config, student, teachers, num_classes, num_data, image_size, train_labels=train_labels)
    except ValueError as exc:
        raise RunError(f"--distill {config.distill}: {exc}") from None
    terms.to(config.device, memory_format=memory_format(config.channels_last))
    routing = None
    if config.spot_adaptive:
        try:
            routing = build_routing(config, student, teachers, terms, num_classes, image_size)
        except ValueError as exc:
            raise RunError(f"--spot_adaptive: {exc}") from None
    return StudentObjective(student, terms, teachers, ObjectiveSchedule.of(config), routing, preact=config.preact)


def build_objective(config, shared: SharedParts) -> StudentObjective:
    """The student's network and objective: the draws of its own stream, in its solo run's order."""
    spec = shared.spec
    student = build_student(config, spec)
    train = next(iter(shared.loaders.values())).train
    return make_objective(config, student, shared.teachers, spec.num_classes, train.num_samples, spec.image_size,
                          train_labels=train.labels)


@dataclass
class Student:
    """One student of the run while it is built: its configuration, name and folder, its stream,
    its objective, then its lock, logger and trainer."""
    plan: StudentConfig
    name: str
    run_dir: str
    settings: Dict[str, Any]
    stream: Any
    objective: Optional[StudentObjective] = None
    lock: Any = None
    run: Optional[RunLogger] = None
    member: Optional[Member] = None

    @property
    def config(self):
        return self.plan.config


class StudentRun:
    """The students of one command line (``StudentPlan``), built and trained; ``train`` raises a
    ``RunError`` for anything that stops it, ``close`` releases what it holds."""

    def __init__(self, parser, plan: StudentPlan, teacher_specs: Sequence[TeacherSpec], ctx: DistContext,
                 prog: str = "train_student.py"):
        self.parser, self.plan, self.teacher_specs, self.ctx, self.prog = parser, plan, teacher_specs, ctx, prog
        self.students: List[Student] = []
        self.run_dir: Optional[str] = None        # the first student's folder, once it is claimed

    # -- names and folders ------------------------------------------------------------------------
    def name_students(self, shared: SharedParts) -> List[Student]:
        students = []
        for m in self.plan.members:
            name, settings = identity(self.parser, m.config, shared.archs, shared.digests)
            stream = RngStream(shared.start_state) if self.plan.is_group else contextlib.nullcontext()
            students.append(Student(m, name, os.path.join(m.config.save_dir, "students", name), settings, stream))
        names = [s.name for s in students]
        for i, s in enumerate(students):
            if s.name in names[:i]:
                other = students[names.index(s.name)].config
                raise RunError(f"students --distill {other.distill} --ensemble_method {other.ensemble_method} and "
                               f"--distill {s.config.distill} --ensemble_method {s.config.ensemble_method} are the "
                               f"same run ({s.name}); list each student once")
        return students

    def check_folders(self, shared: SharedParts):
        """Read-only, on every process (all refuse together), once every objective is built: a new
        run's folder is free; a resumed run's settings, seed, metrics and checkpoint fit (its
        epochs, its student's and connectors' tensors)."""
        for s in self.students:
            if s.config.resume:     # before the folder is touched: a refused resume leaves nothing behind
                runfolder.check_resume(self.parser, s.run_dir, s.settings, identity=IDENTITY, seed=shared.seed)
                last = checkpoint_paths(s.run_dir, s.config.model_s)[0]
                state = load_for_resume(last, expect={"arch": s.config.model_s, "num_classes": shared.spec.num_classes},
                                        epochs=s.config.epochs)
                problem = state_mismatch(state["model"], s.objective.student.state_dict())
                extra = state.get("extra")
                if problem is None and isinstance(extra, dict) and "distill" in extra:     # the terms' connectors
                    problem = state_mismatch(extra["distill"], s.objective.terms.state_dict())
                if problem:
                    raise RunError(f"--resume: {last} does not fit this run: {problem}")
            else:
                runfolder.check_free(s.run_dir, s.config.overwrite)

    # -- one student --------------------------------------------------------------------------------
    def start_student(self, s: Student, shared: SharedParts, stage: Optional[GroupStage] = None):
        """Logger, records, connector pre-training, optimiser, step function, trainer (and resume)
        of a student whose objective is built, in its stream; ``stage``: its group's."""
        config, ctx, spec, loaders = s.config, self.ctx, shared.spec, shared.loaders[s.plan.views]
        objective, teachers = s.objective, shared.teachers
        s.run = run = RunLogger(s.run_dir, echo=not config.quiet, fresh=not config.resume, enabled=ctx.is_main)
        for line in s.plan.notes:
            run.info(line)
        run.info(f"==> student {config.model_s} on {spec.name} ({spec.num_classes} classes), {len(teachers)} "
                 f"teacher(s): " + ", ".join(f"{n} ({a})" for n, a in zip(teachers.names, shared.archs))
                 + f"; objective {config.objective}; seed {shared.seed}; "
                   f"device {config.device}; amp {'on' if config.amp else 'off'}; channels_last "
                   f"{'on' if config.channels_last else 'off'}; teachers fused by architecture "
                   f"{'on' if teachers.fusing(config.device) else 'off'}; BatchNorm folded "
                   f"{'on' if config.fold_bn else 'off'} -> {s.run_dir}")
        for line in execution_lines(config, ctx, loaders.note) + shared.report_lines:
            run.info(line)
        group = {"group": [t.name for t in self.students]} if self.plan.is_group else {}
        run.write_config(dict(config.as_dict(), **group, seed_used=shared.seed,
                              teacher_paths=[t.path for t in shared.teacher_specs], teacher_archs=shared.archs,
                              teacher_digests=shared.digests,
                              config_hash=config_hash(s.settings, parser_defaults(self.parser)), **shared.report),
                         dict(environment_info(config.device), seed=shared.seed, trial=config.trial))
        if objective.routing is not None:
            run.info(objective.routing.describe())
        task = StudentTask(objective)
        task.distribute(ctx, config.device, config.sync_bn)
        if config.compile:
            task.compile(run.info)
        if not config.resume:
            run_init_stage(objective, loaders.train, config, run.info)
        optimizer = build_optimizer(task.trainable(), config)
        step, optimizer = cuda_graphs.step_function(task, optimizer, config, run.info, distributed=ctx.enabled,
                                                    group=stage)
        meta = {"arch": config.model_s, "num_classes": spec.num_classes, "dataset": spec.name, "trial": config.trial,
                "distill": config.distill, "ensemble_method": config.ensemble_method, "seed": shared.seed,
                "teachers": teachers.names, "teacher_archs": shared.archs,
                **({"img_size": objective.student.input_resize} if objective.student.input_resize is not None else {})}
        trainer = Trainer(task, optimizer, loaders, LoopSettings.of(config), run, meta, step=step,
                          is_main=ctx.is_main, distributed=ctx.enabled)
        if config.resume:
            trainer.resume()
        s.member = Member(s.name, trainer, s.plan.views, s.plan.with_index, s.stream)
        if self.plan.is_group:
            run.info(f"==> in a group of {len(self.students)} students: {', '.join(t.name for t in self.students)}")

    # -- the run ------------------------------------------------------------------------------------
    def train(self) -> List[Dict[str, Any]]:
        """Build every student, train them together, report; returns their summaries."""
        config, ctx = self.plan.shared, self.ctx
        apply_backend(config.deterministic, config.device)
        shared = build_shared(self.plan, self.teacher_specs, ctx)
        self.students = self.name_students(shared)
        for s in self.students:                     # everything built and checked before anything is created
            with s.stream:
                s.objective = build_objective(s.config, shared)
        self.check_folders(shared)
        teachers = shared.teachers
        shared.report, shared.report_lines = evaluate_teachers(config, teachers, next(iter(shared.loaders.values())))
        if ctx.is_main:                             # every folder locked before any is changed (runfolder.claim_all)
            claims = runfolder.claim_all([(s.run_dir, s.config.resume, s.config.overwrite) for s in self.students],
                                         take_over=config.take_over_lock, log=None if config.quiet else print)
            for s, claim in zip(self.students, claims):
                s.lock = claim
        self.run_dir = self.students[0].run_dir
        try:
            group = self.plan.is_group

            def log_all(line):            # a line about the whole group, in every student's log
                for t in self.students:
                    t.run.info(line)

            stage = GroupStage(teachers, cuda_graphs.stage_mode(config, ctx.enabled), log=log_all,
                               autocast=autocast_context(config.device, config.amp)) if group else None
            try:
                for s in self.students:
                    with s.stream:
                        self.start_student(s, shared, stage)
            except Exception:             # a start that fails before training leaves no new run's folder
                for s in self.students:
                    if s.lock is not None:
                        s.lock.abandon()
                        s.lock = None
                raise
            summaries = fit([s.member for s in self.students], shared.loaders, config.epochs, stage=stage,
                            first_step=partial(measured_first_step, device=config.device, log=log_all)
                            if group else None)
        except DataError as exc:          # a file that fails to decode in the middle of an epoch
            raise RunError(exc, code=1) from None
        except NonFiniteLoss as exc:
            member = getattr(exc, "member", None)
            s = next((t for t in self.students if member is not None and t.name == member.name), self.students[0])
            raise RunError(f"{exc}" + (f" (student {s.name} of the group)" if self.plan.is_group else "") + "; "
                           + checkpoint_status(s.run_dir, s.config.model_s, self.prog, [], s.config.epochs,
                                               suggest_resume=False)
                           + f"; likely causes: {NAN_CAUSES}", code=1) from None
        for s, summary in zip(self.students, summaries):
            teacher_acc = shared.report.get("teacher_acc")
            s.run.info(f"==> student {s.config.model_s}: best test acc {summary['best_acc']:.2f} (epoch "
                       f"{summary['best_epoch']}), last {summary['last_acc']:.2f}"
                       + (f"; teachers {', '.join(f'{a:.2f}' for a in teacher_acc)}" if teacher_acc else ""))
        return summaries

    def stop_line(self, argv: Sequence[str]) -> str:
        """After Ctrl-C or a stop signal: where the run can go on from, and the exact command."""
        config = self.plan.shared
        return (checkpoint_status(self.run_dir, config.model_s, self.prog, argv, config.epochs, parser=self.parser)
                + (f" (and {len(self.plan.members) - 1} more students of the group; --resume continues them all)"
                   if self.plan.is_group else ""))

    def close(self):
        for s in self.students:
            if s.run is not None:
                s.run.close()
        for s in self.students:
            if s.lock is not None:
                s.lock.release()
                s.lock = None
