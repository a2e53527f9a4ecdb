"""The one line a run prints when it stops early: where its checkpoint is and the exact command
that continues it, or what the file system said.

Every command a message suggests is built from the command line the user gave (``command``),
with the flags it must add or drop resolved by the program's own parser, so that it is one the
program accepts (``tests/test_stop_messages.py`` parses them).
"""
from __future__ import annotations

import errno
import os
import shlex
from typing import Optional, Sequence

import torch

from .checkpoint import checkpoint_paths
from .run_lock import TAKE_OVER_FLAG, LockError

# the reasons that room on the disk cures, and what gives that room: the run continues afterwards
SPACE_ERRORS = {errno.ENOSPC: ("the disk is full", "free space"),
                errno.EDQUOT: ("the disk quota is used up", "free space"),
                errno.EFBIG: ("the file is larger than the file system or this process's file size limit allows",
                              "raise the limit")}
# flags that a suggested --resume command drops: it continues the run, it neither replaces it nor
# takes a lock over again
NOT_REPEATED = ("resume", "overwrite", "take_over_lock")


def is_space_error(exc: OSError) -> bool:
    return exc.errno in SPACE_ERRORS


def room_action(exc: OSError) -> str:
    """What makes room for a write that failed with a space error ("free space")."""
    return SPACE_ERRORS[exc.errno][1]


def disk_message(exc: OSError) -> str:
    """One line for a failed file operation: which file, and what the system said."""
    where = f" {exc.filename}:" if exc.filename else ""
    hint = ""
    if exc.errno in SPACE_ERRORS:
        hint = f" ({SPACE_ERRORS[exc.errno][0]})"
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


def _dest(parser, token: str) -> Optional[str]:
    """The destination of the option ``token`` names (``--resu`` abbreviates ``--resume`` where the
    parser allows abbreviations), or None when it names none."""
    if parser is None or not token.startswith("-"):
        return None
    name = token.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions:
        return actions[name].dest
    if parser.allow_abbrev and name.startswith("--"):
        matches = {a.dest for option, a in actions.items() if option.startswith(name)}
        if len(matches) == 1:
            return matches.pop()
    return None


def command(prog: str, argv: Sequence[str], parser=None, drop: Sequence[str] = (), add: Sequence[str] = ()) -> str:
    """``python PROG ARGV``, less the switches whose destinations are in ``drop`` (however they were
    spelt), plus ``add``."""
    kept = [a for a in argv if _dest(parser, a) not in drop and (parser is not None or a.split("=")[0] not in
                                                                 {"--" + d for d in drop})]
    return shlex.join(["python", prog, *kept, *add])


def resume_command(prog: str, argv: Sequence[str], parser=None) -> str:
    """The command that continues the run: the same flags, ``--resume`` instead of ``--overwrite``."""
    return command(prog, argv, parser, drop=NOT_REPEATED, add=["--resume"])


def error_message(exc, prog: str, argv: Sequence[str], parser=None) -> str:
    """The one line for a run error; a lock that ``--take_over_lock`` would take gets the command."""
    text = str(exc)
    if isinstance(exc, LockError) and exc.take_over:
        text += f"; the command: {command(prog, argv, parser, drop=('take_over_lock',), add=[TAKE_OVER_FLAG])}"
    return text


def checkpoint_status(run_dir: Optional[str], arch: Optional[str], prog: str, argv: Sequence[str],
                      epochs: int, suggest_resume: bool = True, parser=None) -> str:
    """Where a stopped run can go on from: its last checkpoint and the exact --resume command, or
    that no checkpoint was written (then the same command starts it over)."""
    last = checkpoint_paths(run_dir, arch)[0] if run_dir and arch else None
    epoch = checkpoint_epoch(last)
    if epoch is None:
        return ("no checkpoint was written" + (f" in {run_dir}" if run_dir else "")
                + (f"; the same command starts the run over: {command(prog, argv, parser, drop=NOT_REPEATED)}"
                   if suggest_resume else ""))
    return (f"the last checkpoint {last} holds epoch {epoch} of {epochs}"
            + (f"; continue with: {resume_command(prog, argv, parser)}" if suggest_resume else ""))
