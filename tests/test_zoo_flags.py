"""Every number flag of every registered loss and ensemble strategy (``add_arguments`` in
``distiller_zoo``) and of spot-adaptive routing (``helper.spot_adaptive.add_arguments``) is checked
where it is defined, by a ``type=`` from ``distiller_zoo.argtypes``: nan/inf and (where its type
says) 0, negatives or 1 are a one-line argparse error naming the flag (issue 25 item 6).

The cases are the parsers' own actions, read when the tests are collected: a flag added later
without such a type makes ``test_every_value_flag_is_a_checked_number_or_a_choice`` fail."""
import argparse

import pytest

import distiller_zoo  # noqa: F401  (registers every loss and strategy)
from distiller_zoo import DISTILLERS, ENSEMBLES, argtypes, defaults
from helper import spot_adaptive


class ParseError(Exception):
    pass


class RaisingParser(argparse.ArgumentParser):
    """argparse's message without the usage block and the exit."""

    def error(self, message):
        raise ParseError(message)


def _build(which):
    parser = RaisingParser()
    if which == "zoo":
        defaults.add_arguments(parser)
    else:
        spot_adaptive.add_arguments(parser)
    return parser


ARG_TYPES = {fn: name for name, fn in vars(argtypes).items()
             if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == argtypes.__name__}

# per type: texts it must refuse, and one text it must accept with the value it gives
REFUSED = {
    "finite_float": ["nan", "inf", "-inf", "x"],
    "positive_float": ["nan", "inf", "-inf", "0", "-1", "x"],
    "non_negative_float": ["nan", "inf", "-inf", "-1", "-1e-9", "x"],
    "unit_interval_float": ["nan", "inf", "-inf", "-0.5", "1", "x"],
    "integer": ["nan", "inf", "1.5", "x"],
    "positive_int": ["nan", "inf", "0", "-1", "1.5"],
    "non_negative_int": ["nan", "inf", "-1", "1.5"],
}
ACCEPTED = {"finite_float": ("-3.5", -3.5), "positive_float": ("0.25", 0.25), "non_negative_float": ("0", 0.0),
            "unit_interval_float": ("0", 0.0), "integer": ("-2", -2), "positive_int": ("1", 1),
            "non_negative_int": ("0", 0)}


def value_actions(parser):
    """The optional flags that take a value (not store_true / --no-x switches, not --help)."""
    return [a for a in parser._actions if a.option_strings and a.nargs != 0]


def is_number_flag(action) -> bool:
    default_is_number = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
    return action.type in ARG_TYPES or action.type in (int, float) or default_is_number


def cases():
    out = []
    for which in ("zoo", "spot"):
        for a in value_actions(_build(which)):
            out.append(pytest.param(which, a.option_strings[0], id=a.option_strings[0]))
    return out


CASES = cases()
NUMBER_CASES = [c for c in CASES
                if is_number_flag(next(a for a in value_actions(_build(c.values[0]))
                                       if a.option_strings[0] == c.values[1]))]


def action_of(parser, flag):
    return next(a for a in value_actions(parser) if a.option_strings[0] == flag)


def test_the_registries_declare_flags_and_the_cases_cover_them():
    assert len(DISTILLERS) > 15 and len(ENSEMBLES) >= 5
    flags = {c.values[1] for c in NUMBER_CASES}
    # the flags issue 25 names, and some of every kind
    for flag in ("--rkd_angle_weight", "--rkd_dist_weight", "--dkd_T", "--aekt_T", "--t_start", "--nce_k",
                 "--feat_dim", "--nce_m", "-C", "--evidential_tau", "--policy_tau", "--policy_lr_ratio"):
        assert flag in flags, flag


@pytest.mark.parametrize("which, flag", CASES)
def test_every_value_flag_is_a_checked_number_or_a_choice(which, flag):
    action = action_of(_build(which), flag)
    if is_number_flag(action):
        assert action.type in ARG_TYPES, (f"{flag}: a number flag needs a type from distiller_zoo/argtypes.py, "
                                          f"has {action.type!r}")
    else:
        assert action.choices, f"{flag}: neither a number with a checked type nor a choice of names"


@pytest.mark.parametrize("which, flag", NUMBER_CASES)
def test_number_flags_refuse_bad_values_in_one_line_naming_the_flag(which, flag):
    parser = _build(which)
    kind = ARG_TYPES[action_of(parser, flag).type]
    for text in REFUSED[kind]:
        with pytest.raises(ParseError) as err:
            parser.parse_args([f"{flag}={text}"])
        message = str(err.value)
        assert "\n" not in message and flag in message and repr(text) in message, message
    text, value = ACCEPTED[kind]
    assert getattr(parser.parse_args([f"{flag}={text}"]), action_of(parser, flag).dest) == value


@pytest.mark.parametrize("which, flag", NUMBER_CASES)
def test_defaults_satisfy_their_own_type(which, flag):
    action = action_of(_build(which), flag)
    assert action.type(str(action.default)) == action.default


def test_an_untyped_number_flag_would_fail_the_check():
    """The classification above catches a flag added without a checked type."""
    parser = RaisingParser()
    parser.add_argument("--new_weight", default=1.0)
    parser.add_argument("--new_count", type=int, default=None)
    parser.add_argument("--new_name", type=str, default="a")
    acts = {a.option_strings[0]: a for a in value_actions(parser)}
    assert is_number_flag(acts["--new_weight"]) and acts["--new_weight"].type not in ARG_TYPES
    assert is_number_flag(acts["--new_count"]) and acts["--new_count"].type not in ARG_TYPES
    assert not is_number_flag(acts["--new_name"]) and not acts["--new_name"].choices


@pytest.mark.parametrize("argv, flag, expected", [
    (["--rkd_angle_weight=-1000"], "--rkd_angle_weight", ">= 0"),
    (["--rkd_dist_weight", "nan"], "--rkd_dist_weight", "finite"),
    (["--dkd_T", "0"], "--dkd_T", "> 0"),
    (["--aekt_T", "nan"], "--aekt_T", "finite"),
    (["--t_start", "0"], "--t_start", "> 0"),
    (["--nce_m", "1"], "--nce_m", "[0, 1)"),
    (["--policy_tau", "0"], "--policy_tau", "> 0"),
])
def test_train_student_refuses_them_in_one_line(argv, flag, expected, capsys):
    import train_student
    with pytest.raises(SystemExit) as exc:
        train_student.build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument {flag}" in err and expected in err, err
