"""argparse ``type=`` functions for numbers: a flag defined with one of these is validated where it
is defined, and argparse names the flag in the one-line error ("argument --kd_T: expected a finite
number > 0, got '0'"). They live on the ground floor so that the losses' own flags use them too;
``helper.options`` re-exports them for the scripts."""
from __future__ import annotations

import argparse
import math


def _number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_float(text) -> float:
    """Any finite number (nan and inf refused)."""
    return _number(text, float)


def positive_float(text) -> float:
    """A finite number > 0 (a learning rate, a temperature)."""
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def non_negative_float(text) -> float:
    """A finite number >= 0 (a loss weight, a weight decay)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def unit_interval_float(text) -> float:
    """A number in [0, 1) (a momentum: SGD's, CRD's memory banks')."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def integer(text) -> int:
    """Any integer (an index that may count from the end, e.g. ``--hint_layer -2``)."""
    return _number(text, int)


def positive_int(text) -> int:
    """An integer >= 1 (a count or a dimension)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text) -> int:
    """An integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
