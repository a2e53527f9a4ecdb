"""One training loop for teachers and students.

A ``Task`` says what one training step computes (plain cross-entropy for a teacher, the whole
distillation objective for a student); this module does everything around it: the learning-rate
schedule, mixed precision, metrics kept on the device, progress, the non-finite-loss guard,
evaluation, best/last checkpoints and ``--resume``. It fits on a few screens on purpose.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import ResumeError, atomic_save, load_for_resume, rng_state, set_rng_state
from .meters import DeviceSums, topk_correct
from .runlog import Progress, RunLogger
from .schedule import lr_at, set_lr


class NonFiniteLoss(RuntimeError):
    """Raised when a training loss is NaN or infinite; the message names the epoch and step."""


@dataclass
class StepOutput:
    loss: Tensor                    # the scalar that is back-propagated
    logits: Tensor                  # the trained network's logits, for training accuracy
    labels: Tensor
    metrics: Dict[str, Tensor] = field(default_factory=dict)   # extra scalars, averaged per epoch
    # losses of modules that have their own optimiser (the spot-adaptive policy), by name
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)


class Task:
    """What the loop trains. Subclasses implement ``step``; the rest has sensible defaults."""

    model: nn.Module                # the network that is evaluated and saved as 'model'

    def distribute(self, dist_ctx, device, sync_bn: bool = False):
        """Wrap what the step runs in DistributedDataParallel (``helper.distributed``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support distributed training")

    def trainable(self) -> nn.Module:
        """Everything the optimiser updates (the model, plus connectors for a student)."""
        return self.model

    def train_mode(self):
        self.trainable().train()

    def epoch_begin(self, epoch: int, epochs: int):
        pass

    def step(self, batch, epoch: int) -> StepOutput:
        """The forward: the loss of one batch (and what the loop reports)."""
        raise NotImplementedError

    def train_step(self, batch, epoch: int, optimizer, scaler=None,
                   autocast=contextlib.nullcontext()) -> StepOutput:
        """One optimisation step: the forward under ``autocast``, backward, optimiser step."""
        with autocast:
            out = self.step(batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        backward_and_step(out.loss, optimizer, scaler)
        return out

    def epoch_metrics(self) -> Dict[str, float]:
        """Per-epoch figures the task tracks itself (e.g. mean ensemble weight per teacher)."""
        return {}

    def extra_state(self) -> Dict[str, Any]:
        return {}

    def load_extra_state(self, state: Dict[str, Any]):
        pass


class ClassifierTask(Task):
    """Train one network with a classification loss ``criterion(logits, labels) -> scalar``."""

    def __init__(self, model: nn.Module, criterion=None):
        self.model = model
        self.net = model            # what the step calls: the model, or its DDP / compiled wrapper
        self.criterion = criterion or nn.CrossEntropyLoss()

    def distribute(self, dist_ctx, device, sync_bn=False):
        from .distributed import wrap
        self.net = wrap(self.model, dist_ctx, device, sync_bn)
        self.model = getattr(self.net, "module", self.model)

    def compile(self, log):
        self.net = maybe_compile(self.net, log, "the model")

    def step(self, batch, epoch):
        images, labels = batch[0], batch[1]
        logits = self.net(images)
        return StepOutput(self.criterion(logits, labels), logits, labels)


def backward_and_step(loss: Tensor, optimizer, scaler=None):
    """``loss.backward()`` and ``optimizer.step()``, through the gradient scaler when there is one."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def maybe_compile(module, log, what: str):
    """``torch.compile(module)``, or ``module`` with a one-line message where compiling is not
    available here (no torch.compile, an unsupported platform or Python, no working compiler)."""
    if not hasattr(torch, "compile"):
        log(f"--compile: this torch ({torch.__version__}) has no torch.compile; {what} runs uncompiled")
        return module
    try:
        # ``import torch._dynamo`` here would make ``torch`` a local name of this whole function
        # (UnboundLocalError above): import the submodule under its own name instead.
        from torch import _dynamo
        if not _dynamo.is_dynamo_supported():
            log(f"--compile: torch.compile is not supported on this platform/Python; {what} runs uncompiled")
            return module
    except ImportError:
        log(f"--compile: torch.compile is unavailable; {what} runs uncompiled")
        return module
    return torch.compile(module)


def autocast_context(device: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    dev = torch.device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def needs_grad_scaler(device: str, amp: bool) -> bool:
    return amp and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported()


@torch.inference_mode()     # no autograd bookkeeping at all (faster than no_grad; same numbers)
def evaluate(models: Sequence[nn.Module], loader, device: str = "cpu", amp: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 (percent) and mean cross-entropy of each model, and of their ensemble
    (averaged probabilities) when there are several."""
    models = list(models)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = DeviceSums()
    try:
        for batch in loader:
            images, labels = batch[0], batch[1]
            probs = 0
            with autocast_context(device, amp):
                logits_all = [m(images).float() for m in models]
            for k, logits in enumerate(logits_all):
                c1, c5 = topk_correct(logits, labels)
                sums.add(f"top1_{k}", c1)
                sums.add(f"top5_{k}", c5)
                sums.add(f"loss_{k}", F.cross_entropy(logits, labels, reduction="sum"))
                probs = probs + logits.softmax(dim=1)
            if len(models) > 1:
                c1, c5 = topk_correct(probs, labels)
                sums.add("top1_ens", c1)
                sums.add("top5_ens", c5)
            sums.add("n", labels.shape[0])
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    s = sums.read()
    n = max(s.get("n", 0), 1)
    out = {"top1": [100 * s[f"top1_{k}"] / n for k in range(len(models))],
           "top5": [100 * s[f"top5_{k}"] / n for k in range(len(models))],
           "loss": [s[f"loss_{k}"] / n for k in range(len(models))]}
    if len(models) > 1:
        out["ensemble_top1"] = 100 * s["top1_ens"] / n
        out["ensemble_top5"] = 100 * s["top5_ens"] / n
    return out


class EpochAccumulator:
    """One epoch's training figures, kept on the device: what ``train_epoch`` adds up after each
    step, and the non-finite-loss guard. A group of students (``helper.group``) keeps one per
    student and feeds each its own step's output."""

    def __init__(self, epoch: int, steps: int, args, progress: Optional[Progress] = None,
                 distributed: bool = False):
        self.epoch, self.steps, self.args = epoch, steps, args
        self.progress, self.distributed = progress, distributed
        self.sums = DeviceSums()
        self.first_bad = None              # device tensor: first step with a non-finite loss, or -1
        self.check_every_step = torch.device(args.device).type == "cpu"   # free on CPU, a sync on CUDA
        self.images_seen = 0

    def add(self, step: int, out: StepOutput):
        loss, sums, args = out.loss, self.sums, self.args
        n = out.labels.shape[0]
        self.images_seen += n
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

        reading = step % args.print_freq == 0 or step == self.steps
        if self.check_every_step or reading:
            bad = self.first_bad.clone()
            if self.distributed:       # every rank stops together (a NaN anywhere ends the run)
                from .distributed import all_reduce_max
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
        return record


def train_epoch(task: Task, optimizer, loader, epoch: int, args, scaler=None,
                progress: Optional[Progress] = None, distributed: bool = False) -> Dict[str, float]:
    task.train_mode()
    acc = EpochAccumulator(epoch, len(loader), args, progress, distributed)
    for step, batch in enumerate(loader, start=1):
        acc.add(step, task.train_step(batch, epoch, optimizer, scaler, autocast_context(args.device, args.amp)))
    return acc.record()


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


def checkpoint_paths(run_dir: str, arch: str):
    return (os.path.join(run_dir, f"{arch}_last.pth"), os.path.join(run_dir, f"{arch}_best.pth"))


class Trainer:
    """One run's training around its task: resume, each epoch's schedule, steps, evaluation,
    logging and best/last checkpoints. ``fit`` drives one trainer over its own loader; a group of
    students (``helper.group``) drives several over shared batches, one step each per batch.

    ``meta`` goes into every checkpoint next to RepDistiller's keys (arch, num_classes, dataset,
    trial...). ``loaders`` has ``train``, ``test`` and optional ``val``.
    """

    def __init__(self, task: Task, optimizer, loaders, args, run: RunLogger, meta: Dict[str, Any],
                 is_main: bool = True, distributed: bool = False):
        self.task, self.optimizer, self.loaders, self.args, self.run, self.meta = task, optimizer, loaders, args, run, meta
        self.is_main, self.distributed = is_main, distributed
        self.last_path, self.best_path = checkpoint_paths(run.run_dir, meta["arch"])
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(args.device, args.amp) else None
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
            raise ResumeError(f"--resume: {last_path} does not fit this run: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        self.start_epoch = state["epoch"] + 1
        self.run.truncate_metrics(state["epoch"])
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
        args = self.args
        lr = lr_at(args, epoch)
        set_lr(self.optimizer, lr)
        self.loaders.train.set_epoch(epoch)
        self.task.epoch_begin(epoch, args.epochs)
        progress = Progress(len(self.loaders.train), epoch, args.epochs, args.print_freq,
                            enabled=self.is_main and not getattr(args, "quiet", False))
        self.t0 = time.time()
        self.record = {"epoch": epoch, "lr": lr}
        self.task.train_mode()
        self.acc = EpochAccumulator(epoch, len(self.loaders.train), args, progress, self.distributed)

    def train_batch(self, step: int, batch, epoch: int) -> StepOutput:
        out = self.task.train_step(batch, epoch, self.optimizer, self.scaler,
                                   autocast_context(self.args.device, self.args.amp))
        self.acc.add(step, out)
        return out

    def end_epoch(self, epoch: int):
        args, task, record, best, run = self.args, self.task, self.record, self.best, self.run
        record.update(self.acc.record())
        self.acc = None
        if self.distributed:
            from .distributed import average_buffers
            average_buffers(task.trainable())
        record.update(task.epoch_metrics())
        record["epoch_time"] = time.time() - self.t0
        test = evaluate([task.model], self.loaders.test, args.device, args.amp)
        record.update(test_acc=test["top1"][0], test_acc_top5=test["top5"][0], test_loss=test["loss"][0])
        if self.loaders.val is not None:
            val = evaluate([task.model], self.loaders.val, args.device, args.amp)
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
            if epoch % args.save_freq == 0:
                self.save(os.path.join(run.run_dir, f"ckpt_epoch_{epoch}.pth"), epoch, record)

    def finish(self) -> Dict[str, Any]:
        """The run summary (also written to summary.json)."""
        record, best = self.record, self.best
        if not record:   # resumed a run that had already finished
            record = dict(best.record)
        summary = {
            "status": "finished", "epochs": self.args.epochs,
            "last_acc": record.get("test_acc"), "last_acc_top5": record.get("test_acc_top5"),
            "best_acc": best.record.get("test_acc"), "best_acc_top5": best.record.get("test_acc_top5"),
            "best_epoch": best.epoch, "best_chosen_on": "validation" if best.on == "val_acc" else "test",
            "best_val_acc": best.record.get("val_acc"), "train_seconds": time.time() - self.started,
            "last_checkpoint": self.last_path, "best_checkpoint": self.best_path,
        }
        if self.is_main:
            self.run.write_summary(summary)
        return summary


def fit(task: Task, optimizer, loaders, args, run: RunLogger, meta: Dict[str, Any],
        is_main: bool = True, distributed: bool = False) -> Dict[str, Any]:
    """Train for ``args.epochs`` epochs; returns the run summary (also written to summary.json).
    See ``Trainer`` for ``meta`` and ``loaders``."""
    trainer = Trainer(task, optimizer, loaders, args, run, meta, is_main, distributed)
    if args.resume:
        trainer.resume()
    for epoch in range(trainer.start_epoch, args.epochs + 1):
        trainer.begin_epoch(epoch)
        for step, batch in enumerate(loaders.train, start=1):
            trainer.train_batch(step, batch, epoch)
        trainer.end_epoch(epoch)
    return trainer.finish()
