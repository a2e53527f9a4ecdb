"""Teacher trials built from their resolved configurations (``helper.teacher_config``), trained one
after the other and recorded in the teacher manifest.

Each trial is an independent run with its own seed (``--seed`` + trial) and folder
(``helper.run_identity.teacher_identity``); it trains through the same trainer and loop as a
student (``helper.trainer``), as a list of one member. ``--resume`` with several trials records
finished trials, continues the stopped one and starts the others.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dataset import DataError, loaders_from_args, spec_from_args
from distiller_zoo.registry import CLASSIFICATION_LOSSES
from models import build_model

from . import cuda_graphs, runfolder
from .checkpoint import checkpoint_paths, load_for_resume
from .distributed import DistContext
from .errors import NonFiniteLoss, RunError
from .execution import apply_backend, execution_lines, memory_format
from .manifest import ManifestError, add_teacher, entry_name, manifest_path, name_problem, read_manifest, \
    remove_teacher
from .options import model_options, trial_seed
from .run_identity import teacher_identity
from .runlog import RunLogger, environment_info
from .schedule import build_optimizer
from .stop_messages import checkpoint_status
from .task import ClassifierTask
from .trainer import LoopSettings, Member, Trainer, fit

IDENTITY = ("model", "dataset", "trial")
NAN_CAUSES = ("a too high --learning_rate or --weight_decay, an --lr_decay_rate above 1, or non-finite "
              "input data")


def read_summary(run_dir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        return summary if isinstance(summary, dict) and summary.get("status") == "finished" else None
    except (OSError, ValueError):
        return None


class TeacherRun:
    """The trials of one command line, trained one after the other; ``train`` raises a ``RunError``
    for anything that stops it."""

    def __init__(self, parser, trials: Sequence, ctx: DistContext, prog: str = "train_teacher.py"):
        self.parser, self.trials, self.ctx, self.prog = parser, list(trials), ctx, prog
        self.trial: Optional[str] = None          # the trial being trained, and its folder
        self.run_dir: Optional[str] = None

    def folder(self, config) -> Tuple[str, Dict[str, Any]]:
        name, settings = teacher_identity(self.parser, config)
        return os.path.join(config.save_dir, "teachers", name), settings

    def entry(self, config) -> str:
        """The trial's name in the teacher manifest (a data set's spec is named as --dataset)."""
        return entry_name(config.dataset, config.model, config.trial, config.tag)

    def start(self, config) -> str:
        """How a trial starts, before its folder is touched: ``"fresh"``, ``"resume"`` or
        ``"finished"``; a resume whose settings, seed or epochs differ, or with nothing to resume, and
        a teacher whose manifest name belongs to another folder's teacher, are refused."""
        how = self._start(config)
        run_dir, _ = self.folder(config)
        path, name = manifest_path(config.save_dir), self.entry(config)
        problem = name_problem(read_manifest(path), path, name, run_dir)
        if problem:
            raise RunError(f"{problem}; record this teacher under another name with --tag NAME (entry {name}-NAME) "
                           f"or another --trial")
        return how

    def _start(self, config) -> str:
        run_dir, settings = self.folder(config)
        if not config.resume:              # read-only, on every process: all refuse together
            runfolder.check_free(run_dir, config.overwrite)
            return "fresh"
        several = len(self.trials) > 1
        found = runfolder.check_resume(self.parser, run_dir, settings, identity=IDENTITY, missing_ok=several,
                                       seed=trial_seed(config.seed, config.trial))
        if not found:
            return "fresh"            # --trials 0,1,2 --resume: trials never started start now
        summary = read_summary(run_dir)
        if summary is not None and summary.get("epochs", 0) >= config.epochs:
            return "finished"
        last = checkpoint_paths(run_dir, config.model)[0]
        if several and not os.path.isfile(last):
            return "fresh"
        load_for_resume(last, expect={"arch": config.model, "num_classes": spec_from_args(config).num_classes},
                        epochs=config.epochs)
        return "resume"

    def register(self, config, run_dir, spec_name, num_classes, summary) -> str:
        """Record the finished trial of ``run_dir`` (its checkpoints where the folder is now: a
        summary.json of a folder that was moved or copied names the old place)."""
        last, best = checkpoint_paths(run_dir, config.model)
        try:
            return add_teacher(manifest_path(config.save_dir), model=config.model, dataset=spec_name,
                               trial=config.trial, checkpoint=best, best_acc=summary["best_acc"],
                               last_acc=summary["last_acc"], num_classes=num_classes, tag=config.tag,
                               extra={"loss": config.loss, "last_checkpoint": os.path.relpath(
                                   os.path.abspath(last), os.path.abspath(config.save_dir)),
                                   "epochs": summary.get("epochs"), "last_epoch": summary.get("last_epoch"),
                                   "best_epoch": summary.get("best_epoch")})
        except ManifestError as exc:
            raise RunError(f"trial {config.trial} finished but is not recorded: {exc}; repair or delete that file, "
                           f"then run the same command with --resume (finished trials are recorded without "
                           f"training again)", code=1) from None

    def train_trial(self, config) -> Tuple[str, Dict[str, Any]]:
        start = self.start(config)
        run_dir, _ = self.folder(config)
        ctx = self.ctx
        if start == "finished":
            summary = read_summary(run_dir)
            spec = spec_from_args(config)
            if not ctx.is_main:
                return self.entry(config), summary
            name = self.register(config, run_dir, spec.name, spec.num_classes, summary)
            print(f"==> {name}: already finished in {run_dir} (best {summary['best_acc']:.2f}); recorded")
            return name, summary
        config = config.replace(resume=start == "resume")     # this trial's start, as args.json records it
        seed = trial_seed(config.seed, config.trial)
        torch.manual_seed(seed)
        try:
            loaders = loaders_from_args(config, batch_size=config.batch_size, device=config.device, seed=seed,
                                        test_batch_size=cuda_graphs.eval_batch_size(config),
                                        rank=ctx.rank, world_size=ctx.world_size, views=(config.train_view,))
        except DataError as exc:
            raise RunError(exc, code=1) from None
        spec = loaders.spec
        imagenet = config.dataset == "imagenet"
        model = build_model(config.model, spec.num_classes, imagenet=imagenet,
                            **model_options(config.drop_path, config.model, imagenet))
        model = model.to(config.device, memory_format=memory_format(config.channels_last))
        lock = runfolder.claim(run_dir, resume=config.resume, overwrite=config.overwrite,
                               take_over=config.take_over_lock, log=None if config.quiet else print) \
            if ctx.is_main else None
        self.trial, self.run_dir = config.trial, run_dir
        run = None
        started = False
        try:
            # the folder's teacher is trained on (--resume --epochs N) or replaced (--overwrite): the manifest
            # lists finished teachers only, so it is out until this run finishes
            if ctx.is_main and remove_teacher(manifest_path(config.save_dir), self.entry(config), run_dir) \
                    and not config.quiet:
                print(f"==> {self.entry(config)} is out of {manifest_path(config.save_dir)} until this run finishes")
            run = RunLogger(run_dir, echo=not config.quiet, fresh=not config.resume, enabled=ctx.is_main)
            criterion = CLASSIFICATION_LOSSES[config.loss]
            task = ClassifierTask(model, lambda logits, labels: criterion(logits, labels).mean())
            task.distribute(ctx, config.device, config.sync_bn)
            if config.compile:
                task.compile(run.info)
            optimizer = build_optimizer(task.model, config)
            step, optimizer = cuda_graphs.step_function(task, optimizer, config, run.info, distributed=ctx.enabled)
            run.write_config(dict(config.as_dict(), seed_used=seed),
                             dict(environment_info(config.device), seed=seed, trial=config.trial))
            run.info(f"==> teacher {config.model} on {spec.name} ({spec.num_classes} classes, {spec.num_train} train / "
                     f"{spec.num_test} test images), trial {config.trial}, seed {seed}, device {config.device}, "
                     f"amp {'on' if config.amp else 'off'}, lr {config.learning_rate} -> {run_dir}")
            for line in execution_lines(config, ctx, loaders.note):
                run.info(line)
            meta = {"arch": config.model, "num_classes": spec.num_classes, "dataset": spec.name,
                    "trial": config.trial, "loss": config.loss, "seed": seed}
            trainer = Trainer(task, optimizer, loaders, LoopSettings.of(config), run, meta, step=step,
                              is_main=ctx.is_main, distributed=ctx.enabled)
            if config.resume:
                trainer.resume()
            started = True
            try:
                summary, = fit([Member(config.trial, trainer, (config.train_view,))],
                               {(config.train_view,): loaders}, config.epochs)
            except DataError as exc:      # a file that fails to decode in the middle of an epoch
                raise RunError(exc, code=1) from None
            except NonFiniteLoss as exc:
                raise RunError(f"trial {config.trial}: {exc}; " + checkpoint_status(
                    run_dir, config.model, self.prog, [], config.epochs, suggest_resume=False)
                    + f"; the teacher is not recorded; likely causes: {NAN_CAUSES}", code=1) from None
        except Exception:
            if lock is not None and not started:    # failed before training: a new run leaves no folder
                lock.abandon()
                lock = None
            raise
        finally:
            if run is not None:
                run.close()
            if lock is not None:
                lock.release()
        if not ctx.is_main:
            return self.entry(config), summary
        name = self.register(config, run_dir, spec.name, spec.num_classes, summary)
        run.info(f"==> {name}: best test acc {summary['best_acc']:.2f} (epoch {summary['best_epoch']}), "
                 f"last {summary['last_acc']:.2f}; recorded in {manifest_path(config.save_dir)}")
        return name, summary

    def train(self) -> List[Tuple[str, Dict[str, Any]]]:
        apply_backend(self.trials[0].deterministic, self.trials[0].device)
        return [self.train_trial(config) for config in self.trials]

    def where(self) -> str:
        """`` in trial T`` once a trial has begun, for the stop line."""
        return f" in trial {self.trial}" if self.trial is not None else ""

    def stop_line(self, argv: Sequence[str]) -> str:
        """After Ctrl-C, a stop signal or a full disk: where the run can go on from, and the exact command."""
        config = self.trials[0]
        return (checkpoint_status(self.run_dir, config.model, self.prog, argv, config.epochs, parser=self.parser)
                + ("" if len(self.trials) == 1 else
                   " (with --resume, finished trials are recorded, the stopped one continues, the rest start)"))
