"""Writing checkpoints so that nothing is lost, and reading them back for ``--resume``.

Checkpoints keep RepDistiller's format, ``{'model': state_dict, 'epoch', 'best_acc', 'optimizer',
...}``, plus what a bit-identical resume needs (the random state, the distillation modules).
They are written to a temporary file in the same folder and renamed into place, so a crash
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch


def atomic_save(obj: Dict[str, Any], path: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeError(ValueError):
    """A one-line explanation of why ``--resume`` cannot continue a run."""


def load_for_resume(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ResumeError(f"--resume: no checkpoint to continue from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, in one line
        raise ResumeError(f"--resume: cannot read {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    for key in ("model", "optimizer", "epoch"):
        if key not in state:
            raise ResumeError(f"--resume: {path} has no {key!r} entry; it is not a run checkpoint")
    return state
