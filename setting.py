"""Teachers available for distillation, as CA-MKD's ``setting.py`` exposes them.

The lists are filled from the teacher manifest that train_teacher.py writes
(``<save_dir>/manifest.json``; the save folder is ``./save`` or ``$MTKD_SAVE_DIR``). Checkpoints
trained elsewhere can be added by hand to ``MANUAL_TEACHERS`` below; a manual entry wins over a
manifest entry of the same name.

    from setting import teacher_model_path_dict, cifar100_teacher_model_name
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List

from helper.manifest import ManifestError, check_entry, manifest_path, read_manifest, resolve_path, teacher_names

SAVE_DIR = os.environ.get("MTKD_SAVE_DIR", "./save")

# Add checkpoints trained elsewhere, e.g.
#   'cifar100-resnet32x4-0': {'path': '/data/ckpt/resnet32x4_best.pth',
#                             'model': 'resnet32x4', 'dataset': 'cifar100', 'trial': '0'},
# Relative paths are taken relative to this file's folder.
MANUAL_TEACHERS: Dict[str, dict] = {}


def available_teachers(save_dir: str = SAVE_DIR) -> Dict[str, dict]:
    """All known teachers: name -> entry with an absolute ``path`` (manifest, then manual ones)."""
    path = manifest_path(save_dir)
    teachers = {name: dict(e, path=resolve_path(path, e)) for name, e in read_manifest(path).items()}
    here = os.path.dirname(os.path.abspath(__file__))
    for name, entry in MANUAL_TEACHERS.items():
        check_entry(name, entry, "setting.py MANUAL_TEACHERS")
        teachers[name] = dict(entry, path=os.path.normpath(os.path.join(here, entry["path"])),
                              source="setting.py")
    return teachers


def teacher_model_name(dataset: str, save_dir: str = SAVE_DIR) -> List[str]:
    return teacher_names(available_teachers(save_dir), dataset)


def checked_teacher_path(name: str, save_dir: str = SAVE_DIR) -> str:
    """The checkpoint path of a named teacher; a one-line ManifestError when it is unknown or its
    file is gone (never a silent skip)."""
    teachers = available_teachers(save_dir)
    if name not in teachers:
        known = ", ".join(sorted(teachers)) or "none"
        raise ManifestError(f"teacher {name!r} is not in {manifest_path(save_dir)} or setting.py "
                            f"(known: {known})")
    path = teachers[name]["path"]
    if not os.path.isfile(path):
        where = teachers[name].get("source", manifest_path(save_dir))
        raise ManifestError(f"teacher {name!r} listed in {where} points to {path}, which no longer exists")
    return path


def _load_module_level():
    try:
        teachers = available_teachers()
    except ManifestError as exc:  # importing setting must not fail; using a teacher will say why
        print(f"setting.py: warning: {exc}", file=sys.stderr)
        teachers = {}
    paths = {name: e["path"] for name, e in teachers.items()}
    by_dataset = {d: teacher_names(teachers, d) for d in sorted({e.get("dataset") for e in teachers.values()})}
    return paths, by_dataset


teacher_model_path_dict, teacher_names_by_dataset = _load_module_level()
cifar100_teacher_model_name = teacher_names_by_dataset.get("cifar100", [])
cifar10_teacher_model_name = teacher_names_by_dataset.get("cifar10", [])
digits_teacher_model_name = teacher_names_by_dataset.get("digits", [])
