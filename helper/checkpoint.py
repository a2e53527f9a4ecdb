"""Writing checkpoints so that nothing is lost, and reading them back for ``--resume``.

Checkpoints keep RepDistiller's format, ``{'model': state_dict, 'epoch', 'best_acc', 'optimizer',
...}``, plus what a bit-identical resume needs (the random state, the distillation modules).
They are written to a temporary file in the same folder and renamed into place, so a crash
mid-write leaves the previous checkpoint intact (a ``kill -9`` can leave the temporary file: the
next start of that run removes it, see ``helper.runfolder``). Files get the permissions of any
other file the user creates (0666 less the umask), not mkstemp's 0600.

A write that fails raises an ``OSError`` naming the file it was for (not the temporary), with the
system's reason, also where ``torch.save`` would wrap it in a ``RuntimeError`` ("unexpected pos"):
a full disk is one line (``helper.stop_messages.disk_message``), never a traceback.
"""
from __future__ import annotations

import os
import secrets
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from .errors import ResumeError, named_os_error


class _RecordingFile:
    """A file object that remembers the first OSError of its ``write`` (``torch.save`` replaces it
    by a RuntimeError that no longer says what the system reported)."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self):
        return self.f.flush()


def _write_atomically(path: str, write: Callable, prefix: str, suffix: str, binary: bool):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:   # mode 0666: the umask applies, as for any file the user's programs create
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise named_os_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
            except RuntimeError:
                if recording.error is None:
                    raise
                raise recording.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:     # a full disk, Ctrl-C: no partial temporary file is left
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise named_os_error(exc, path) from None
        raise


def atomic_save(obj: Dict[str, Any], path: str):
    """``torch.save`` into a temporary file beside ``path``, then rename it into place."""
    _write_atomically(path, lambda f: torch.save(obj, f), ".tmp-", ".pth", binary=True)


def atomic_write_text(path: str, text: str):
    """Replace a text file (JSON) all at once: never a 0-byte or half-written file."""
    _write_atomically(path, lambda f: f.write(text), "." + os.path.basename(path) + ".", ".tmp", binary=False)


def checkpoint_paths(run_dir: str, arch: str):
    """``(last, best)``: a run's ``<arch>_last.pth`` and ``<arch>_best.pth`` (RepDistiller's names)."""
    return (os.path.join(run_dir, f"{arch}_last.pth"), os.path.join(run_dir, f"{arch}_best.pth"))


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# what a checkpoint written by this code holds beyond RepDistiller's keys, and needs to resume
RESUME_KEYS = ("model", "optimizer", "epoch", "best", "rng")


def load_for_resume(path: str, expect: Optional[Dict[str, Any]] = None, epochs: Optional[int] = None) -> Dict[str, Any]:
    """The checkpoint to continue from; a one-line ``ResumeError`` when there is none, it is
    unreadable, was written by another program (RepDistiller: no ``best``/``rng``), belongs to
    another run (``expect``: arch, num_classes, dataset... that must match its meta entries), or
    holds more epochs than ``epochs`` (a run is never relabelled shorter than it is)."""
    if not os.path.isfile(path):
        raise ResumeError(f"--resume: nothing to resume: no checkpoint at {path} (run without --resume "
                          f"to start the run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, in one line
        raise ResumeError(f"--resume: cannot read {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict):
        raise ResumeError(f"--resume: {path} holds a {type(state).__name__}, not a run checkpoint")
    for key in ("model", "optimizer", "epoch"):
        if key not in state:
            raise ResumeError(f"--resume: {path} has no {key!r} entry; it is not a run checkpoint")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise ResumeError(f"--resume: {path} has no {' or '.join(repr(k) for k in missing)} entry: it was "
                          f"written by another program (RepDistiller?) and cannot be continued exactly; "
                          f"start a new run (its weights can be a teacher: train_student.py --path_t)")
    for key, value in (expect or {}).items():
        if key in state and str(state[key]) != str(value):
            raise ResumeError(f"--resume: {path} is a checkpoint of {key} {state[key]!r}, this run has "
                              f"{key} {value!r}")
    if epochs is not None and isinstance(state["epoch"], int) and state["epoch"] > epochs:
        raise ResumeError(f"--resume --epochs {epochs}: {path} already holds epoch {state['epoch']}; give "
                          f"--epochs {state['epoch']} or more (a run keeps the epochs it has trained)")
    return state


def state_mismatch(saved: Any, expected: Mapping[str, Any]) -> Optional[str]:
    """What keeps the tensors ``saved`` (a state_dict read from a checkpoint) from loading into a
    module whose state_dict is ``expected``: missing or unexpected keys, or the first other shape;
    None when they fit."""
    if not isinstance(saved, Mapping):
        return f"a {type(saved).__name__} where a state_dict belongs"
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        few = lambda keys: ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        return "; ".join(([f"missing keys {few(missing)}"] if missing else [])
                         + ([f"unexpected keys {few(unexpected)}"] if unexpected else []))
    for key, value in expected.items():
        shape = tuple(getattr(value, "shape", ()))
        got = tuple(getattr(saved[key], "shape", ()))
        if shape != got:
            return f"{key} has shape {got} in the checkpoint, {shape} in this run"
    return None
