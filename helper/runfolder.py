"""A run folder belongs to one run: its name, its lock, and the rules for --resume and --overwrite.

- **Identity.** Everything that changes a run's result is a *result setting*: every flag of the
  script's parser except those in ``NOT_RESULT`` (flags about where, how fast or how verbosely a
  run goes), plus what is not a flag (the teachers' checkpoint contents). The folder name shows the
  result flags whose value differs from the parser's default, and a student's name ends with a short
  hash of all its result settings, so two runs that differ in anything that changes the result never
  share a folder.
- **Ownership.** A run holds ``<run folder>/.lock`` (its pid and host) while it writes; a lock whose
  process is gone (same host) is stale and taken over. A new run is refused in a folder that holds
  an earlier run (``--resume``, another ``--tag``, or ``--overwrite``); a folder whose earlier start
  wrote no checkpoint holds nothing worth keeping and is reused.
- **Resume.** ``--resume`` compares the result settings with the saved ``args.json`` and refuses
  any difference, listing the flags; what may change is exactly ``NOT_RESULT``.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shlex
import socket
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

# The ONE list of flags that do not change a run's result: they may differ between a run and its
# --resume, they are not in the folder name or the configuration hash. ``epochs`` is here because
# a finished run may be extended with --resume --epochs N. Execution choices (device, amp,
# channels_last, fused teachers, compile, deterministic kernels) change floating-point details
# only; they follow the device, which may change on resume.
NOT_RESULT = frozenset({
    "help", "print_freq", "save_freq", "quiet", "resume", "overwrite", "save_dir", "device", "num_workers",
    "epochs", "data_folder", "download", "verify", "skip_validation", "tag", "amp", "channels_last",
    "fuse_teachers", "compile", "deterministic", "command", "backend_mode", "trials", "trial_list",
    # teachers are identified by what their checkpoints hold (teacher_digests), not by name or path
    "teachers", "path_t", "model_t", "teacher_paths", "teacher_names", "teacher_acc", "ensemble_acc",
    # the students trained alongside (train_student.py's groups): a student in a group is
    # bit-identical to its solo run, so the group is no part of its configuration
    "group",
})

LOCK_NAME = ".lock"
# files that mean "a run lives here" (a start that wrote none of these left nothing worth keeping)
RUN_CONTENT = ("*.pth", "summary.json")
STALE_TEMPORARIES = (".tmp-*.pth", ".*.tmp", "*.tmp")


class RunFolderError(ValueError):
    """One line saying why a run cannot use its folder, and what to do."""


# -- names ----------------------------------------------------------------------------------------
def folder_safe(text: str) -> str:
    """``text`` usable inside a folder name on any OS: ':' (and anything but letters, digits and
    - _ . = ~ , +) becomes '~', CA-MKD's Windows separator."""
    return "".join(ch if ch.isalnum() or ch in "-_.=~,+" else "~" for ch in str(text))


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _plain(text: str) -> str:
    """'32.0' -> '32' in messages (numbers are compared as floats)."""
    return text[:-2] if text.endswith(".0") and text[:-2].lstrip("-").isdigit() else text


def parser_defaults(parser) -> Dict[str, Any]:
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def option_name(parser, dest: str) -> str:
    """How a user types ``dest``: its first long option (``--kd_T``), else its short one."""
    for a in parser._actions:
        if a.dest == dest and a.option_strings:
            longs = [o for o in a.option_strings if o.startswith("--")]
            return (longs or a.option_strings)[0]
    return dest


def _norm(value):
    """Numbers as floats (``--kd_T 4`` typed or left at its default 4 is one setting)."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def result_settings(parser, args, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every setting that changes the result: the parser's flags minus ``NOT_RESULT`` (their
    resolved values, as args.json stores them), plus ``extra`` (e.g. the teachers' digests)."""
    from .runlog import to_jsonable
    out = {d: getattr(args, d) for d in parser_defaults(parser) if d not in NOT_RESULT and hasattr(args, d)}
    out.update(extra or {})
    return _norm(to_jsonable(out))


