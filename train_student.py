"""Distil one or several teachers into a student (CA-MKD's and RepDistiller's command line).

    python train_student.py --model_s vgg8 --teacher_num 3 --distill inter --ensemble_method CAMKD \\
        --nesterov -r 1 -a 1 -b 50 --trial 0

Teachers come from the manifest written by train_teacher.py (via ``setting.py``): the first
``--teacher_num`` teachers registered for the data set, or ``--teachers NAME ...``; or from
explicit checkpoints ``--path_t PATH ...`` whose architecture is read from the checkpoint, from its
RepDistiller-style file name, or from ``--model_t``. With one teacher the run is plain
single-teacher distillation.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from dataset import DataError, add_data_arguments, loaders_from_args
import distiller_zoo.defaults
from distiller_zoo.registry import DISTILLERS, ENSEMBLES
from helper import cuda_graphs, distributed
from helper.checkpoint import ResumeError
from helper import spot_adaptive
from helper.distill import StudentTask, build_terms, objective_losses, parse_distill, resolve_objective, run_init_stage
from helper.loop import NonFiniteLoss, evaluate, fit
from helper.manifest import ManifestError, manifest_path, teacher_names
from helper.options import (OneLineParser, add_optimization_arguments, add_run_arguments, configure_backend,
                            fail, memory_format, trial_seed, validate_common)
from helper.runlog import RunLogger, environment_info
from helper.teachers import TeacherEnsemble
from models import build_model, get_model_cfg, imagenet_model_dict, model_dict
from models.checkpoint import CheckpointError, load_model


def build_parser():
    parser = OneLineParser(description="Distil one or several teachers into a student.")
    g = parser.add_argument_group("student and teachers")
    g.add_argument("--model_s", type=str, default="resnet8",
                   help=f"student architecture: {', '.join(sorted(model_dict))}")
    g.add_argument("--teacher_num", type=int, default=None,
                   help="number of teachers (default: those given by --teachers/--path_t, else 1)")
    g.add_argument("--teachers", nargs="+", default=None, metavar="NAME",
                   help="teacher names from the manifest / setting.py, e.g. cifar100-resnet32x4-0")
    g.add_argument("--path_t", "--path-t", nargs="+", default=None, metavar="PATH",
                   help="teacher checkpoints ({'model': state_dict, ...} or a bare state_dict)")
    g.add_argument("--model_t", nargs="+", default=None, metavar="ARCH",
                   help="architecture of each --path_t checkpoint (one for all, or one per path) when "
                        "neither the checkpoint nor its file name says it")
    g.add_argument("--skip_validation", "--skip-validation", action="store_true",
                   help="do not evaluate the teachers before training")
    g.add_argument("--fuse_teachers", action=argparse.BooleanOptionalAction, default=None,
                   help="run teachers of one architecture as one batched (vmap) forward (default: on for CUDA)")
    g.add_argument("--tag", type=str, default="",
                   help="appended to the run folder name, for runs that differ only in flags the name does not show")

    g = parser.add_argument_group("distillation (CA-MKD / RepDistiller)")
    g.add_argument("--distill", type=str, default="kd", metavar="LOSS[:W][@STRATEGY][+...]",
                   help="the distillation terms, joined by '+', each a loss with an optional weight and ensemble "
                        "strategy, e.g. kd+attention:1000+crd:0.8@AEKD; a logit term without a weight takes -a, a "
                        "feature term -b; without a logit term kd (-a) comes first. Losses: "
                        + ", ".join(sorted(DISTILLERS)))
    g.add_argument("--ensemble_method", type=str, default=None, choices=sorted(ENSEMBLES),
                   help="how teachers are combined in terms without @STRATEGY (default: CAMKD with several "
                        "teachers, AVERAGE_LOSS with one)")
    g.add_argument("-r", "--gamma", type=float, default=None, help="weight of the classification loss (1)")
    g.add_argument("-a", "--alpha", type=float, default=None, help="weight of logit terms given without one (1)")
    g.add_argument("-b", "--beta", type=float, default=None,
                   help="weight of feature terms given without one (default: the first one's usual weight)")
    g.add_argument("--distill_decay", action="store_true",
                   help="decay the logit terms linearly to 0 over the second half of training (CE weight "
                        "1 - decayed -a)")
    g.add_argument("--beta_delay_epochs", type=int, default=1,
                   help="leave the feature terms out for this many first epochs (1, as CA-MKD; 0 as RepDistiller)")
    g.add_argument("--preact", action="store_true", help="use pre-activation features")
    g.add_argument("--init_epochs", type=int, default=30,
                   help="epochs of connector pre-training for losses that have one (FT, AB, FSP; RepDistiller: 30)")
    distiller_zoo.defaults.add_arguments(parser)
    spot_adaptive.add_arguments(parser)

    add_data_arguments(parser)
    add_optimization_arguments(parser)
    cuda_graphs.add_arguments(parser)
    add_run_arguments(parser)
    return parser


def resolve_loss_weights(args, log):
    """Fill -r/-a/-b not given on the command line (``helper.distill.resolve_objective``) and log
    the objective's formula and the notes of the losses' ``configure`` hooks."""
    given = {name for name in ("gamma", "alpha", "beta") if getattr(args, name) is not None}
    notes = resolve_objective(args, given)
    log(f"==> objective: {args.objective}" + ("; " + "; ".join(notes) if notes else ""))


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_s not in model_dict and args.model_s not in imagenet_model_dict:
        fail(parser, f"--model_s {args.model_s!r} is not a zoo model; expected one of: {', '.join(sorted(model_dict))}")
    imagenet = args.dataset == "imagenet"
    validate_common(parser, args, default_lr=get_model_cfg(args.model_s, imagenet).default_lr)
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        fail(parser, f"--eval_batch_size must be a positive integer, got {args.eval_batch_size}")
    if args.teachers and args.path_t:
        fail(parser, "give teachers either by --teachers NAME or by --path_t PATH, not both")
    given = len(args.teachers or args.path_t or [])
    if args.teacher_num is None:
        args.teacher_num = given or 1
    if args.teacher_num < 1:
        fail(parser, f"--teacher_num must be at least 1, got {args.teacher_num}")
    if given and given != args.teacher_num:
        fail(parser, f"--teacher_num {args.teacher_num} does not match the {given} teachers given")
    if args.model_t and (not args.path_t or len(args.model_t) not in (1, len(args.path_t))):
        fail(parser, "--model_t needs --path_t and either one architecture or one per path")
    if args.ensemble_method is None:
        args.ensemble_method = "CAMKD" if args.teacher_num > 1 else "AVERAGE_LOSS"
    try:
        terms = parse_distill(args.distill)
    except ValueError as exc:
        fail(parser, str(exc))
    for method, flag in [(args.ensemble_method, "--ensemble_method ")] + [(e, f"--distill {n}@") for n, _, e in terms if e]:
        need = ENSEMBLES[method].min_teachers
        if args.teacher_num < need:
            fail(parser, f"{flag}{method} needs at least {need} teachers, got --teacher_num {args.teacher_num}")
    if not all(ch.isalnum() or ch in "-_.=~" for ch in args.tag):
        fail(parser, f"--tag {args.tag!r}: use letters, digits and - _ . = ~ only (it names a folder)")
    if args.beta_delay_epochs < 0:
        fail(parser, f"--beta_delay_epochs must be non-negative, got {args.beta_delay_epochs}")
    spot_adaptive.validate(parser, args)
    return parser, args


def resolve_teachers(parser, args):
    """[(name, checkpoint path, architecture or None)] for the run's teachers."""
    import setting
    if args.path_t:
        archs = args.model_t or [None]
        archs = archs * len(args.path_t) if len(archs) == 1 else archs
        return [(os.path.basename(os.path.dirname(os.path.abspath(p))) or p, p, a)
                for p, a in zip(args.path_t, archs)]
    try:
        known = setting.available_teachers(args.save_dir)
        if args.teachers:
            names = args.teachers
        else:
            names = teacher_names(known, args.dataset)[:args.teacher_num]
            if len(names) < args.teacher_num:
                fail(parser, f"--teacher_num {args.teacher_num}, but only {len(names)} teacher(s) are registered "
                             f"for {args.dataset} in {manifest_path(args.save_dir)} or setting.py "
                             f"(train more with train_teacher.py --trials, or pass --path_t)")
        return [(n, setting.checked_teacher_path(n, args.save_dir), known[n].get("model")) for n in names]
    except ManifestError as exc:
        fail(parser, str(exc))


