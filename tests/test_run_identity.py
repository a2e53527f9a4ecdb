"""helper/run_identity.py: a run's folder name and hash, and what resolution records, stay what they
were for the command lines users already have (recorded before issue 29's refactor); a new flag at
its default changes no name; the configuration is read-only."""
import json
import os

import pytest

import train_student
from helper.config import FrozenConfigError, RunConfig
from helper.run_identity import HASHED_ALWAYS, config_hash, result_settings

from builders import student_name, student_plan, teacher_configs, teacher_folder

RECORD = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "run_identity.json")))


def plain(values):
    return json.loads(json.dumps(values, default=str))


@pytest.mark.parametrize("case", RECORD["student"], ids=lambda c: " ".join(c["argv"]) or "(defaults)")
def test_student_names_objectives_and_records_are_unchanged(case):
    plan = student_plan(*case["argv"])
    assert len(plan.members) == len(case["runs"])
    for member, want in zip(plan.members, case["runs"]):
        config = member.config
        archs = ["resnet32x4"] * config.teacher_num
        digests = [f"{i:016x}" for i in range(config.teacher_num)]
        assert student_name(config, archs, digests) == want["name"]
        assert member.notes[0] == want["objective_line"]
        settings = result_settings(train_student.build_parser(), config, {"teacher_archs": archs,
                                                                          "teacher_digests": digests})
        # flags added since are at their defaults (they leave the hash as it was: the name above)
        assert {k: v for k, v in settings.items() if k in want["settings"]} == want["settings"]
        assert set(want["args_keys"]) <= set(config.as_dict())            # args.json keeps every key
        resolved = plain(config.as_dict())
        assert {k: resolved[k] for k in want["resolved"]} == want["resolved"]


@pytest.mark.parametrize("case", RECORD["teacher"], ids=lambda c: " ".join(c["argv"]) or "(defaults)")
def test_teacher_folders_are_unchanged(case):
    trials = teacher_configs(*case["argv"])
    assert [os.path.join("teachers", teacher_folder(t)) for t in trials] == [r["folder"] for r in case["runs"]]


def test_a_flag_added_later_changes_no_hash_at_its_default():
    settings = RECORD["student"][0]["runs"][0]["settings"]
    defaults = {"new_flag": 3}
    assert "new_flag" not in HASHED_ALWAYS
    assert config_hash(dict(settings, new_flag=3.0), defaults) == config_hash(settings)
    assert config_hash(dict(settings, new_flag=4.0), defaults) != config_hash(settings)
    assert RECORD["student"][0]["runs"][0]["name"].endswith("h" + config_hash(settings))


def test_the_resolved_configuration_is_read_only():
    config = student_plan("--distill", "kd+attention").shared
    with pytest.raises(FrozenConfigError, match="read-only"):
        config.kd_T = 2.0
    with pytest.raises(FrozenConfigError):
        del config.kd_T
    with pytest.raises(AttributeError):
        config.lr_decay_epochs.append(3)                 # lists are tuples, dicts read-only
    with pytest.raises(TypeError):
        config.objective_terms[0]["weight"] = 3
    other = config.replace(kd_T=2.0)
    assert other.kd_T == 2.0 and config.kd_T == 4 and isinstance(other, RunConfig)
    assert config.as_dict()["lr_decay_epochs"] == [150, 180, 210]
