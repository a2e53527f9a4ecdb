"""The defaults of every loss's and strategy's flags, from the flags themselves.

Each registered class declares its flags once (``add_arguments``); ``train_student.py`` adds them
to its parser, and code that runs without that parser (``ensemble_weights``, a user's own loop,
tests) gets the same defaults from ``default_options``. There is no second copy of a default.
"""
from __future__ import annotations

import argparse

from .registry import DISTILLERS, ENSEMBLES


def add_arguments(parser: argparse.ArgumentParser):
    """Add the flags of every registered loss, then of every ensemble strategy."""
    for cls in dict.fromkeys(list(DISTILLERS.values()) + list(ENSEMBLES.values())):
        cls.add_arguments(parser)


def option_names() -> frozenset:
    """The names (``dest``) of every loss's and strategy's flags: what a distiller or strategy of a
    run is given (``BuildContext.opt``), as ``default_options`` gives them outside a run."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return frozenset(a.dest for a in parser._actions)


def default_options(**overrides) -> argparse.Namespace:
    """The losses' and strategies' options at their command-line defaults, with ``overrides``
    (flag names as attributes, e.g. ``kd_T=2.0``); a misspelt name is a ``TypeError``."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    opt = parser.parse_args([])
    unknown = sorted(set(overrides) - set(vars(opt)))
    if unknown:
        raise TypeError(f"default_options: no such option(s): {', '.join(unknown)}")
    vars(opt).update(overrides)
    return opt
