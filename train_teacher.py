"""Train teacher networks, several seeds in one command, and record them in the teacher manifest.

    python train_teacher.py --model resnet32x4 --trials 0,1,2
    python train_teacher.py --model resnet8 --dataset digits --epochs 15 --trials 3

Each trial is an independent run with its own seed (``--seed`` + trial) in
``<save_dir>/teachers/<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<t>/`` (RepDistiller's naming),
with ``<model>_best.pth``/``<model>_last.pth``, ``args.json``, ``metrics.jsonl`` and TensorBoard
events. Finished teachers are added to ``<save_dir>/manifest.json``, which ``setting.py`` and
``train_student.py`` read.
"""
from __future__ import annotations

import copy
import json
import os
import sys

import torch

from dataset import DataError, add_data_arguments, loaders_from_args, spec_from_args
from distiller_zoo.registry import CLASSIFICATION_LOSSES
from helper.checkpoint import ResumeError, load_for_resume
from helper.loop import ClassifierTask, NonFiniteLoss, checkpoint_paths, fit
from helper import cuda_graphs, distributed, runfolder
from helper.distributed import DistContext
from helper.manifest import ManifestError, add_teacher, entry_name, manifest_path, read_manifest
from helper.schedule import build_optimizer
from helper.options import (OneLineParser, model_options, add_optimization_arguments, add_run_arguments,
                            configure_backend, fail, is_label, memory_format, trial_seed, validate_common)
from helper.runfolder import RunFolderError
from helper.runlog import RunLogger, environment_info
from models import build_model, get_model_cfg, imagenet_model_dict, model_dict

PROG = "train_teacher.py"
NAN_CAUSES = "a too high --learning_rate, an --lr_decay_rate above 1, or non-finite input data"


