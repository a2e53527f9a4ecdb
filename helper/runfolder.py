"""A run folder belongs to one run: the rules for a new start, ``--overwrite`` and ``--resume``.

- **Ownership.** A run holds the folder's lock (``helper.run_lock``) while it writes. A new run is
  refused in a folder that holds an earlier run (``--resume``, another ``--tag``, or
  ``--overwrite``); a folder whose earlier start wrote no checkpoint holds nothing worth keeping
  and is reused. ``claim_all`` locks every folder of a run (the students of a group) before it
  changes any: if one cannot be taken, the others are let go and the folders it made removed; a
  start that fails before training (``FolderClaim.abandon``) leaves no folder of a new run behind.
- **Resume.** ``--resume`` compares the result settings (``helper.run_identity``) with the saved
  ``args.json`` and refuses any difference, listing the flags; what may change is exactly
  ``run_identity.NOT_RESULT``. The seed the run started with must be the one derived now, and
  ``metrics.jsonl`` must be intact (only a last line cut short by a kill may be dropped).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import RunFolderError
from .run_identity import differences
from .run_lock import LOCK_NAME, RunLock
from .runlog import read_metrics_file

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
            except FileNotFoundError:
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


@dataclass
class FolderClaim:
    """A run folder this start holds: its lock, whether the start is a new run (not a resume) and
    whether it made the folder."""
    run_dir: str
    lock: RunLock
    fresh: bool
    created: bool

    def release(self):
        self.lock.release()

    def abandon(self):
        """The start failed before it trained: a new run's files (the folder held no run, or
        ``--overwrite`` had deleted it) and the folder it made are removed; a resumed run's folder
        is kept as it is. The lock is released."""
        try:
            if self.fresh and self.lock.held and not holds_run(self.run_dir):
                clear_folder(self.run_dir)
        finally:
            self.lock.release()
        _remove_made_folder(self.run_dir, self.fresh and self.created)


def _remove_made_folder(run_dir: str, made: bool):
    if made:
        try:
            os.rmdir(run_dir)
        except OSError:              # something else put a file there meanwhile: keep the folder
            pass


def claim_all(requests: Sequence[Tuple[str, bool, bool]], *, take_over: bool = False, log=None) -> List[FolderClaim]:
    """Lock the folders ``[(run_dir, resume, overwrite)]`` of one run, then prepare them: stale
    temporaries of a killed writer are removed; a new run is refused where an earlier run lives
    unless ``overwrite`` (then that run's files are deleted, once every folder is locked and
    checked); a resumed run needs its folder. If any folder cannot be taken, those taken are let go
    (and the folders made removed) before the error goes on. Returns the claims."""
    claims: List[FolderClaim] = []
    try:
        for run_dir, resume, _ in requests:
            created = False
            if not resume:
                created = not os.path.isdir(run_dir)
                os.makedirs(run_dir, exist_ok=True)
            elif not os.path.isdir(run_dir):
                raise RunFolderError(f"--resume: nothing to resume: no run folder {run_dir}")
            try:
                lock = RunLock(run_dir).acquire(take_over=take_over, resume=resume)
            except BaseException:
                _remove_made_folder(run_dir, created)
                raise
            claims.append(FolderClaim(run_dir, lock, not resume, created))
            if lock.taken_over and log:
                log(f"==> took over the lock of {run_dir} from {lock.taken_over}")
        for claim, (_, _, overwrite) in zip(claims, requests):
            remove_stale_temporaries(claim.run_dir)
            if claim.fresh:
                check_free(claim.run_dir, overwrite)
        for claim in claims:
            if claim.fresh:
                if holds_run(claim.run_dir) and log:
                    log(f"==> --overwrite: deleting the earlier run's files in {claim.run_dir}")
                clear_folder(claim.run_dir)
    except BaseException:
        for claim in claims:
            claim.abandon()
        raise
    return claims


def claim(run_dir: str, *, resume: bool, overwrite: bool, take_over: bool = False, log=None) -> FolderClaim:
    """``claim_all`` for one folder."""
    return claim_all([(run_dir, resume, overwrite)], take_over=take_over, log=log)[0]


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
                 missing_ok: bool = False, seed: Optional[int] = None) -> bool:
    """Refuse a --resume whose result settings differ from the run's saved ones. When ``run_dir``
    does not exist (the settings changed the folder name), a sibling run with the same
    ``identity`` keys (e.g. model, dataset, trial) is compared instead, so the error lists the flags.
    ``seed``: the seed this start derives, which must be the saved ``seed_used``. A corrupt line in
    the middle of ``metrics.jsonl`` is refused too. Returns False when there is nothing at all to
    resume and ``missing_ok`` (else that is an error)."""
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
    if saved is not None:                        # (a folder from before args.json: nothing to compare)
        _check_saved(parser, run_dir, where, now, saved, seed)
    read_metrics_file(os.path.join(run_dir, "metrics.jsonl"))      # a corrupt line: a one-line error
    return True


def _check_saved(parser, run_dir: str, where: str, now: Dict[str, Any], saved: Dict[str, Any], seed: Optional[int]):
    diff = differences(parser, now, saved)
    if diff:
        raise RunFolderError(f"--resume: the run in {where} was started with other settings: "
                             + "; ".join(diff) + " (resume with the original flags, or start a new run "
                             "without --resume)")
    if where != run_dir:
        raise RunFolderError(f"--resume: nothing to resume in {run_dir}")
    used = saved.get("seed_used")
    if seed is not None and isinstance(used, int) and used != seed:
        raise RunFolderError(f"--resume: the run in {run_dir} was started with seed {used} (seed_used in its "
                             f"args.json); trial {now.get('trial')!r} now has seed {seed} (an earlier version "
                             f"derived seeds of trial labels that are not numbers otherwise): it cannot continue "
                             f"exactly; start it over with --overwrite")
