"""Registries: every ``--distill`` loss, ``--ensemble_method`` strategy and teacher
classification loss is one file that registers itself with a decorator. The scripts build their
``choices=`` from these dicts, so ``--help`` is always true."""
from __future__ import annotations

from typing import Callable, Dict

DISTILLERS: Dict[str, type] = {}
ENSEMBLES: Dict[str, type] = {}
CLASSIFICATION_LOSSES: Dict[str, Callable] = {}


def _register(table: Dict, kind: str, names):
    def wrap(obj):
        for name in names:
            if name in table:
                raise ValueError(f"{kind} {name!r} is registered twice")
            table[name] = obj
        if not getattr(obj, "name", None) and isinstance(obj, type):
            obj.name = names[0]
        return obj
    return wrap


def register_distiller(name: str, *aliases: str):
    """Register a ``Distiller`` subclass under ``--distill name`` (and aliases)."""
    return _register(DISTILLERS, "distiller", (name,) + aliases)


def register_ensemble(name: str, *aliases: str):
    """Register an ``EnsembleStrategy`` subclass under ``--ensemble_method name``."""
    return _register(ENSEMBLES, "ensemble strategy", (name,) + aliases)


def register_classification_loss(name: str):
    """Register ``fn(logits, labels) -> per-sample loss [B]`` for ``train_teacher.py --loss``."""
    return _register(CLASSIFICATION_LOSSES, "classification loss", (name,))
