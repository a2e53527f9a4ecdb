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
import copy
import os
import sys

import torch

from dataset import DataError, add_data_arguments, loaders_from_args
import distiller_zoo.defaults
from distiller_zoo.registry import DISTILLERS, ENSEMBLES
from helper import cuda_graphs, distributed
from helper.checkpoint import ResumeError, load_for_resume, rng_state
from helper import spot_adaptive
from helper.distill import StudentTask, build_terms, objective_losses, parse_distill, resolve_objective, run_init_stage
from helper.loop import NonFiniteLoss, Trainer, checkpoint_paths, evaluate, fit
from helper.manifest import ManifestError, manifest_path, teacher_names
from helper.options import (OneLineParser, model_options, add_optimization_arguments, add_run_arguments,
                            configure_backend, fail, memory_format, non_negative_float, non_negative_int,
                            optional_label, positive_int, trial_seed, validate_common)
from helper.schedule import build_optimizer
from helper import runfolder
from helper.runfolder import RunFolderError
from helper.runlog import RunLogger, environment_info
from helper.teachers import TeacherEnsemble
from models import build_model, get_model_cfg, imagenet_model_dict, model_dict
from models.checkpoint import CheckpointError, load_model, read_state_dict

PROG = "train_student.py"


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
    g.add_argument("--student_img_size", type=positive_int, default=None, metavar="N",
                   help="the student sees the training and test images resized to N px on the device, after the "
                        "crop and flip; the teachers keep the data set's size (default: the data set's size, "
                        "224 for the vision transformers, as tiny-transformers)")
    g.add_argument("--tag", type=optional_label, default="",
                   help="appended to the run folder name, for runs that differ only in flags the name does not show")

    g = parser.add_argument_group("distillation (CA-MKD / RepDistiller)")
    g.add_argument("--distill", type=str, default="kd", metavar="LOSS[:W][@STRATEGY][+...][,...]",
                   help="the distillation terms, joined by '+', each a loss with an optional weight and ensemble "
                        "strategy, e.g. kd+attention:1000+crd:0.8@AEKD (a comma separates students of a group: "
                        "kd+attention,dkd); a logit term without a weight takes -a, a "
                        "feature term -b; without a logit term kd (-a) comes first. Losses: "
                        + ", ".join(sorted(DISTILLERS)))
    g.add_argument("--ensemble_method", type=str, default=None, metavar="STRATEGY[,STRATEGY...]",
                   help="how teachers are combined in terms without @STRATEGY (default: CAMKD with several "
                        "teachers, AVERAGE_LOSS with one): " + ", ".join(sorted(ENSEMBLES)) + ". A comma-"
                        "separated list (and a list in --distill, --logit-stand both) trains a group of "
                        "students in one process, the teachers' forward shared (README: groups)")
    g.add_argument("-r", "--gamma", type=non_negative_float, default=None, help="weight of the classification loss (1)")
    g.add_argument("-a", "--alpha", type=non_negative_float, default=None,
                   help="weight of logit terms given without one (1)")
    g.add_argument("-b", "--beta", type=non_negative_float, default=None,
                   help="weight of feature terms given without one (default: the first one's usual weight)")
    g.add_argument("--distill_decay", action="store_true",
                   help="decay the logit terms linearly to 0 over the second half of training (CE weight "
                        "1 - decayed -a)")
    g.add_argument("--beta_delay_epochs", type=non_negative_int, default=1,
                   help="leave the feature terms out for this many first epochs (1, as CA-MKD; 0 as RepDistiller)")
    g.add_argument("--preact", action="store_true", help="use pre-activation features")
    g.add_argument("--init_epochs", type=non_negative_int, default=30,
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


def split_logit_stand(argv):
    """``argv`` without ``--logit-stand both`` (a group: each student without and with logit
    standardization), and ``[False, True]`` when it was there, else None."""
    out, values, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a in ("--logit-stand", "--logit_stand") and i + 1 < len(argv) and argv[i + 1] == "both":
            values, i = [False, True], i + 2
            continue
        if a in ("--logit-stand=both", "--logit_stand=both"):
            values, i = [False, True], i + 1
            continue
        out.append(a)
        i += 1
    return out, values


def split_list(parser, flag, text):
    """The students' values of a comma-separated flag; one-line errors for an empty item or a
    duplicate."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        fail(parser, f"{flag} {text!r}: an empty name in the list; expected names separated by ','")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        fail(parser, f"{flag} {text!r} lists {', '.join(twice)} more than once; each student once")
    return items


def group_members(parser, args, stand_values=None):
    """One Namespace per student of the cross product of ``--distill``, ``--ensemble_method`` and
    ``--logit-stand both`` (in that order), each holding its own single values; one for a solo run."""
    methods = split_list(parser, "--ensemble_method", args.ensemble_method) if args.ensemble_method else [None]
    for method in methods:
        if method not in ENSEMBLES and method is not None:
            fail(parser, f"--ensemble_method: unknown strategy {method!r}; expected one of: "
                         f"{', '.join(sorted(ENSEMBLES))}")
    distills = split_list(parser, "--distill", args.distill)
    for distill in distills:
        try:
            parse_distill(distill)
        except ValueError as exc:
            fail(parser, str(exc))
    members = []
    for distill in distills:
        for method in methods:
            for stand in stand_values or [args.logit_stand]:
                member = copy.copy(args)
                member.distill, member.ensemble_method, member.logit_stand = distill, method, stand
                if member.ensemble_method is None:
                    member.ensemble_method = "CAMKD" if args.teacher_num > 1 else "AVERAGE_LOSS"
                members.append(member)
    return members


def parse_args(argv=None):
    """``(parser, args)``: ``args`` of a solo run as always; for a group (lists in ``--distill``,
    ``--ensemble_method``, ``--logit-stand both``) the shared flags, with ``args.members`` the
    students' own Namespaces."""
    parser = build_parser()
    argv, stand_values = split_logit_stand(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    imagenet = args.dataset == "imagenet"
    if args.model_s not in model_dict and args.model_s not in imagenet_model_dict:
        fail(parser, f"--model_s {args.model_s!r} is not a zoo model; expected one of: {', '.join(sorted(model_dict))}")
    table = imagenet_model_dict if imagenet else model_dict
    if args.model_s not in table:
        fail(parser, f"--model_s {args.model_s} is an {'CIFAR-sized' if imagenet else 'ImageNet'} model, and "
                     f"--dataset {args.dataset} needs {'an ImageNet' if imagenet else 'a CIFAR-sized'} one: "
                     f"{', '.join(sorted(table))}")
    validate_common(parser, args, default_lr=get_model_cfg(args.model_s, imagenet).default_lr)
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        fail(parser, f"--eval_batch_size must be a positive integer, got {args.eval_batch_size}")
    if args.teachers and args.path_t:
        fail(parser, "give teachers either by --teachers NAME or by --path_t PATH, not both")
    for flag, items in (("--teachers", args.teachers or []),
                        ("--path_t", [os.path.abspath(p) for p in args.path_t or []])):
        twice = sorted({i for i in items if items.count(i) > 1})
        if twice:
            fail(parser, f"{flag} names {', '.join(twice)} more than once; each teacher counts once")
    given = len(args.teachers or args.path_t or [])
    if args.teacher_num is None:
        args.teacher_num = given or 1
    if args.teacher_num < 1:
        fail(parser, f"--teacher_num must be at least 1, got {args.teacher_num}")
    if given and given != args.teacher_num:
        fail(parser, f"--teacher_num {args.teacher_num} does not match the {given} teachers given")
    if args.model_t and (not args.path_t or len(args.model_t) not in (1, len(args.path_t))):
        fail(parser, "--model_t needs --path_t and either one architecture or one per path")
    members = group_members(parser, args, stand_values)
    for member in members:
        terms = parse_distill(member.distill)
        for method, flag in ([(member.ensemble_method, "--ensemble_method ")]
                             + [(e, f"--distill {n}@") for n, _, e in terms if e]):
            need = ENSEMBLES[method].min_teachers
            if args.teacher_num < need:
                fail(parser, f"{flag}{method} needs at least {need} teachers, got --teacher_num {args.teacher_num}")
    spot_adaptive.validate(parser, args)
    if args.spot_adaptive and (args.student_img_size is not None or get_model_cfg(args.model_s, imagenet).family == "vit"):
        fail(parser, "--spot_adaptive grafts student and teacher stages: it needs a CNN student at the teachers' image size")
    try:
        model_options(args, args.model_s, imagenet)
    except ValueError as exc:
        fail(parser, str(exc))
    if len(members) == 1:
        return parser, members[0]
    args.members = members
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


# flags that CA-MKD's fixed part of the name already shows
NAME_PREFIX_FLAGS = ("model_s", "dataset", "distill", "gamma", "alpha", "beta", "trial", "teacher_num",
                     "ensemble_method")


def result_settings(args, teacher_archs, teacher_digests=()):
    """Everything that changes this run's result (helper.runfolder.NOT_RESULT lists what does not):
    the flags, and the teachers' architectures and checkpoint contents."""
    return runfolder.result_settings(build_parser(), args, {"teacher_archs": list(teacher_archs),
                                                             "teacher_digests": list(teacher_digests)})


def run_name(args, teacher_archs, teacher_digests=()):
    """CA-MKD's student folder name (``S~student_data_distill_r~.._a~.._b~.._trial`` and the
    teachers), then every result flag not at its default, ``--tag``, and ``h`` + a hash of all result
    settings (teachers' checkpoints included): runs that differ in anything never share a folder.
    Folder-safe: ':' becomes '~' (CA-MKD's Windows separator)."""
    name = f"S~{args.model_s}_{args.dataset}_{args.distill}_r~{args.gamma}_a~{args.alpha}_b~{args.beta}_{args.trial}"
    arch_str = "_".join(sorted(set(teacher_archs)))
    name += f"_{args.teacher_num}_{arch_str}_{args.ensemble_method}" if args.teacher_num > 1 else f"_{arch_str}"
    default_lr = get_model_cfg(args.model_s, args.dataset == "imagenet").default_lr
    settings = result_settings(args, teacher_archs, teacher_digests)
    parts = [runfolder.folder_safe(name)]
    parts += runfolder.changed_flags(build_parser(), args, skip=NAME_PREFIX_FLAGS,
                                     defaults={"learning_rate": default_lr})
    parts += [args.tag] if args.tag else []
    parts.append("h" + runfolder.config_hash(settings))
    return runfolder.bounded("_".join(parts), settings)


def loader_views(args):
    """The views the training loader yields (the training view, then those the losses ask for)
    and whether it yields the samples' index."""
    loss_classes = [DISTILLERS[n] for n in objective_losses(args.distill)]
    views = (args.train_view,) + tuple(dict.fromkeys(v for cls in loss_classes for v in cls.views
                                                     if v != args.train_view))
    return views, any(cls.needs_index for cls in loss_classes)


def error(message) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    try:
        ctx = distributed.setup(args)
    except ValueError as exc:
        print(f"train_student.py: error: {exc}", file=sys.stderr)
        return 2
    where = {}
    try:
        if getattr(args, "members", None):
            return run_group(parser, args, ctx, where)
        return run(parser, args, ctx, where)
    except KeyboardInterrupt:
        if ctx.is_main:
            print(f"{PROG}: interrupted (Ctrl-C); " + runfolder.checkpoint_status(
                where.get("run_dir"), args.model_s, PROG, argv, args.epochs)
                + (f" (and {len(args.members) - 1} more students of the group; --resume continues them all)"
                   if getattr(args, "members", None) else ""), file=sys.stderr)
        return 130
    except OSError as exc:            # a read-only or full save folder, ...
        print(f"{PROG}: error: {runfolder.disk_message(exc)}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup(ctx)


def check_teachers(args, teacher_specs, teacher_models, spec):
    """The teachers' checkpoint digests; a one-line ValueError for the same checkpoint twice, a
    teacher trained on another data set, or non-finite weights."""
    digests = [runfolder.file_digest(path) for _, path, _ in teacher_specs]
    for i, d in enumerate(digests):
        if d in digests[:i]:
            first = teacher_specs[digests.index(d)][0]
            raise ValueError(f"teachers {first} and {teacher_specs[i][0]} are the same checkpoint "
                             f"({teacher_specs[i][1]}); each teacher counts once")
    for (name, path, _), model in zip(teacher_specs, teacher_models):
        trained_on = read_state_dict(path)[1].get("dataset")
        if trained_on is not None and str(trained_on) != spec.name:
            raise ValueError(f"teacher {name} ({path}) was trained on {trained_on}, this run uses "
                             f"--dataset {spec.name}")
        if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
            raise ValueError(f"teacher {name} ({path}) holds non-finite (NaN/inf) weights")
    return digests


def run(parser, args, ctx, where):
    args.backend_mode = configure_backend(args)
    seed = trial_seed(args.seed, args.trial)
    torch.manual_seed(seed)
    imagenet = args.dataset == "imagenet"
    teacher_specs = resolve_teachers(parser, args)
    views, with_index = loader_views(args)
    try:
        loaders = loaders_from_args(args, batch_size=args.batch_size, device=args.device, seed=seed,
                                    test_batch_size=cuda_graphs.eval_batch_size(args),
                                    with_index=with_index, views=views,
                                    rank=ctx.rank, world_size=ctx.world_size)
        spec = loaders.spec
        teacher_models = [load_model(path, arch=arch, num_classes=spec.num_classes, imagenet=imagenet)
                          for _, path, arch in teacher_specs]
        digests = check_teachers(args, teacher_specs, teacher_models, spec)
    except (DataError, CheckpointError, ValueError) as exc:
        return error(exc)
    fmt = memory_format(args)
    teachers = TeacherEnsemble(teacher_models, [n for n, _, _ in teacher_specs],
                               fuse=args.fuse_teachers).to(args.device, memory_format=fmt)
    student = build_student(args, spec)

    weight_notes = []
    resolve_loss_weights(args, weight_notes.append)      # before naming: the folder name holds -r/-a/-b
    archs = [m.arch for m in teacher_models]
    settings = result_settings(args, archs, digests)
    run_dir = os.path.join(args.save_dir, "students", run_name(args, archs, digests))
    lock = None
    try:          # read-only checks on every process (all refuse together), then rank 0 locks
        if args.resume:           # before the folder is touched: a refused resume leaves nothing behind
            runfolder.check_resume(parser, run_dir, settings, identity=("model_s", "dataset", "trial"))
            load_for_resume(checkpoint_paths(run_dir, args.model_s)[0],
                            expect={"arch": args.model_s, "num_classes": spec.num_classes})
        else:
            runfolder.check_free(run_dir, args.overwrite)
        if ctx.is_main:
            lock = runfolder.claim(run_dir, resume=args.resume, overwrite=args.overwrite,
                                   log=None if args.quiet else print)
    except (RunFolderError, ResumeError) as exc:
        return error(exc)
    where["run_dir"] = run_dir
    try:
        run = RunLogger(run_dir, echo=not args.quiet, fresh=not args.resume, enabled=ctx.is_main)
        try:
            return train(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes,
                         dict(teacher_digests=digests, config_hash=runfolder.config_hash(settings)))
        finally:
            run.close()
    finally:
        if lock is not None:
            lock.release()


def build_student(args, spec):
    imagenet = args.dataset == "imagenet"
    student = build_model(args.model_s, spec.num_classes, imagenet=imagenet,
                          **model_options(args, args.model_s, imagenet, args.student_img_size))
    if args.student_img_size is not None:     # a CNN student: resize its input (a ViT is built at the size)
        student.input_resize = args.student_img_size
    return student.to(args.device, memory_format=memory_format(args))


def run_group(parser, args, ctx, where):
    """Train the students of ``args.members`` together (``helper.group``): shared loaders and teacher
    forwards, each student a complete run, bit-identical on the CPU to its solo run."""
    from helper.group import GroupOutOfMemory, Member, RngStream, SharedTeachers, fit_group
    members = args.members
    if ctx.enabled:
        return error("a group of students (lists in --distill/--ensemble_method, --logit-stand both) runs in "
                     "one process; torchrun is not supported for groups: start one run per student")
    if args.cuda_graphs != "off":
        return error(f"--cuda_graphs {args.cuda_graphs}: a group of students runs its steps eagerly; use "
                     f"--cuda_graphs off (the default) with lists in --distill/--ensemble_method")
    args.backend_mode = configure_backend(args)
    seed = trial_seed(args.seed, args.trial)
    torch.manual_seed(seed)              # the solo run's order: seed, loaders, teachers, then the student
    imagenet = args.dataset == "imagenet"
    teacher_specs = resolve_teachers(parser, args)
    views = [loader_views(m) for m in members]
    distinct = list(dict.fromkeys(v for v, _ in views))
    loader_kw = dict(batch_size=args.batch_size, device=args.device, seed=seed,
                     test_batch_size=cuda_graphs.eval_batch_size(args), rank=ctx.rank, world_size=ctx.world_size)
    index_for = {v: any(i for w, i in views if w == v) for v in distinct}
    try:
        loaders = {distinct[0]: loaders_from_args(args, with_index=index_for[distinct[0]], views=distinct[0], **loader_kw)}
        spec = loaders[distinct[0]].spec
        teacher_models = [load_model(path, arch=arch, num_classes=spec.num_classes, imagenet=imagenet)
                          for _, path, arch in teacher_specs]
        digests = check_teachers(args, teacher_specs, teacher_models, spec)
        teachers = TeacherEnsemble(teacher_models, [n for n, _, _ in teacher_specs],
                                   fuse=args.fuse_teachers).to(args.device, memory_format=memory_format(args))
        start_state = rng_state()        # where each student's solo run builds its student
        for v in distinct[1:]:           # (the loaders draw from their own generators)
            loaders[v] = loaders_from_args(args, with_index=index_for[v], views=v, **loader_kw)
    except (DataError, CheckpointError, ValueError) as exc:
        return error(exc)
    archs = [m.arch for m in teacher_models]

    # names, folders and checks of every student before anything is written
    group, notes = [], []
    for m, (v, with_index) in zip(members, views):
        m.backend_mode = args.backend_mode
        weight_notes = []
        resolve_loss_weights(m, weight_notes.append)
        notes.append(weight_notes)
        name = run_name(m, archs, digests)
        group.append(Member(args=m, name=name, run_dir=os.path.join(args.save_dir, "students", name),
                            views=v, with_index=with_index))
    names = [g.name for g in group]
    for i, g in enumerate(group):
        if g.name in names[:i]:
            other = group[names.index(g.name)].args
            return error(f"students --distill {other.distill} --ensemble_method {other.ensemble_method} and "
                         f"--distill {g.args.distill} --ensemble_method {g.args.ensemble_method} are the same run "
                         f"({g.name}); list each student once")
    for g in group:
        g.args.group = names
    try:
        for g in group:
            settings = result_settings(g.args, archs, digests)
            if args.resume:
                runfolder.check_resume(parser, g.run_dir, settings, identity=("model_s", "dataset", "trial"))
                load_for_resume(checkpoint_paths(g.run_dir, args.model_s)[0],
                                expect={"arch": args.model_s, "num_classes": spec.num_classes})
            else:
                runfolder.check_free(g.run_dir, args.overwrite)
    except (RunFolderError, ResumeError) as exc:
        return error(exc)

    shared = SharedTeachers(teachers)
    teacher_eval = evaluate_teachers(args, teachers, loaders[distinct[0]])
    locks = []
    where["run_dir"] = group[0].run_dir
    try:
        for g in group:
            locks.append(runfolder.claim(g.run_dir, resume=args.resume, overwrite=args.overwrite,
                                         log=None if args.quiet else print))
        for g, weight_notes in zip(group, notes):
            g.stream = RngStream(start_state)
            g.run = RunLogger(g.run_dir, echo=not args.quiet, fresh=not args.resume, enabled=ctx.is_main)
            with g.stream:
                student = build_student(g.args, spec)
                built = build_training(g.args, ctx, g.run, loaders[g.views], shared, teacher_specs, student, seed,
                                       weight_notes, dict(teacher_digests=digests, config_hash=runfolder.config_hash(
                                           result_settings(g.args, archs, digests))), teacher_eval)
                if isinstance(built, int):
                    return built
                task, optimizer, meta, _ = built
                g.trainer = Trainer(task, optimizer, loaders[g.views], g.args, g.run, meta, is_main=ctx.is_main)
                if args.resume:
                    g.trainer.resume()
            g.run.info(f"==> in a group of {len(group)} students: {', '.join(names)}")
        try:
            fit_group(group, loaders, shared, args, lambda line: [g.run.info(line) for g in group])
        except GroupOutOfMemory as exc:
            return error(exc)
        for g in group:
            g.summary = g.trainer.finish()
            report_summary(g.args, g.run, g.summary, teacher_eval[0])
        return 0
    except NonFiniteLoss as exc:
        g = getattr(exc, "member", group[0])     # the student whose step failed
        return report_non_finite(f"{exc} (student {g.name} of the group)", g.args, g.run)
    except (RunFolderError, ResumeError) as exc:
        return error(exc)
    finally:
        for g in group:
            if g.run is not None:
                g.run.close()
        for lock in locks:
            lock.release()


NAN_CAUSES = ("a teacher whose outputs are not finite, a too small --kd_T, a NaN or huge loss weight "
              "(-r/-a/-b), or a too high --learning_rate")


def train(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes, identity):
    built = build_training(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes, identity)
    if isinstance(built, int):
        return built
    task, optimizer, meta, teacher_report = built
    try:
        summary = fit(task, optimizer, loaders, args, run, meta, is_main=ctx.is_main, distributed=ctx.enabled)
    except NonFiniteLoss as exc:
        return report_non_finite(exc, args, run)
    except ResumeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    report_summary(args, run, summary, teacher_report)
    return 0


def report_non_finite(exc, args, run) -> int:
    print(f"{PROG}: error: {exc}; " + runfolder.checkpoint_status(run.run_dir, args.model_s, PROG, [],
                                                              args.epochs, suggest_resume=False)
          + f"; likely causes: {NAN_CAUSES}", file=sys.stderr)
    return 1


def report_summary(args, run, summary, teacher_report):
    run.info(f"==> student {args.model_s}: best test acc {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
             f"last {summary['last_acc']:.2f}" + (f"; teachers {', '.join(f'{a:.2f}' for a in teacher_report['teacher_acc'])}"
                                                  if teacher_report else ""))


def evaluate_teachers(args, teachers, loaders):
    """The teachers' test accuracies (``args.json``'s report) and the log lines saying them."""
    if args.skip_validation:
        return {}, []
    ev = evaluate(teachers.models, loaders.test, args.device, args.amp)
    report = {"teacher_acc": ev["top1"], "teacher_names": teachers.names}
    lines = [f"    teacher {name}: test acc {acc:.2f}" for name, acc in zip(teachers.names, ev["top1"])]
    if len(teachers.models) > 1:
        report["ensemble_acc"] = ev["ensemble_top1"]
        lines.append(f"    teachers' ensemble (averaged probabilities): test acc {ev['ensemble_top1']:.2f}")
    return report, lines


def build_training(args, ctx, run, loaders, teachers, teacher_specs, student, seed, weight_notes, identity,
                   teacher_eval=None):
    """Everything a student's training needs, built in the order that draws the run's random
    numbers: ``(task, optimizer, meta, teacher report)``, or an exit code after a one-line error.
    ``teacher_eval``: the teachers' evaluation when already done (a group evaluates them once)."""
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
    teacher_report, lines = teacher_eval if teacher_eval is not None else evaluate_teachers(args, teachers, loaders)
    for line in lines:
        run.info(line)

    run.write_config(dict(vars(args), seed_used=seed, teacher_paths=[p for _, p, _ in teacher_specs],
                          teacher_archs=[m.arch for m in teacher_models], **identity, **teacher_report),
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
    optimizer = build_optimizer(task.trainable(), args)
    optimizer = cuda_graphs.install(task, optimizer, args, run.info, distributed=ctx.enabled)
    meta = {"arch": args.model_s, "num_classes": spec.num_classes, "dataset": spec.name, "trial": args.trial,
            "distill": args.distill, "ensemble_method": args.ensemble_method, "seed": seed,
            "teachers": teachers.names, "teacher_archs": [m.arch for m in teacher_models],
            **({"img_size": student.input_resize} if student.input_resize is not None else {})}
    return task, optimizer, meta, teacher_report


if __name__ == "__main__":
    sys.exit(main())
