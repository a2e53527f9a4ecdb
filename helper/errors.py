"""The errors that stop a run: one line for the user and the exit status.

Everything the library refuses or cannot do raises a ``RunError`` (or a subclass that names the
part of the run it comes from); the scripts' ``main`` catches it once, prints
``<script>: error: <message>`` and returns ``code``: 2 when the run could not start as asked (a
flag, a folder, a teacher, a checkpoint to resume), 1 when it failed while running (a non-finite
loss, a full disk).
"""
from __future__ import annotations

import os


class RunError(Exception):
    """One line saying why the run stops, and the exit status ``main`` returns."""

    code = 2

    def __init__(self, message, code=None):
        super().__init__(str(message))
        if code is not None:
            self.code = code


class RunFolderError(RunError, ValueError):
    """Why a run cannot use its folder, and what to do."""


class ResumeError(RunError, ValueError):
    """Why ``--resume`` cannot continue a run."""


class NonFiniteLoss(RunError, RuntimeError):
    """A training loss was NaN or infinite; the message names the epoch and step."""

    code = 1


def named_os_error(exc: OSError, path: str) -> OSError:
    """``exc`` as an OSError of the same kind that names ``path``: a failed write to an open file,
    or to a temporary file, names no file or the wrong one."""
    if exc.errno is None:
        return OSError(f"{path}: {exc}")
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)   # the errno's subclass
