"""What a run writes besides checkpoints: its configuration, metrics, TensorBoard events, progress.

A run folder holds ``args.json`` (resolved flags), ``run_info.json`` (command line, git commit,
library versions, device, seeds), ``metrics.jsonl`` (one JSON object per epoch), ``log.txt`` (what
was printed), TensorBoard event files, and ``summary.json`` once the run has finished (its absence
marks an interrupted run; a resume removes it until the run ends again).

Every write either completes or leaves the file as it was: JSON files are replaced atomically
(``helper.checkpoint``); ``metrics.jsonl``, ``log.txt`` and the TensorBoard events are appended
to, and an append that fails (a full disk) is cut back to the file's previous end. A failed write
raises an ``OSError`` that names the file (``helper.stop_messages.disk_message`` words it).
TensorBoard events are written here, synchronously, in TensorBoard's record format: a writer
thread would report a full disk as a traceback of its own.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy
import torch

from .checkpoint import atomic_write_text
from .errors import ResumeError, named_os_error


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


def append_bytes(path: str, data: bytes):
    """Append ``data`` to ``path`` all or nothing: a write that fails (a full disk, Ctrl-C) cuts the
    file back to its previous end; the error names ``path``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise named_os_error(exc, path) from None
    try:
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException as exc:
            os.ftruncate(fd, end)
            if isinstance(exc, OSError):
                raise named_os_error(exc, path) from None
            raise
    finally:
        os.close(fd)


def read_metrics_file(path: str) -> Tuple[List[Dict[str, Any]], bool]:
    """The epoch records of ``metrics.jsonl`` and whether a last line cut short by a kill (no
    newline at its end) was left out; no file: ``([], False)``. Any other line that is not an
    epoch record is a one-line ``ResumeError``: it is never silently dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], False
    except OSError as exc:
        raise ResumeError(f"--resume: cannot read {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    tail = lines.pop()               # b"" when the file ends with a newline
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = _record_problem(line)
        if problem:
            raise ResumeError(f"--resume: {path} line {n} is not an epoch record ({problem}); only a last line "
                              f"cut short by a kill is left out: repair or remove that line, or start the run over "
                              f"with --overwrite")
        records.append(json.loads(line))
    cut = bool(tail.strip())
    if cut and not _record_problem(tail):    # a complete record without its newline
        records.append(json.loads(tail))
        cut = False
    return records, cut


def _record_problem(line: bytes) -> Optional[str]:
    try:
        record = json.loads(line)
    except ValueError as exc:        # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"not JSON: {exc}"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"'epoch' is {epoch!r}, expected an integer >= 1"
    return None


class EventWriter:
    """TensorBoard scalars in an ``events.out.tfevents.*`` file, written synchronously (each epoch's
    records appended all or nothing, ``append_bytes``), in TensorBoard's record format."""

    def __init__(self, run_dir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2   # here: about a second at import
        from tensorboard.summary.writer.record_writer import masked_crc32c
        self._event_pb2, self._summary_pb2, self._crc = event_pb2, summary_pb2, masked_crc32c
        self.path = os.path.join(run_dir, "events.out.tfevents.%010d.%s.%s.0"
                                 % (time.time(), socket.gethostname(), os.getpid()))
        self._write([event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")])

    def _record(self, event) -> bytes:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        return header + struct.pack("<I", self._crc(header)) + data + struct.pack("<I", self._crc(data))

    def _write(self, events):
        append_bytes(self.path, b"".join(self._record(e) for e in events))

    def scalars(self, step: int, values: Dict[str, float]):
        now = time.time()
        Summary = self._summary_pb2.Summary
        self._write([self._event_pb2.Event(wall_time=now, step=int(step),
                                           summary=Summary(value=[Summary.Value(tag=k, simple_value=float(v))]))
                     for k, v in values.items()])


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
            if tensorboard:
                self._tb = EventWriter(run_dir)

    def info(self, message: str):
        if not self.enabled:
            return
        if self.echo:
            print(message, flush=True)
        append_bytes(os.path.join(self.run_dir, "log.txt"), (message + "\n").encode("utf-8"))

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
        append_bytes(os.path.join(self.run_dir, "metrics.jsonl"),
                     (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode("utf-8"))
        if self._tb is not None:
            self._tb.scalars(record["epoch"], {k: v for k, v in record.items() if k != "epoch" and isinstance(
                v, (int, float)) and not isinstance(v, bool)})

    def truncate_metrics(self, last_epoch: int) -> Optional[Dict[str, Any]]:
        """On resume from a checkpoint of ``last_epoch``: drop the metric lines of later epochs (they
        will be redone) and a last line cut short by a kill, and remove ``summary.json`` (the run is
        not finished until it ends again). A corrupt line elsewhere is a ``ResumeError``
        (``read_metrics_file``). Returns the record of ``last_epoch``, if logged."""
        if not self.enabled:
            return None
        path = os.path.join(self.run_dir, "metrics.jsonl")
        records, cut = read_metrics_file(path)
        kept = [r for r in records if r["epoch"] <= last_epoch]
        if cut or len(kept) < len(records):
            atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        summary = os.path.join(self.run_dir, "summary.json")
        if os.path.exists(summary):
            os.remove(summary)
        return next((r for r in reversed(kept) if r["epoch"] == last_epoch), None)

    def write_summary(self, summary: Dict[str, Any]):
        if self.enabled:
            write_json(os.path.join(self.run_dir, "summary.json"), summary)

    def close(self):
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
