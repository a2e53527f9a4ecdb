"""The one line a run prints when it stops early: where its checkpoint is and the exact command
that continues it, or what the file system said."""
from __future__ import annotations

import errno
import os
import shlex
from typing import Optional, Sequence

import torch

from .checkpoint import checkpoint_paths


def disk_message(exc: OSError) -> str:
    """One line for a failed file operation: which file, and what the system said."""
    where = f" {exc.filename}:" if getattr(exc, "filename", None) else ""
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " (the disk is full: free space, then continue with --resume)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a writable --save_dir)"
    return f"file system error:{where} {exc.strerror or exc}{hint}"


def checkpoint_epoch(path: str) -> Optional[int]:
    """The epoch a run checkpoint holds, or None when there is none (or it cannot be read)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - only used to word a message
        return None


def resume_command(prog: str, argv: Sequence[str]) -> str:
    kept = [a for a in argv if a not in ("--resume", "--overwrite")]
    return shlex.join(["python", prog, *kept, "--resume"])


def checkpoint_status(run_dir: Optional[str], arch: Optional[str], prog: str, argv: Sequence[str],
                      epochs: int, suggest_resume: bool = True) -> str:
    """Where a stopped run can go on from: its last checkpoint and the exact --resume command, or
    that no checkpoint was written (then the same command starts it over)."""
    last = checkpoint_paths(run_dir, arch)[0] if run_dir and arch else None
    epoch = checkpoint_epoch(last)
    if epoch is None:
        return ("no checkpoint was written" + (f" in {run_dir}" if run_dir else "")
                + ("; the same command starts the run over" if suggest_resume else ""))
    return (f"the last checkpoint {last} holds epoch {epoch} of {epochs}"
            + (f"; continue with: {resume_command(prog, argv)}" if suggest_resume else ""))
