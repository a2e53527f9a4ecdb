"""What a run writes besides checkpoints: its configuration, metrics, TensorBoard events, progress.

A run folder holds ``args.json`` (resolved flags), ``run_info.json`` (command line, git commit,
library versions, device, seeds), ``metrics.jsonl`` (one JSON object per epoch), ``log.txt`` (what
was printed), TensorBoard event files, and ``summary.json`` once the run has finished (its absence
marks an interrupted run).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, Mapping, Optional

import numpy
import torch

from .checkpoint import atomic_write_text


def to_jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: str, obj: Any):
    """Atomically: a full disk or Ctrl-C leaves the old file (or none), never a 0-byte one."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: str) -> Dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": device,
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


HISTORY_KEYS = ("command", "started", "git_commit", "device", "device_name")   # one entry of run_info's history


class RunLogger:
    """Writes a run folder's logs. With ``enabled=False`` (non-zero ranks) it only prints nothing."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True,
                 echo: bool = True, fresh: bool = True):
        """``fresh``: a new run in this folder (not a resume): logs of an earlier run are removed,
        checkpoints are kept until the new run overwrites them."""
        self.run_dir = run_dir
        self.enabled = enabled
        self.echo = echo
        self.fresh = fresh
        self._tb = None
        if enabled:
            os.makedirs(run_dir, exist_ok=True)
            if fresh:
                for name in os.listdir(run_dir):
                    if name in ("metrics.jsonl", "summary.json", "log.txt") or name.startswith("events.out.tfevents"):
                        os.remove(os.path.join(run_dir, name))
            if tensorboard:     # imported here: it adds about a second to every start (--help, errors)
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=run_dir)

    def info(self, message: str):
        if not self.enabled:
            return
        if self.echo:
            print(message, flush=True)
        with open(os.path.join(self.run_dir, "log.txt"), "a") as f:
            f.write(message + "\n")

    def write_config(self, args: Dict[str, Any], extra: Dict[str, Any]):
        """args.json (the resolved flags: a resume may only have changed those that do not change
        the result) and run_info.json, which keeps the first start and a history of every start."""
        if self.enabled:
            write_json(os.path.join(self.run_dir, "args.json"), args)
            write_json(os.path.join(self.run_dir, "run_info.json"), self.start_record(extra))

    def start_record(self, info: Dict[str, Any]) -> Dict[str, Any]:
        """run_info.json: the first start's information and a ``history`` of every start (command,
        time, commit, device), so a resume never hides the command that began the run."""
        entry = {k: info.get(k) for k in HISTORY_KEYS if info.get(k) is not None}
        old = None
        if not self.fresh:
            try:
                with open(os.path.join(self.run_dir, "run_info.json")) as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError):
                old = None
        if not isinstance(old, dict):
            return dict(info, history=[entry])
        history = old.get("history") or [{k: old.get(k) for k in entry if old.get(k) is not None}]
        return dict(old, history=list(history) + [entry])

    def log_epoch(self, record: Dict[str, Any]):
        if not self.enabled:
            return
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
        if self._tb is not None:
            epoch = record["epoch"]
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, epoch)
            self._tb.flush()

    def truncate_metrics(self, last_epoch: int):
        """On resume, drop metric lines of epochs after the checkpoint (they will be redone)."""
        path = os.path.join(self.run_dir, "metrics.jsonl")
        if not (self.enabled and os.path.exists(path)):
            return
        kept = []
        with open(path) as f:
            for line in f:
                try:   # a line cut short by a kill is dropped: its epoch is redone
                    if json.loads(line)["epoch"] <= last_epoch:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue
        atomic_write_text(path, "".join(kept))

    def write_summary(self, summary: Dict[str, Any]):
        if self.enabled:
            write_json(os.path.join(self.run_dir, "summary.json"), summary)

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """A progress bar on an interactive terminal, plain periodic lines otherwise."""

    def __init__(self, total_steps: int, epoch: int, epochs: int, print_freq: int,
                 enabled: bool = True, stream=None):
        self.total = total_steps
        self.epoch, self.epochs = epoch, epochs
        self.print_freq = print_freq
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.time()

    def update(self, step: int, images: int, values: Dict[str, float]):
        """``step`` is 1-based; ``values`` are the epoch's running averages."""
        if not self.enabled:
            return
        elapsed = max(time.time() - self.start, 1e-9)
        rate = images / elapsed
        eta = elapsed / step * (self.total - step)
        text = " ".join(f"{k} {v:.4f}" if k == "loss" else f"{k} {v:.2f}" for k, v in values.items())
        line = (f"Epoch [{self.epoch}/{self.epochs}] [{step}/{self.total}] {text} "
                f"{rate:.0f} img/s ETA {eta:.0f}s")
        if self.tty:
            width = 24
            filled = int(width * step / max(self.total, 1))
            self.stream.write("\r" + "#" * filled + "." * (width - filled) + " " + line)
            if step == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step % self.print_freq == 0 or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()