def config_hash(settings: Dict[str, Any]) -> str:
    """8 hex digits of SHA-256 over the result settings (stable across runs and machines)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def changed_flags(parser, args, skip: Iterable[str] = (), defaults: Optional[Dict[str, Any]] = None) -> List[str]:
    """``name~value`` (``name`` alone for a switch turned on) for each result flag whose value
    differs from the parser's default (``defaults`` overrides a default resolved later, e.g. the
    model's learning rate), in the parser's order."""
    skip = set(skip) | NOT_RESULT
    base = dict(parser_defaults(parser), **(defaults or {}))
    parts = []
    for dest, default in base.items():
        if dest in skip or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value == default or (isinstance(value, list) and _show(value) == _show(default)):
            continue
        parts.append(dest if value is True else f"{dest}~{_show(value)}")
    return [folder_safe(p) for p in parts]


MAX_NAME = 200


def bounded(name: str, settings: Dict[str, Any]) -> str:
    """Folder names stay under file-system limits: a long one is cut and the hash keeps it unique."""
    if len(name) <= MAX_NAME:
        return name
    return name[:MAX_NAME - 11] + "_h" + config_hash(settings)


def file_digest(path: str) -> str:
    """16 hex digits of SHA-256 of a file's bytes (a teacher is what its checkpoint holds)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# -- the lock -------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``<run_dir>/.lock``, created exclusively, holding ``pid host``."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def holder(self) -> Tuple[Optional[int], str]:
        try:
            with open(self.path) as f:
                pid, _, host = f.read().strip().partition(" ")
            return int(pid), host
        except (OSError, ValueError):
            return None, ""

    def acquire(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                pid, host = self.holder()
                if pid is None or host != socket.gethostname():
                    if pid is None and not os.path.exists(self.path):
                        continue                     # released in between: try again
                    raise RunFolderError(
                        f"run folder {self.run_dir} is locked by "
                        + (f"process {pid} on {host}" if pid is not None else "an unreadable lock file")
                        + f"; if no run is writing there any more, delete {self.path}")
                if _pid_alive(pid):
                    raise RunFolderError(f"run folder {self.run_dir} is in use by process {pid} (a run is "
                                         f"writing there); wait for it to end, or give this run another --tag")
                try:                                 # stale: its process is gone (kill -9, crash)
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        raise RunFolderError(f"run folder {self.run_dir}: cannot take the lock {self.path}")

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except OSError:
                pass


# -- ownership ------------------------------------------------------------------------------------
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


EXTRA_NAMES = {"teacher_digests": "the teachers' checkpoints", "teacher_archs": "the teachers' architectures"}


def differences(parser, now: Dict[str, Any], saved: Dict[str, Any]) -> List[str]:
    """``--flag saved -> now`` for every result setting that differs (a flag newer than the saved
    run counts only if it is not at its default)."""
    defaults = parser_defaults(parser)
    out = []
    for key, value in now.items():
        if key not in saved:
            if key in defaults and json.dumps(value) == json.dumps(_norm(defaults[key])):
                continue
            old = "(not set)"
        elif json.dumps(_norm(saved[key]), sort_keys=True) == json.dumps(value, sort_keys=True):
            continue
        else:
            old = _show(saved[key])
        name = EXTRA_NAMES.get(key) or option_name(parser, key)
        out.append(f"{name} {_plain(old)} -> {_plain(_show(value))}")
    return out


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


def record_start(run_dir: str, info: Dict[str, Any]) -> Dict[str, Any]:
    """run_info.json keeps the first start's information and a ``history`` of every start
    (command, time, commit, device), so a resume never hides the command that began the run."""
    entry = {k: info.get(k) for k in ("command", "started", "git_commit", "device", "device_name")
             if info.get(k) is not None}
    path = os.path.join(run_dir, "run_info.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict):
        return dict(info, history=[entry])
    history = old.get("history") or [{k: old.get(k) for k in entry if old.get(k) is not None}]
    return dict(old, history=list(history) + [entry])


def disk_message(exc: OSError) -> str:
    """One line for a failed file operation: which file, and what the system said."""
    where = f" {exc.filename}:" if getattr(exc, "filename", None) else ""
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " (the disk is full: free space, then continue with --resume)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (choose a writable --save_dir)"
    return f"file system error:{where} {exc.strerror or exc}{hint}"


# -- messages for a run that stops ----------------------------------------------------------------
def checkpoint_epoch(path: str) -> Optional[int]:
    """The epoch a run checkpoint holds, or None when there is none (or it cannot be read)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        import torch
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
    last = os.path.join(run_dir, f"{arch}_last.pth") if run_dir and arch else None
    epoch = checkpoint_epoch(last)
    if epoch is None:
        return ("no checkpoint was written" + (f" in {run_dir}" if run_dir else "")
                + ("; the same command starts the run over" if suggest_resume else ""))
    return (f"the last checkpoint {last} holds epoch {epoch} of {epochs}"
            + (f"; continue with: {resume_command(prog, argv)}" if suggest_resume else ""))
