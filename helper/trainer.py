"""One training loop for teachers and students: everything around a task's step.

``Trainer`` is one run's training: the learning-rate schedule, metrics kept on the device, the
non-finite-loss guard, progress, evaluation, best/last checkpoints and ``--resume``. It is handed
its step function (the task's eager ``train_step``, or ``helper.cuda_graphs``' static/captured
form of it). ``fit`` is the one loop: each epoch, each batch, every member's step on it. A teacher
trial and a solo student are a list of one member; a group of students shares each batch (and,
through ``helper.group.SharedTeachers``, the teachers' forward).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .checkpoint import atomic_save, checkpoint_paths, load_for_resume, rng_state, set_rng_state
from .distributed import all_reduce_max, average_buffers
from .errors import NonFiniteLoss, ResumeError
from .evaluate import evaluate
from .execution import autocast_context, needs_grad_scaler
from .meters import DeviceSums, topk_correct
from .runlog import Progress, RunLogger
from .schedule import LRSchedule, lr_at, set_lr
from .task import StepOutput, Task


@dataclass(frozen=True)
class LoopSettings:
    """What the trainer reads of the run configuration."""
    epochs: int
    device: str
    amp: bool
    print_freq: int
    save_freq: int
    quiet: bool
    schedule: LRSchedule

    @classmethod
    def of(cls, config) -> "LoopSettings":
        return cls(config.epochs, config.device, config.amp, config.print_freq, config.save_freq, config.quiet,
                   LRSchedule.of(config))


class EpochAccumulator:
    """One epoch's training figures, kept on the device: the step outputs added up after each
    step (and each term's teacher shares, averaged over the steps), and the non-finite-loss guard."""

    def __init__(self, epoch: int, steps: int, settings: LoopSettings, progress: Optional[Progress] = None,
                 distributed: bool = False):
        self.epoch, self.steps, self.settings = epoch, steps, settings
        self.progress, self.distributed = progress, distributed
        self.sums = DeviceSums()
        self.shares: Dict[str, Tensor] = {}
        self.steps_added = 0
        self.first_bad = None              # device tensor: first step with a non-finite loss, or -1
        self.check_every_step = torch.device(settings.device).type == "cpu"   # free on CPU, a sync on CUDA
        self.images_seen = 0

    def add(self, step: int, out: StepOutput):
        loss, sums = out.loss, self.sums
        n = out.labels.shape[0]
        self.images_seen += n
        self.steps_added += 1
        loss_d = loss.detach().float()
        bad = ~torch.isfinite(loss_d)
        first_bad = self.first_bad
        self.first_bad = torch.where(bad, torch.full_like(loss_d, step), torch.full_like(loss_d, -1)) \
            if first_bad is None else torch.where((first_bad < 0) & bad, torch.full_like(loss_d, step), first_bad)
        c1, c5 = topk_correct(out.logits.detach().float(), out.labels)
        sums.add("loss", loss_d * n)
        sums.add("top1", c1)
        sums.add("top5", c5)
        sums.add("n", n)
        for key, value in out.metrics.items():
            sums.add(key, value.detach().float() * n)
        for key, share in out.shares.items():
            self.shares[key] = self.shares.get(key, 0) + share

        reading = step % self.settings.print_freq == 0 or step == self.steps
        if self.check_every_step or reading:
            bad = self.first_bad.clone()
            if self.distributed:       # every rank stops together (a NaN anywhere ends the run)
                all_reduce_max(bad)
            bad_step = int(bad.item())
            if bad_step > 0:
                raise NonFiniteLoss(f"non-finite training loss at epoch {self.epoch}, step {bad_step} of "
                                    f"{self.steps}; stopping")
        if reading and self.progress is not None:
            s = sums.read(across_ranks=self.distributed)
            self.progress.update(step, self.images_seen, {"loss": s["loss"] / s["n"], "top1": 100 * s["top1"] / s["n"]})
        elif reading and self.distributed:
            sums.read(across_ranks=True)   # keep the collective calls in step on every rank

    def record(self) -> Dict[str, float]:
        s = self.sums.read(across_ranks=self.distributed)
        n = max(s.pop("n", 0), 1)
        record = {"train_loss": s.pop("loss") / n, "train_acc": 100 * s.pop("top1") / n,
                  "train_acc_top5": 100 * s.pop("top5") / n}
        record.update({k: v / n for k, v in s.items()})
        for key, total in self.shares.items():       # each teacher's share of each term's weight
            for m, value in enumerate((total / max(self.steps_added, 1)).tolist()):
                record[f"weight_{key}_t{m}"] = value
        return record


class BestTracker:
    """Keeps the best epoch. "Best" is chosen on the validation set when there is one, otherwise
    on the test set (RepDistiller's habit, reported under its own name)."""

    def __init__(self, on: str):
        self.on = on
        self.score = -math.inf
        self.epoch = 0
        self.record: Dict[str, Any] = {}

    def update(self, epoch: int, record: Dict[str, Any]) -> bool:
        score = record[self.on]
        if score > self.score:
            self.score, self.epoch, self.record = score, epoch, dict(record)
            return True
        return False

    def state(self):
        return {"on": self.on, "score": self.score, "epoch": self.epoch, "record": self.record}

    def load(self, state):
        self.on, self.score, self.epoch, self.record = state["on"], state["score"], state["epoch"], state["record"]


class Trainer:
    """One run's training around its task: resume, each epoch's schedule, steps, evaluation,
    logging and best/last checkpoints.

    ``step`` is the step function (default: the task's ``train_step``); ``meta`` goes into every
    checkpoint next to RepDistiller's keys (arch, num_classes, dataset, trial...); ``loaders`` has
    ``train``, ``test`` and optional ``val``.
    """

    def __init__(self, task: Task, optimizer, loaders, settings: LoopSettings, run: RunLogger,
                 meta: Dict[str, Any], step: Optional[Callable] = None, is_main: bool = True,
                 distributed: bool = False):
        self.task, self.optimizer, self.loaders, self.settings, self.run, self.meta = \
            task, optimizer, loaders, settings, run, meta
        self.step = step or task.train_step
        self.is_main, self.distributed = is_main, distributed
        self.last_path, self.best_path = checkpoint_paths(run.run_dir, meta["arch"])
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(settings.device, settings.amp) else None
        self.autocast = autocast_context(settings.device, settings.amp)
        self.best = BestTracker("val_acc" if loaders.val is not None else "test_acc")
        self.start_epoch = 1
        self.record: Dict[str, Any] = {}
        self.started = time.time()
        self.acc: Optional[EpochAccumulator] = None

    def resume(self):
        """Load the last checkpoint (model, task state, optimiser, scaler, best, RNG)."""
        task, optimizer, scaler, best, meta, last_path = (self.task, self.optimizer, self.scaler, self.best,
                                                           self.meta, self.last_path)
        state = load_for_resume(last_path, expect={k: meta[k] for k in ("arch", "num_classes") if k in meta})
        try:      # a checkpoint of another run layout: one line, not a traceback
            task.model.load_state_dict(state["model"])
            task.load_extra_state(state.get("extra", {}))
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            best.load(state["best"])
            set_rng_state(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, ResumeError):
                raise
            raise ResumeError(f"--resume: {last_path} does not fit this run: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        self.start_epoch = state["epoch"] + 1
        # the checkpoint's epoch is the last one trained until the loop trains another (a run killed
        # between its last checkpoint and summary.json is summarised from it)
        self.record = self.run.truncate_metrics(state["epoch"]) or {
            "epoch": state["epoch"], "test_acc": state.get("test_acc"), "test_acc_top5": state.get("test_acc_top5")}
        self.run.info(f"resumed from {last_path} at epoch {state['epoch']}")

    def save(self, path, epoch, record):
        scaler = self.scaler
        atomic_save({"model": self.task.model.state_dict(), "epoch": epoch,
                     "best_acc": self.best.record.get("test_acc", record["test_acc"]),
                     "test_acc": record["test_acc"], "test_acc_top5": record["test_acc_top5"],
                     "optimizer": self.optimizer.state_dict(), "extra": self.task.extra_state(),
                     "best": self.best.state(), "rng": rng_state(),
                     **({"scaler": scaler.state_dict()} if scaler is not None else {}), **self.meta}, path)

    def begin_epoch(self, epoch: int):
        settings = self.settings
        lr = lr_at(settings.schedule, epoch)
        set_lr(self.optimizer, lr)
        self.loaders.train.set_epoch(epoch)
        self.task.epoch_begin(epoch, settings.epochs)
        progress = Progress(len(self.loaders.train), epoch, settings.epochs, settings.print_freq,
                            enabled=self.is_main and not settings.quiet)
        self.t0 = time.time()
        self.record = {"epoch": epoch, "lr": lr}
        self.task.train_mode()
        self.acc = EpochAccumulator(epoch, len(self.loaders.train), settings, progress, self.distributed)

    def train_batch(self, step: int, batch, epoch: int) -> StepOutput:
        out = self.step(batch, epoch, self.optimizer, self.scaler, self.autocast)
        self.acc.add(step, out)
        return out

    def end_epoch(self, epoch: int):
        settings, task, record, best, run = self.settings, self.task, self.record, self.best, self.run
        record.update(self.acc.record())
        self.acc = None
        if self.distributed:
            average_buffers(task.trainable())
        record["epoch_time"] = time.time() - self.t0
        test = evaluate([task.model], self.loaders.test, settings.device, settings.amp)
        record.update(test_acc=test["top1"][0], test_acc_top5=test["top5"][0], test_loss=test["loss"][0])
        if self.loaders.val is not None:
            val = evaluate([task.model], self.loaders.val, settings.device, settings.amp)
            record.update(val_acc=val["top1"][0], val_acc_top5=val["top5"][0], val_loss=val["loss"][0])
        improved = best.update(epoch, record)
        record["best_acc"] = best.record["test_acc"]
        if self.is_main:
            run.log_epoch(record)
            run.info(f" * Epoch {epoch}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f} | "
                     f"test acc {record['test_acc']:.2f} (top-5 {record['test_acc_top5']:.2f})"
                     + (f" | val acc {record['val_acc']:.2f}" if "val_acc" in record else "")
                     + f" | best {best.record['test_acc']:.2f} @ {best.epoch} | {record['epoch_time']:.1f}s")
            if improved:
                self.save(self.best_path, epoch, record)
            self.save(self.last_path, epoch, record)
            if epoch % settings.save_freq == 0:
                self.save(os.path.join(run.run_dir, f"ckpt_epoch_{epoch}.pth"), epoch, record)

    def finish(self) -> Dict[str, Any]:
        """The run summary (also written to summary.json)."""
        record, best = self.record, self.best
        summary = {
            "status": "finished", "epochs": self.settings.epochs, "last_epoch": record.get("epoch"),
            "last_acc": record.get("test_acc"), "last_acc_top5": record.get("test_acc_top5"),
            "best_acc": best.record.get("test_acc"), "best_acc_top5": best.record.get("test_acc_top5"),
            "best_epoch": best.epoch, "best_chosen_on": "validation" if best.on == "val_acc" else "test",
            "best_val_acc": best.record.get("val_acc"), "train_seconds": time.time() - self.started,
            "last_checkpoint": self.last_path, "best_checkpoint": self.best_path,
        }
        if self.is_main:
            self.run.write_summary(summary)
        return summary


@dataclass
class Member:
    """One run of those trained together: its trainer, the loader (by views) its batches come from,
    whether its step takes the samples' index, and the RNG stream it runs in (a group's students
    each own one: ``helper.group.RngStream``; a lone run needs none)."""
    name: str
    trainer: Trainer
    views: tuple
    with_index: bool = False
    stream: Any = contextlib.nullcontext()


def member_batch(batch, with_index: bool):
    """The loader's batch as the member's own solo loader yields it (no index unless it takes it)."""
    return batch if with_index or len(batch) < 3 else batch[:2]


def member_step(m: Member, batches, step: int, epoch: int):
    """One member's step on the shared batch, in its own RNG stream; a non-finite loss names the
    member (``exc.member``)."""
    try:
        with m.stream:
            m.trainer.train_batch(step, member_batch(batches[m.views], m.with_index), epoch)
    except NonFiniteLoss as exc:
        exc.member = m
        raise


def fit(members: Sequence[Member], loaders_by_views: Dict[tuple, Any], epochs: int, stage=None,
        first_step: Optional[Callable] = None) -> List[Dict[str, Any]]:
    """Train every member up to ``epochs`` on shared batches; returns their summaries. Each
    member's trainer has been built (and resumed) in its own stream; members that resumed further
    along skip the epochs they have (a kill between two members' checkpoints). ``stage``: the
    group's ``helper.group.GroupStage``, which prepares what the members share before their steps
    (the teachers' outputs; under ``--cuda_graphs`` static buffers and the teacher graph);
    ``first_step``: the group's measured first step (``helper.group.measured_first_step``), called
    in place of the members' first steps. Each member's step output (a captured step's: rewritten
    by its next replay) is added to its epoch's figures right after the step
    (``Trainer.train_batch``)."""
    start = min(m.trainer.start_epoch for m in members)
    for epoch in range(start, epochs + 1):
        active = [m for m in members if m.trainer.start_epoch <= epoch]
        for m in active:
            with m.stream:
                m.trainer.begin_epoch(epoch)
        for loader in loaders_by_views.values():
            loader.train.set_epoch(epoch)
        iterators = {views: iter(loader.train) for views, loader in loaders_by_views.items()}
        steps = len(next(iter(loaders_by_views.values())).train)
        for step in range(1, steps + 1):
            batches = {views: next(it) for views, it in iterators.items()}
            if stage is not None:
                batches = stage.prepare(batches)
            if first_step is not None:
                first_step(active, batches, step, epoch)
                first_step = None
            else:
                for m in active:
                    member_step(m, batches, step, epoch)
        if stage is not None:
            stage.end_epoch()
        for m in active:
            with m.stream:
                m.trainer.end_epoch(epoch)
    summaries = []
    for m in members:
        with m.stream:
            summaries.append(m.trainer.finish())
    return summaries