class Stop(Exception):
    """A one-line reason to stop (printed as ``train_teacher.py: error: ...``) and the exit status."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def build_parser():
    parser = OneLineParser(description="Train teacher networks (one run per trial).")
    parser.add_argument("--model", type=str, default="resnet110",
                        help=f"architecture: {', '.join(sorted(model_dict))} (CIFAR-sized), "
                             f"{', '.join(sorted(imagenet_model_dict))} (--dataset imagenet)")
    parser.add_argument("--loss", type=str, default="ce", choices=sorted(CLASSIFICATION_LOSSES),
                        help="classification loss the teacher is trained with")
    parser.add_argument("--trials", type=str, default=None,
                        help="several trials in one command: a list like 0,1,2 or a count N (trials 0..N-1); "
                             "overrides --trial")
    add_data_arguments(parser)
    add_optimization_arguments(parser)
    cuda_graphs.add_arguments(parser)
    add_run_arguments(parser)
    return parser


def parse_trials(parser, args):
    if args.trials is None:
        return [str(args.trial)]
    text = args.trials.strip()
    if text.isdigit() and "," not in text:
        count = int(text)
        if count < 1:
            fail(parser, f"--trials count must be positive, got {text}")
        return [str(i) for i in range(count)]
    trials = [t.strip() for t in text.split(",") if t.strip()]
    if not trials or len(set(trials)) != len(trials):
        fail(parser, f"--trials expects a count or distinct comma-separated labels like 0,1,2, got {text!r}")
    bad = [t for t in trials if not is_label(t)]
    if bad:
        fail(parser, f"--trials label {bad[0]!r}: use letters, digits and - _ . = ~ only, not starting with "
                     f"'.' (it names a folder)")
    return trials


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    imagenet = args.dataset == "imagenet"
    table = imagenet_model_dict if imagenet else model_dict
    if args.model not in table:
        fail(parser, f"--model {args.model!r} is not a {'ImageNet' if imagenet else 'CIFAR-sized'} model; "
                     f"expected one of: {', '.join(sorted(table))}")
    validate_common(parser, args, default_lr=get_model_cfg(args.model, imagenet).default_lr)
    try:
        model_options(args, args.model, imagenet)
    except ValueError as exc:
        fail(parser, str(exc))
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        fail(parser, f"--eval_batch_size must be a positive integer, got {args.eval_batch_size}")
    args.trial_list = parse_trials(parser, args)
    return parser, args


def trial_args(args, trial):
    """The flags of one trial (``--trials`` runs several)."""
    targs = copy.copy(args)
    targs.trial = str(trial)
    return targs


def run_folder(args, trial) -> str:
    """RepDistiller's ``<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<t>``, then every result flag not
    at its default (``seed~5``, ``loss~focal``, ``cosine`` ...): two teachers that differ in
    anything that changes the result never share a folder."""
    targs = trial_args(args, trial)
    parser = build_parser()
    name = runfolder.folder_safe(f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}"
                                 f"_trial_{trial}")
    parts = [name] + runfolder.changed_flags(parser, targs, skip=("model", "dataset", "learning_rate",
                                                                  "weight_decay", "trial"))
    return os.path.join(args.save_dir, "teachers",
                        runfolder.bounded("_".join(parts), runfolder.result_settings(parser, targs)))


def read_summary(run_dir):
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        return summary if isinstance(summary, dict) and summary.get("status") == "finished" else None
    except (OSError, ValueError):
        return None


def register(args, trial, spec_name, num_classes, summary):
    try:
        return add_teacher(manifest_path(args.save_dir), model=args.model, dataset=spec_name, trial=trial,
                           checkpoint=summary["best_checkpoint"], best_acc=summary["best_acc"],
                           last_acc=summary["last_acc"], num_classes=num_classes,
                           extra={"loss": args.loss, "last_checkpoint": os.path.relpath(
                               summary["last_checkpoint"], os.path.abspath(args.save_dir))})
    except ManifestError as exc:
        raise Stop(f"trial {trial} finished but is not recorded: {exc}; repair or delete that file, then run "
                   f"the same command with --resume (finished trials are recorded without training again)")


def prepare(parser, args, trial, ctx):
    """Decide how this trial starts, before its folder is touched: ``"fresh"``, ``"resume"`` or
    ``"finished"``; a resume whose settings differ, or with nothing to resume, is a ``Stop``."""
    run_dir = run_folder(args, trial)
    if not args.resume:              # read-only, on every process: all refuse together
        try:
            runfolder.check_free(run_dir, args.overwrite)
        except RunFolderError as exc:
            raise Stop(str(exc), code=2)
        return "fresh"
    targs = trial_args(args, trial)
    several = len(args.trial_list) > 1
    try:
        found = runfolder.check_resume(parser, run_dir, runfolder.result_settings(parser, targs),
                                       identity=("model", "dataset", "trial"), missing_ok=several)
        if not found:
            return "fresh"            # --trials 0,1,2 --resume: trials never started start now
        summary = read_summary(run_dir)
        if summary is not None and summary.get("epochs", 0) >= args.epochs:
            return "finished"
        last = checkpoint_paths(run_dir, args.model)[0]
        if several and not os.path.isfile(last):
            return "fresh"
        load_for_resume(last, expect={"arch": args.model, "num_classes": spec_from_args(args).num_classes})
    except (RunFolderError, ResumeError) as exc:
        raise Stop(str(exc), code=2)
    return "resume"


def train_one(parser, args, trial: str, ctx: DistContext, where):
    start = prepare(parser, args, trial, ctx)
    run_dir = run_folder(args, trial)
    if start == "finished":
        summary = read_summary(run_dir)
        spec = spec_from_args(args)
        if not ctx.is_main:
            return entry_name(spec.name, args.model, trial), summary
        name = register(args, trial, spec.name, spec.num_classes, summary)
        print(f"==> {name}: already finished in {run_dir} (best {summary['best_acc']:.2f}); recorded")
        return name, summary
    args = trial_args(args, trial)
    args.resume = start == "resume"
    seed = trial_seed(args.seed, trial)
    torch.manual_seed(seed)
    loaders = loaders_from_args(args, batch_size=args.batch_size, device=args.device, seed=seed,
                                test_batch_size=cuda_graphs.eval_batch_size(args),
                                rank=ctx.rank, world_size=ctx.world_size, views=(args.train_view,))
    spec = loaders.spec
    imagenet = args.dataset == "imagenet"
    model = build_model(args.model, spec.num_classes, imagenet=imagenet,
                        **model_options(args, args.model, imagenet))
    model = model.to(args.device, memory_format=memory_format(args))
    lock = None
    if ctx.is_main:
        try:
            lock = runfolder.claim(run_dir, resume=args.resume, overwrite=args.overwrite,
                                   log=None if args.quiet else print)
        except RunFolderError as exc:
            raise Stop(str(exc), code=2)
    where.update(run_dir=run_dir, trial=trial)
    try:
        return train_in_folder(args, trial, ctx, run_dir, loaders, model, seed)
    finally:
        if lock is not None:
            lock.release()


def train_in_folder(args, trial, ctx, run_dir, loaders, model, seed):
    spec = loaders.spec
    run = RunLogger(run_dir, echo=not args.quiet, fresh=not args.resume, enabled=ctx.is_main)
    criterion = CLASSIFICATION_LOSSES[args.loss]
    task = ClassifierTask(model, lambda logits, labels: criterion(logits, labels).mean())
    task.distribute(ctx, args.device, args.sync_bn)
    if args.compile:
        task.compile(run.info)
    optimizer = build_optimizer(task.model, args)
    optimizer = cuda_graphs.install(task, optimizer, args, run.info, distributed=ctx.enabled)
    run.write_config(dict(vars(args), trial=trial, seed_used=seed),
                     dict(environment_info(args.device), seed=seed, trial=trial))
    run.info(f"==> teacher {args.model} on {spec.name} ({spec.num_classes} classes, {spec.num_train} train / "
             f"{spec.num_test} test images), trial {trial}, seed {seed}, device {args.device}, "
             f"amp {'on' if args.amp else 'off'}, lr {args.learning_rate} -> {run_dir}")
    run.info(f"==> {args.backend_mode}" + (f"; {ctx.world_size} processes, global batch {args.global_batch_size}"
                                           if ctx.enabled else ""))
    meta = {"arch": args.model, "num_classes": spec.num_classes, "dataset": spec.name, "trial": trial,
            "loss": args.loss, "seed": seed}
    try:
        summary = fit(task, optimizer, loaders, args, run, meta, is_main=ctx.is_main, distributed=ctx.enabled)
    except NonFiniteLoss as exc:
        raise Stop(f"trial {trial}: {exc}; " + runfolder.checkpoint_status(
            run_dir, args.model, PROG, [], args.epochs, suggest_resume=False)
            + f"; the teacher is not recorded; likely causes: {NAN_CAUSES}")
    except ResumeError as exc:
        raise Stop(str(exc))
    finally:
        run.close()
    if not ctx.is_main:
        return entry_name(spec.name, args.model, trial), summary
    name = register(args, trial, spec.name, spec.num_classes, summary)
    run.info(f"==> {name}: best test acc {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
             f"last {summary['last_acc']:.2f}; recorded in {manifest_path(args.save_dir)}")
    return name, summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    try:
        read_manifest(manifest_path(args.save_dir))    # before any training: a trained teacher must be recordable
    except ManifestError as exc:
        print(f"{PROG}: error: {exc} (repair or delete it before training teachers)", file=sys.stderr)
        return 2
    try:
        ctx = distributed.setup(args)
    except ValueError as exc:
        print(f"train_teacher.py: error: {exc}", file=sys.stderr)
        return 2
    args.backend_mode = configure_backend(args)
    results = []
    where = {}
    try:
        for trial in args.trial_list:
            results.append(train_one(parser, args, trial, ctx, where))
    except Stop as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except DataError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if ctx.is_main:
            print(f"{PROG}: interrupted (Ctrl-C)" + (f" in trial {where['trial']}" if where else "") + "; "
                  + runfolder.checkpoint_status(where.get("run_dir"), args.model, PROG, argv, args.epochs)
                  + ("" if len(args.trial_list) == 1 else
                     " (with --resume, finished trials are recorded, the stopped one continues, the rest start)"),
                  file=sys.stderr)
        return 130
    except OSError as exc:            # a read-only or full save folder, ...
        print(f"{PROG}: error: {runfolder.disk_message(exc)}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup(ctx)
    if ctx.is_main:
        print("==> teachers:")
        for name, s in results:
            print(f"    {name:40s} best {s['best_acc']:6.2f}  last {s['last_acc']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
