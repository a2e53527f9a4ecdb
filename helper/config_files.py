"""Configuration files for ``train_student.py`` and ``train_teacher.py``: ``--config FILE.yaml|.json``.

    python train_student.py --config exp.yaml --trial 1            # the file's flags, then the command line's
    python train_student.py --config save/students/<run>/args.json --tag again    # repeat a finished run

A file is a mapping of flags to values, each key named as the flag's ``dest`` (``kd_T``, ``path_t``,
``gamma``) or as an option without its dashes (``path-t``, ``r``, ``logit-stand``)::

    model_s: resnet8x4
    path_t: [download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth]
    distill: kd
    logit_stand: true
    base-temp: 2
    lr_decay_epochs: [150, 180, 210]      # or "150,180,210", as on the command line

The file becomes command-line tokens placed before the user's (``--kd_T=2`` ...), so argparse does
the types and the checks and the command line wins; a switch is ``true``/``false`` (``false`` of a
``--no-x`` flag gives ``--no-x``), a list is the values of a ``nargs='+'`` flag or, for a flag that
takes a comma-separated string, joined with commas; ``null`` leaves the flag at its default. An
unknown key, a value of the wrong kind, or a value the flag's own check refuses is one line naming
the file, the key and what was expected, before anything runs. Several ``--config`` apply in order.

A finished run's ``args.json`` is a configuration too: it records the flags the run was given
(``given_flags``: the file's and the command line's values that differ from the parser's defaults),
and those are what is read, so the same run folder name follows and, with ``--tag``, a run
bit-identical on the CPU. Everything else in a record is derived (the resolved configuration,
``objective``, ``seed_used``, ``teacher_digests``, ...) and ignored, as are ``resume``,
``overwrite`` and ``take_over_lock``, which say how that start went, not what the run is.

Files are data, never code: YAML is read with ``yaml.safe_load`` (a ``!!python/object`` tag is
refused in one line), JSON with ``json``.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

YAML_SUFFIXES = (".yaml", ".yml")
# what a run's args.json holds besides the resolved flags: the flags as given, and derived values
RECORD_FLAGS = "given_flags"
RECORD_MARKERS = ("seed_used", "config_hash", "backend_mode")
# how one start of a recorded run went, not what the run is: never read from a record
RECORD_START_ONLY = ("resume", "overwrite", "take_over_lock")
# flags never recorded in given_flags: the files themselves (their values are in the record)
NOT_RECORDED = ("config",)


class ConfigFileError(ValueError):
    """A configuration file that cannot be used; the message is one line naming the file (and key)."""


def add_argument(parser: argparse.ArgumentParser):
    parser.add_argument("--config", action="append", default=None, metavar="FILE",
                        help="read flags from a YAML or JSON file (keys named as the flags, e.g. kd_T: 2; "
                             "flags on the command line win; a finished run's args.json repeats that run; "
                             "several apply in order)")


# -- reading ---------------------------------------------------------------------------------------
def _yaml_problem(exc) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if "constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip(" '\"")
        return (f"{where}the tag {tag} is not allowed (configuration files are data: plain YAML values only, "
                f"read with yaml.safe_load)")
    return f"not valid YAML ({where}{problem})"


def read_file(path: str) -> Dict[str, Any]:
    """The mapping a YAML (``yaml.safe_load``) or JSON file holds; ``ConfigFileError`` otherwise."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in YAML_SUFFIXES + (".json",):
        raise ConfigFileError(f"{path}: expected a .yaml, .yml or .json configuration file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a text file (expected UTF-8 YAML or JSON)") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                                  f"{exc.msg})") from None
    else:
        import yaml        # here: only a run that reads a YAML file needs PyYAML
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigFileError(f"{path}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of flag names to values, got a "
                              f"{type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigFileError(f"{path}: key {bad[0]!r} is not a flag name (keys are strings such as kd_T)")
    return data


def is_record(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is a run's ``args.json`` (it holds what only a run writes)."""
    return RECORD_FLAGS in data or any(k in data for k in RECORD_MARKERS)


def settings_of(data: Mapping[str, Any], path: str, prog: str) -> Dict[str, Any]:
    """The flags a file sets: a plain file's mapping, or a record's ``given_flags`` (less how that
    start went). A record from before runs kept their given flags is refused with its command."""
    if not is_record(data):
        if "config" in data:
            raise ConfigFileError(f"{path}: key config: a configuration file cannot name another (give "
                                  f"several --config, applied in order)")
        return dict(data)
    given = data.get(RECORD_FLAGS)
    if given is None:
        command = data.get("command")
        again = f"; repeat it with its command: python {command}" if isinstance(command, str) and command else ""
        raise ConfigFileError(f"{path}: this args.json was written before runs recorded the flags they were "
                              f"given ({RECORD_FLAGS}), so it cannot be read as a configuration{again}")
    if not isinstance(given, dict):
        raise ConfigFileError(f"{path}: key {RECORD_FLAGS}: expected a mapping of flags to values")
    return {k: v for k, v in given.items() if k not in RECORD_START_ONLY}


# -- a mapping as command-line tokens ---------------------------------------------------------------
def keys_of(parser) -> Dict[str, Tuple[argparse.Action, bool]]:
    """Every name a key may use for a flag: its dest, and its option strings without dashes
    (``True`` beside the action: a switch named by its option, ``no-verify: true``, is given)."""
    out = {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        out.setdefault(action.dest, (action, False))
        for option in action.option_strings:
            if isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-"):
                continue            # fuse_teachers: false is --no-fuse_teachers
            name = option.lstrip("-")
            if name != action.dest:
                out.setdefault(name, (action, True))
    return out


def option_of(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs or action.option_strings)[0]


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _kind(value) -> str:
    return {bool: "true/false", list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _checked(parser, action, strings: List[str], where: str):
    """``strings`` through the flag's own type and choices (argparse's conversion), or one line."""
    try:
        parser._get_values(action, list(strings))      # the conversion and check argparse applies
    except argparse.ArgumentError as exc:
        raise ConfigFileError(f"{where}: {exc}") from None


def tokens_for(parser, action: argparse.Action, value, where: str,
               words: Sequence[str] = (), by_option: bool = False) -> List[str]:
    """The command-line tokens that give ``action`` the file's ``value`` (empty for its default);
    ``words`` are the extra values a switch accepts (``logit_stand: both``); ``by_option``: the key
    named a switch's option (``no-verify: true`` gives ``--no-verify``), not its dest."""
    flag = option_of(action)
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false for {flag}, got {value!r}")
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if isinstance(value, str) and value in words:
            return [flag, value]
        if not isinstance(value, bool):
            extra = "".join(f" or {w}" for w in words)
            raise ConfigFileError(f"{where}: expected true or false{extra} for the switch {flag}, got {value!r}")
        give = value if by_option else value != action.default
        return [flag] if give else []
    if not isinstance(action, argparse._StoreAction):
        raise ConfigFileError(f"{where}: {flag} is not a setting a file can hold")
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not all(_scalar(v) for v in items):
            raise ConfigFileError(f"{where}: expected a value or a list of values for {flag}, got {value!r}")
        strings = [str(v) for v in items]
        if not strings:
            return []
        _checked(parser, action, strings, where)
        return [flag, *strings]
    if isinstance(value, list) and action.type in (None, str) and all(_scalar(v) for v in value):
        text = ",".join(str(v) for v in value)             # --lr_decay_epochs 150,180,210, --trials 0,1,2
    elif _scalar(value):
        text = str(value)
    else:
        raise ConfigFileError(f"{where}: expected one value for {flag}, got {_kind(value)} ({value!r})")
    _checked(parser, action, [text], where)
    return [f"{flag}={text}"]                               # '=': a value may start with '-'


def settings_argv(parser, settings: Mapping[str, Any], source: str,
                  words: Optional[Mapping[str, Sequence[str]]] = None) -> List[str]:
    """``settings`` (key -> value) as command-line tokens, each key checked; ``source`` names the
    file in the messages."""
    keys = keys_of(parser)
    words = words or {}
    argv, seen = [], {}
    for key, value in settings.items():
        name = key.lstrip("-")
        if name not in keys:
            close = difflib.get_close_matches(name, list(keys), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigFileError(f"{source}: unknown key {key!r}: not a flag of {parser.prog}{hint}")
        action, by_option = keys[name]
        if action.dest in seen:
            raise ConfigFileError(f"{source}: keys {seen[action.dest]!r} and {key!r} both set {option_of(action)}")
        seen[action.dest] = key
        argv += tokens_for(parser, action, value, f"{source}, key {key}", words.get(action.dest, ()), by_option)
    return argv


# -- --config on a command line -------------------------------------------------------------------
def files_argv(parser, files: Iterable[str], words: Optional[Mapping[str, Sequence[str]]] = None) -> List[str]:
    """The tokens of every ``--config`` file, in order (the command line's own tokens follow them)."""
    argv = []
    for path in files:
        argv += settings_argv(parser, settings_of(read_file(path), path, parser.prog), path, words)
    return argv


def given_flags(parser, namespace, **changes) -> Dict[str, Any]:
    """What a run records of its flags: each value (after ``changes``) that differs from the
    parser's default, as parsed; ``--config`` itself is left out (its values are in)."""
    values = dict(vars(namespace), **changes)
    out = {}
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest not in values or dest in NOT_RECORDED:
            continue
        value = values[dest]
        if value != action.default:
            out[dest] = list(value) if isinstance(value, tuple) else value
    return out


def parse(parser, argv: Sequence[str], split=None, words: Optional[Mapping[str, Sequence[str]]] = None):
    """``(namespace, extra)`` of ``argv`` with the flags of its ``--config`` files (in order) before
    its own, so the command line wins; a bad file is a one-line flag error. ``split`` takes tokens out
    before argparse sees them (``objective.split_logit_stand``: ``--logit-stand both``) and returns
    ``(tokens, extra)``; ``words`` the extra values a switch accepts in a file."""
    split = split or (lambda tokens: (list(tokens), None))
    tokens, extra = split(argv)
    namespace = parser.parse_args(tokens)
    if not namespace.config:
        return namespace, extra
    try:
        file_tokens = files_argv(parser, namespace.config, words)
    except ConfigFileError as exc:
        parser.error(str(exc))
    tokens, extra = split(file_tokens + list(argv))
    return parser.parse_args(tokens), extra
