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

import os
import sys

import torch

from dataset import DataError, add_data_arguments, loaders_from_args
from distiller_zoo.registry import CLASSIFICATION_LOSSES
from helper.checkpoint import ResumeError
from helper.loop import ClassifierTask, NonFiniteLoss, fit
from helper import cuda_graphs, distributed
from helper.distributed import DistContext
from helper.manifest import add_teacher, entry_name, manifest_path
from helper.options import (OneLineParser, add_optimization_arguments, add_run_arguments, configure_backend,
                            fail, memory_format, trial_seed, validate_common)
from helper.runlog import RunLogger, environment_info
from models import build_model, get_model_cfg, imagenet_model_dict, model_dict


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
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        fail(parser, f"--eval_batch_size must be a positive integer, got {args.eval_batch_size}")
    args.trial_list = parse_trials(parser, args)
    return args


def run_folder(args, trial) -> str:
    name = f"{args.model}_{args.dataset}_lr_{args.learning_rate}_decay_{args.weight_decay}_trial_{trial}"
    if args.loss != "ce":
        name += f"_{args.loss}"
    return os.path.join(args.save_dir, "teachers", name)


def train_one(args, trial: str, ctx: DistContext):
    seed = trial_seed(args.seed, trial)
    torch.manual_seed(seed)
    loaders = loaders_from_args(args, batch_size=args.batch_size, device=args.device, seed=seed,
                                test_batch_size=cuda_graphs.eval_batch_size(args),
                                rank=ctx.rank, world_size=ctx.world_size)
    spec = loaders.spec
    model = build_model(args.model, spec.num_classes, imagenet=args.dataset == "imagenet")
    model = model.to(args.device, memory_format=memory_format(args))
    run_dir = run_folder(args, trial)
    run = RunLogger(run_dir, echo=not args.quiet, fresh=not args.resume, enabled=ctx.is_main)
    criterion = CLASSIFICATION_LOSSES[args.loss]
    task = ClassifierTask(model, lambda logits, labels: criterion(logits, labels).mean())
    task.distribute(ctx, args.device, args.sync_bn)
    if args.compile:
        task.compile(run.info)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
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
    finally:
        run.close()
    if not ctx.is_main:
        return entry_name(spec.name, args.model, trial), summary
    name = add_teacher(manifest_path(args.save_dir), model=args.model, dataset=spec.name, trial=trial,
                       checkpoint=summary["best_checkpoint"], best_acc=summary["best_acc"],
                       last_acc=summary["last_acc"], num_classes=spec.num_classes,
                       extra={"loss": args.loss, "last_checkpoint": os.path.relpath(
                           summary["last_checkpoint"], os.path.abspath(args.save_dir))})
    run.info(f"==> {name}: best test acc {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
             f"last {summary['last_acc']:.2f}; recorded in {manifest_path(args.save_dir)}")
    return name, summary


def main(argv=None):
    args = parse_args(argv)
    try:
        ctx = distributed.setup(args)
    except ValueError as exc:
        print(f"train_teacher.py: error: {exc}", file=sys.stderr)
        return 2
    args.backend_mode = configure_backend(args)
    results = []
    try:
        for trial in args.trial_list:
            results.append(train_one(args, trial, ctx))
    except (NonFiniteLoss, ResumeError, DataError) as exc:
        print(f"train_teacher.py: error: {exc}", file=sys.stderr)
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
