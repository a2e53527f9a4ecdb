"""The run configuration: every flag a run was started with plus every value derived from them,
resolved once and then read-only.

The scripts parse their flags (``argparse``; the parser is the one source of every default),
resolve them in one function (``helper.student_config.resolve`` / ``helper.teacher_config.resolve``)
and freeze the result into a ``RunConfig``. From there on nothing writes to it: the run builder,
the trainer, the objective, every loss and strategy read it (or a narrow view of it), and
``args.json`` is written from it. A value that depends on another is computed during resolution
and the new configuration made with ``replace``; an attempt to set an attribute afterwards is a
``FrozenConfigError``.

Reads look like an ``argparse.Namespace`` (``config.kd_T``), so a distiller written against
RepDistiller-style ``opt`` objects reads a ``RunConfig`` unchanged. Lists become tuples (so a
value cannot be edited in place either); ``as_dict`` gives a plain copy for JSON.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, Mapping


class FrozenConfigError(AttributeError):
    """Something tried to change a resolved run configuration."""


def _frozen(value):
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict({k: _frozen(v) for k, v in value.items()})
    return value


def _thawed(value):
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    return value


class FrozenDict(Mapping):
    """A read-only mapping (the per-term dicts of ``objective_terms``)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping):
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name, value):
        raise FrozenConfigError(f"the run configuration is read-only (tried to set {name!r})")

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self) == dict(other)

    __hash__ = None


class RunConfig:
    """A resolved, read-only run configuration with attribute access (see the module docstring)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", {str(k): _frozen(v) for k, v in dict(values).items()})

    @classmethod
    def from_namespace(cls, namespace, **changes) -> "RunConfig":
        """Freeze a parsed ``argparse.Namespace`` (with ``changes`` applied first)."""
        return cls(dict(vars(namespace), **changes))

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the run configuration has no setting {name!r}") from None

    def __setattr__(self, name, value):
        raise FrozenConfigError(f"the run configuration is resolved and read-only: cannot set {name!r} "
                                f"(derive the value during resolution, or make a new configuration with "
                                f"replace())")

    def __delattr__(self, name):
        raise FrozenConfigError(f"the run configuration is resolved and read-only: cannot delete {name!r}")

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __iter__(self):
        return iter(self._values)

    def __eq__(self, other):
        return isinstance(other, RunConfig) and self._values == other._values

    __hash__ = None

    def __repr__(self) -> str:
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in sorted(self._values.items())) + ")"

    def __reduce__(self):          # picklable (worker processes), still frozen on the other side
        return (RunConfig, (self.as_dict(),))

    def replace(self, **changes) -> "RunConfig":
        """A new configuration with ``changes`` (this one is unchanged)."""
        return RunConfig(dict(self._values, **changes))

    def as_dict(self) -> Dict[str, Any]:
        """A plain, mutable copy (lists and dicts) of every setting, e.g. for ``args.json``."""
        return {k: _thawed(v) for k, v in self._values.items()}

    def subset(self, names: Iterable[str]) -> "RunConfig":
        """The settings in ``names`` only (a narrow view: e.g. the options of the losses)."""
        return RunConfig({k: self._values[k] for k in names if k in self._values})
