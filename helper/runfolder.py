"""A run folder belongs to one run: the rules for a new start, ``--overwrite`` and ``--resume``.

- **Ownership.** A run holds the folder's lock (``helper.run_lock``) while it writes. A new run is
  refused in a folder that holds an earlier run (``--resume``, another ``--tag``, or
  ``--overwrite``); a folder whose earlier start wrote no checkpoint holds nothing worth keeping
  and is reused.
- **Resume.** ``--resume`` compares the result settings (``helper.run_identity``) with the saved
  ``args.json`` and refuses any difference, listing the flags; what may change is exactly
  ``run_identity.NOT_RESULT``.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Optional, Sequence

from .errors import RunFolderError
from .run_identity import differences
from .run_lock import LOCK_NAME, RunLock

# files that mean "a run lives here" (a start that wrote none of these left nothing worth keeping)
RUN_CONTENT = ("*.pth", "summary.json")
STALE_TEMPORARIES = (".tmp-*.pth", ".*.tmp", "*.tmp")


def holds_run(run_dir: str) -> bool:
    return any(glob.glob(os.path.join(glob.escape(run_dir), p)) for p in RUN_CONTENT)


def last_logged_epoch(run_dir: str) -> Optional[int]:
    """The last complete line's epoch in metrics.jsonl (a partial last line is ignored)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def describe_run(run_dir: str) -> str:
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        return "a finished run"
    epoch = last_logged_epoch(run_dir)
    return "an interrupted run" + (f" (logged up to epoch {epoch})" if epoch else "")


def remove_stale_temporaries(run_dir: str):
    """Temporary files of a writer killed mid-write (kill -9); only called while holding the lock."""
    for pattern in STALE_TEMPORARIES:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            try:
                os.remove(path)
            except OSError:
                pass


def clear_folder(run_dir: str):
    """Remove a run's files (not sub-folders, not the lock)."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name != LOCK_NAME and (os.path.isfile(path) or os.path.islink(path)):
            os.remove(path)


def check_free(run_dir: str, overwrite: bool):
    """A new run may not start where an earlier run lives (read-only: every process of a
    distributed run checks it, so all refuse together)."""
    if not overwrite and os.path.isdir(run_dir) and holds_run(run_dir):
        raise RunFolderError(
            f"run folder {run_dir} already holds {describe_run(run_dir)}; continue it with "
            f"--resume, start a separate run with --tag NAME, or replace it with --overwrite")


def claim(run_dir: str, *, resume: bool, overwrite: bool, log=None) -> RunLock:
    """Lock ``run_dir`` for this run. A fresh run is refused where an earlier run lives unless
    ``overwrite`` (then that run's files are deleted); a resumed run needs the folder to exist.
    Stale temporaries of a killed writer are removed. Returns the held lock."""
    if not resume:
        os.makedirs(run_dir, exist_ok=True)
    elif not os.path.isdir(run_dir):
        raise RunFolderError(f"--resume: nothing to resume: no run folder {run_dir}")
    lock = RunLock(run_dir).acquire()
    try:
        remove_stale_temporaries(run_dir)
        if not resume:
            check_free(run_dir, overwrite)
            if holds_run(run_dir):
                if log:
                    log(f"==> --overwrite: deleting the earlier run's files in {run_dir}")
            clear_folder(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


# -- resume ---------------------------------------------------------------------------------------
def read_saved_args(run_dir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(run_dir, "args.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"--resume: cannot read {path} ({exc}); it is needed to check that the "
                             f"run continues with its own settings") from None
    if not isinstance(saved, dict):
        raise RunFolderError(f"--resume: {path} is not a JSON object of flags")
    return saved


def check_resume(parser, run_dir: str, now: Dict[str, Any], identity: Sequence[str] = (),
                 missing_ok: bool = False) -> bool:
    """Refuse a --resume whose result settings differ from the run's saved ones. When ``run_dir``
    does not exist (the settings changed the folder name), a sibling run with the same
    ``identity`` keys (e.g. model, dataset, trial) is compared instead, so the error lists the flags.
    Returns False when there is nothing at all to resume and ``missing_ok`` (else that is an error)."""
    saved = read_saved_args(run_dir) if os.path.isdir(run_dir) else None
    where = run_dir
    if saved is None and not os.path.isdir(run_dir):
        parent = os.path.dirname(run_dir)
        best = None
        for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
            folder = os.path.join(parent, name)
            try:
                cand = read_saved_args(folder) if os.path.isdir(folder) else None
            except RunFolderError:
                continue
            if cand and all(cand.get(k) == now.get(k) for k in identity):
                mtime = os.path.getmtime(os.path.join(folder, "args.json"))
                if best is None or mtime > best[0]:
                    best = (mtime, folder, cand)
        if best is None:
            if missing_ok:
                return False
            raise RunFolderError(f"--resume: nothing to resume: no run folder {run_dir} "
                                 f"(run without --resume to start it)")
        _, where, saved = best
    if saved is None:
        return True                              # a folder from before args.json: nothing to compare
    diff = differences(parser, now, saved)
    if diff:
        raise RunFolderError(f"--resume: the run in {where} was started with other settings: "
                             + "; ".join(diff) + " (resume with the original flags, or start a new run "
                             "without --resume)")
    if where != run_dir:
        raise RunFolderError(f"--resume: nothing to resume in {run_dir}")
    return True