def run_name(args, teacher_archs):
    """CA-MKD's student folder name, with '~' (CA-MKD's Windows separator) instead of ':'."""
    name = f"S~{args.model_s}_{args.dataset}_{args.distill}_r~{args.gamma}_a~{args.alpha}_b~{args.beta}_{args.trial}"
    arch_str = "_".join(sorted(set(teacher_archs)))
    if args.teacher_num > 1:
        name += f"_{args.teacher_num}_{arch_str}_{args.ensemble_method}"
        if args.ensemble_method == "AEKD":
            name += f"_{args.C}" + ("_svmnorm" if args.svm_norm else "")
        elif args.ensemble_method == "EVIDENTIAL":
            name += f"_{args.evidential_mode}" + ("_uncal" if args.evidential_calibrate == "none" else "")
    else:
        name += f"_{arch_str}"
    if getattr(args, "logit_stand", False):
        name += "_ls"
    if getattr(args, "spot_adaptive", False):
        name += f"_spot-{args.spot_mode}"
    if args.tag:
        name += f"_{args.tag}"
    return name


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        ctx = distributed.setup(args)
    except ValueError as exc:
        print(f"train_student.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(parser, args, ctx)
    finally:
        distributed.cleanup(ctx)


def run(parser, args, ctx):
    args.backend_mode = configure_backend(args)
    seed = trial_seed(args.seed, args.trial)
    torch.manual_seed(seed)
    imagenet = args.dataset == "imagenet"
    teacher_specs = resolve_teachers(parser, args)
    loss_classes = [DISTILLERS[n] for n in objective_losses(args.distill)]
    views = ("standard",) + tuple(dict.fromkeys(v for cls in loss_classes for v in cls.views if v != "standard"))
    try:
        loaders = loaders_from_args(args, batch_size=args.batch_size, device=args.device, seed=seed,
                                    test_batch_size=cuda_graphs.eval_batch_size(args),
                                    with_index=any(cls.needs_index for cls in loss_classes), views=views,
                                    rank=ctx.rank, world_size=ctx.world_size)
        spec = loaders.spec
        teacher_models = [load_model(path, arch=arch, num_classes=spec.num_classes, imagenet=imagenet)
                          for _, path, arch in teacher_specs]
    except (DataError, CheckpointError) as exc:
        print(f"train_student.py: error: {exc}", file=sys.stderr)
        return 2
    fmt = memory_format(args)
    teachers = TeacherEnsemble(teacher_models, [n for n, _, _ in teacher_specs],
                               fuse=args.fuse_teachers).to(args.device, memory_format=fmt)
    student = build_model(args.model_s, spec.num_classes, imagenet=imagenet).to(args.device, memory_format=fmt)

    weight_notes = []
    resolve_loss_weights(args, weight_notes.append)      # before naming: the folder name holds -r/-a/-b
    run_dir = os.path.join(args.save_dir, "students", run_name(args, [m.arch for m in teacher_models]))
    run = RunLogger(run_dir, echo=not args.quiet, fresh=not args.resume, enabled=ctx.is_main)
    try:
        return train(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes)
    finally:
        run.close()


def train(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes):
    spec, teacher_models = loaders.spec, teachers.models
    for note in weight_notes:
        run.info(note)
    try:
        terms = build_terms(args, student, teachers, spec.num_classes, loaders.train.num_samples, spec.image_size,
                            train_labels=loaders.train.labels)
    except ValueError as exc:
        print(f"train_student.py: error: --distill {args.distill}: {exc}", file=sys.stderr)
        return 2
    terms.to(args.device, memory_format=memory_format(args))

    run.info(f"==> student {args.model_s} on {spec.name} ({spec.num_classes} classes), {len(teachers)} teacher(s): "
             + ", ".join(f"{n} ({m.arch})" for n, m in zip(teachers.names, teacher_models))
             + f"; objective {args.objective}; seed {seed}; "
               f"device {args.device}; amp {'on' if args.amp else 'off'}; channels_last "
               f"{'on' if args.channels_last else 'off'}; teachers fused by architecture "
               f"{'on' if teachers.fusing(args.device) else 'off'} -> {run.run_dir}")
    run.info(f"==> {args.backend_mode}" + (f"; {ctx.world_size} processes, global batch {args.global_batch_size}"
                                           if ctx.enabled else ""))
    teacher_report = {}
    if not args.skip_validation:
        ev = evaluate(teacher_models, loaders.test, args.device, args.amp)
        teacher_report = {"teacher_acc": ev["top1"], "teacher_names": teachers.names}
        for name, acc in zip(teachers.names, ev["top1"]):
            run.info(f"    teacher {name}: test acc {acc:.2f}")
        if len(teacher_models) > 1:
            teacher_report["ensemble_acc"] = ev["ensemble_top1"]
            run.info(f"    teachers' ensemble (averaged probabilities): test acc {ev['ensemble_top1']:.2f}")

    run.write_config(dict(vars(args), seed_used=seed, teacher_paths=[p for _, p, _ in teacher_specs],
                          teacher_archs=[m.arch for m in teacher_models], **teacher_report),
                     dict(environment_info(args.device), seed=seed, trial=args.trial))
    if args.spot_adaptive:
        try:
            task = spot_adaptive.build_spot_task(args, student, teachers, terms, spec.num_classes, spec.image_size)
        except ValueError as exc:
            print(f"train_student.py: error: --spot_adaptive: {exc}", file=sys.stderr)
            return 2
        run.info(task.describe())
    else:
        task = StudentTask(student, teachers, terms, args)
    task.distribute(ctx, args.device, args.sync_bn)
    if args.compile:
        task.compile(run.info)
    if not args.resume:
        run_init_stage(task, loaders.train, args, run.info)
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    optimizer = cuda_graphs.install(task, optimizer, args, run.info, distributed=ctx.enabled)
    meta = {"arch": args.model_s, "num_classes": spec.num_classes, "dataset": spec.name, "trial": args.trial,
            "distill": args.distill, "ensemble_method": args.ensemble_method, "seed": seed,
            "teachers": teachers.names, "teacher_archs": [m.arch for m in teacher_models]}
    try:
        summary = fit(task, optimizer, loaders, args, run, meta, is_main=ctx.is_main, distributed=ctx.enabled)
    except (NonFiniteLoss, ResumeError) as exc:
        print(f"train_student.py: error: {exc}", file=sys.stderr)
        return 1
    run.info(f"==> student {args.model_s}: best test acc {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
             f"last {summary['last_acc']:.2f}" + (f"; teachers {', '.join(f'{a:.2f}' for a in teacher_report['teacher_acc'])}"
                                                  if teacher_report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
