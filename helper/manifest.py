"""The teacher manifest: one JSON file under the save folder listing every finished teacher.

train_teacher.py adds an entry per finished run; ``setting.py`` reads the file and exposes
CA-MKD's ``teacher_model_path_dict`` and per-data-set name lists, so that the step from "trained
three seeds" to "distil from them" needs no hand-pasted paths. Entries are named like CA-MKD's
``setting.py``: ``<dataset>-<model>-<trial>`` (``-<tag>`` added for a teacher trained with
``--tag``). Paths are stored relative to the manifest's folder, so a save folder can be moved as a
whole.

A name belongs to one run folder: an entry is replaced only by the same folder's teacher (a
resumed or ``--overwrite`` run, a re-fetched checkpoint); another folder's teacher under that name
(the same trial trained with another ``--seed``, say) is refused in one line, and
``train_teacher.py`` says so before it trains (``name_problem``). While a finished teacher is
trained on (``--resume --epochs N``) its entry is taken out and recorded again when it finishes,
so the manifest only ever lists finished teachers with their true figures.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Dict, List, Optional

from .checkpoint import atomic_write_text
from .errors import RunError

MANIFEST_NAME = "manifest.json"


class ManifestError(RunError, ValueError):
    """One-line problem with the manifest or one of its entries."""


def manifest_path(save_dir: str) -> str:
    return os.path.join(save_dir, MANIFEST_NAME)


def entry_name(dataset: str, model: str, trial, tag: str = "") -> str:
    return f"{dataset}-{model}-{trial}" + (f"-{tag}" if tag else "")


def _folder_of(path: str, entry: dict) -> str:
    """The real folder of an entry's checkpoint (its run folder)."""
    return os.path.realpath(os.path.dirname(resolve_path(path, entry)))


def name_problem(teachers: Dict[str, dict], path: str, name: str, run_dir: str) -> Optional[str]:
    """Why the teacher of ``run_dir`` cannot be recorded as ``name`` (None if it can): the name
    belongs to another folder's teacher."""
    entry = teachers.get(name)
    if entry is None or _folder_of(path, entry) == os.path.realpath(run_dir):
        return None
    return (f"teacher manifest {path}: entry {name!r} already names the teacher in {_folder_of(path, entry)}; "
            f"the teacher of {run_dir} would replace it under that name")


@contextlib.contextmanager
def _locked(path: str):
    """Serialise read-modify-write of the manifest between concurrent teacher runs."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # Windows: no advisory locks; concurrent teacher runs are rare there
            pass
        yield


def read_manifest(path: str) -> Dict[str, dict]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"teacher manifest {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("teachers", {}), dict):
        raise ManifestError(f"teacher manifest {path} is not in the expected format "
                            "({'teachers': {name: entry}})")
    teachers = data.get("teachers", {})
    for name, entry in teachers.items():
        check_entry(name, entry, f"teacher manifest {path}")
    return teachers


def check_entry(name: str, entry, where: str):
    """An entry is a dict whose ``path`` is a non-empty string; else a one-line ManifestError."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: entry {name!r} is a {type(entry).__name__}, expected "
                            f"{{'path': ..., 'model': ..., 'dataset': ...}}")
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        got = "no 'path'" if "path" not in entry else f"'path' {path!r}"
        raise ManifestError(f"{where}: entry {name!r} has {got}; expected the checkpoint's path as a string")


def _write(path: str, teachers: Dict[str, dict]):
    atomic_write_text(path, json.dumps({"teachers": teachers}, indent=2, sort_keys=True) + "\n")


def add_teacher(path: str, *, model: str, dataset: str, trial, checkpoint: str, best_acc: float,
                last_acc: Optional[float] = None, num_classes: Optional[int] = None,
                extra: Optional[dict] = None, tag: str = "") -> str:
    """Record a finished teacher; an entry with the same name is replaced only by a checkpoint of
    the same folder (else a one-line ``ManifestError``, see the module docstring). Returns the name."""
    name = entry_name(dataset, model, trial, tag)
    folder = os.path.dirname(os.path.abspath(path))
    entry = {"model": model, "dataset": dataset, "trial": str(trial),
             "path": os.path.relpath(os.path.abspath(checkpoint), folder),
             "best_acc": best_acc, "last_acc": last_acc, "num_classes": num_classes,
             "recorded": time.strftime("%Y-%m-%d %H:%M:%S"), **({"tag": tag} if tag else {}), **(extra or {})}
    with _locked(path):
        teachers = read_manifest(path)
        problem = name_problem(teachers, path, name, os.path.dirname(os.path.abspath(checkpoint)))
        if problem:
            raise ManifestError(problem)
        teachers[name] = entry
        _write(path, teachers)
    return name


def remove_teacher(path: str, name: str, run_dir: str) -> bool:
    """Take the entry ``name`` out if it is the teacher of ``run_dir`` (that teacher trains on);
    returns whether it was there."""
    if not os.path.exists(path):
        return False
    with _locked(path):
        teachers = read_manifest(path)
        entry = teachers.get(name)
        if entry is None or _folder_of(path, entry) != os.path.realpath(run_dir):
            return False
        del teachers[name]
        _write(path, teachers)
    return True


def resolve_path(path: str, entry: dict) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.normpath(os.path.join(folder, entry["path"]))


def teacher_names(teachers: Dict[str, dict], dataset: str) -> List[str]:
    """Names registered for a data set, in a stable order: by model, then trial."""
    def key(name):
        e = teachers[name]
        t = str(e.get("trial", ""))
        return (e.get("model", ""), int(t) if t.lstrip("-").isdigit() else 10**9, t)
    return sorted((n for n, e in teachers.items() if e.get("dataset") == dataset), key=key)
