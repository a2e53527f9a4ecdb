"""``--config FILE.yaml|.json`` on both scripts (issue 27 item 3): keys named as the flags, the command
line wins, a finished run's ``args.json`` repeats that run, bad files are one line, YAML is data."""
import json

import pytest
import torch

import train_student
import train_teacher
from helper.config_files import given_flags, keys_of
from models import model_dict

from builders import student_config, student_name, student_plan, teacher_configs, teacher_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(capsys, parse, argv):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def student(argv):
    return train_student.parse_args(["--device", "cpu", *argv])


def differing(a, b):
    """The settings in which two configurations differ, apart from where the flags came from."""
    a, b = a.as_dict(), b.as_dict()
    return sorted(k for k in set(a) | set(b) if k not in ("config", "command") and a.get(k) != b.get(k))


def test_a_yaml_file_sets_the_flags_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, "exp.yaml", """
model_s: resnet14
distill: kd+attention
kd_T: 2
r: 0.5                       # -r, by its short option
path-t: [a.pth, b.pth]       # --path-t, by its option spelling
lr_decay_epochs: [150, 180]  # a comma-separated flag takes a list
nesterov: true
fuse_teachers: false         # --no-fuse_teachers
skip-validation: false
weight_decay: 1e-4           # YAML 1.1 reads this as a string; the flag's type reads the number
tag: null                    # the default
""")
    config = student(["--config", path]).members[0].config
    assert (config.model_s, config.distill, config.kd_T, config.gamma) == ("resnet14", "kd+attention", 2.0, 0.5)
    assert config.path_t == ("a.pth", "b.pth") and config.teacher_num == 2
    assert config.lr_decay_epochs == (150, 180) and config.nesterov and config.fuse_teachers is False
    assert config.weight_decay == 1e-4 and config.tag == "" and not config.skip_validation
    assert config.config == (path,)
    same = student_config("--model_s", "resnet14", "--distill", "kd+attention", "--kd_T", "2", "-r", "0.5",
                          "--path_t", "a.pth", "b.pth", "--lr_decay_epochs", "150,180", "--nesterov",
                          "--no-fuse_teachers", "--weight_decay", "1e-4")
    assert differing(config, same) == []
    assert student_name(config, ["resnet8"] * 2, ["a", "b"]) == student_name(same, ["resnet8"] * 2, ["a", "b"])
    over = student(["--config", path, "--kd_T", "3", "--path_t", "c.pth"]).members[0].config
    assert over.kd_T == 3.0 and over.path_t == ("c.pth",) and over.model_s == "resnet14"


def test_json_files_switches_and_several_files_in_order(tmp_path):
    base = write(tmp_path, "base.json", json.dumps({"kd_T": 2, "epochs": 7, "verify": False, "trial": 3}))
    more = write(tmp_path, "more.yml", "kd_T: 5\nno-download: true\n")
    config = student(["--config", base, "--config", more]).members[0].config
    assert (config.kd_T, config.epochs, config.verify, config.download, config.trial) == (5.0, 7, False, False, "3")
    assert config.config == (base, more)


def test_logit_stand_both_in_a_file_makes_the_group(tmp_path):
    path = write(tmp_path, "ls.yaml", "logit-stand: both\ndistill: kd\n")
    plan = student(["--config", path])
    assert [m.config.logit_stand for m in plan.members] == [False, True]


def test_teacher_files(tmp_path):
    path = write(tmp_path, "t.yaml", "model: resnet14\ndataset: digits\nt: 4\nlearning_rate: 0.1\n")
    trial, = train_teacher.parse_args(["--device", "cpu", "--config", path])
    assert (trial.model, trial.dataset, trial.trial, trial.learning_rate) == ("resnet14", "digits", "4", 0.1)
    assert teacher_folder(trial) == teacher_folder(teacher_configs("--model", "resnet14", "--dataset", "digits",
                                                                   "-t", "4", "--learning_rate", "0.1")[0])


@pytest.mark.parametrize("text, needle", [
    ("kd_tt: 2\n", "unknown key 'kd_tt': not a flag of"),
    ("kd_T: -1\n", "key kd_T: argument --kd_T: expected a finite number > 0, got '-1'"),
    ("kd_T: [1, 2]\n", "key kd_T: expected one value for --kd_T, got a list ([1, 2])"),
    ("kd_T: {a: 1}\n", "key kd_T: expected one value for --kd_T, got a mapping"),
    ("kd_tt: 2\n", "(did you mean kd_T?)"),
    ("kd_T: true\n", "key kd_T: expected one value for --kd_T, got true/false (True)"),
    ("batch_size: 6.5\n", "key batch_size: argument --batch_size: expected an integer, got '6.5'"),
    ("mode: fast\n", "key mode: argument --mode: invalid choice: 'fast'"),
    ("nesterov: yes please\n", "key nesterov: expected true or false for the switch --nesterov, got 'yes please'"),
    ("logit_stand: 2\n", "key logit_stand: expected true or false or both for the switch --logit-stand, got 2"),
    ("fuse_teachers: 1\n", "key fuse_teachers: expected true or false for --fuse_teachers, got 1"),
    ("teachers: [[a]]\n", "key teachers: expected a value or a list of values for --teachers"),
    ("gamma: 1\nr: 2\n", "keys 'gamma' and 'r' both set --gamma"),
    ("config: other.yaml\n", "key config: a configuration file cannot name another"),
    ("help: true\n", "unknown key 'help'"),
    ("- kd_T\n", "expected a mapping of flag names to values, got a list"),
    ("1: 2\n", "key 1 is not a flag name"),
    ("kd_T: [1\n", "not valid YAML (line 2, column 1:"),
    ("a: !!python/object/apply:os.system ['echo x']\n",
     "line 1, column 4: the tag tag:yaml.org,2002:python/object/apply:os.system is not allowed (configuration "
     "files are data: plain YAML values only, read with yaml.safe_load)"),
])
def test_bad_files_are_one_line_naming_file_and_key(tmp_path, capsys, text, needle):
    path = write(tmp_path, "bad.yaml", text)
    err = one_line_error(capsys, student, ["--config", path])
    assert f": error: {path}" in err, err
    assert needle in err, err


def test_a_python_tag_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = write(tmp_path, "evil.yaml", f"kd_T: !!python/object/apply:os.system ['touch {marker}']\n")
    one_line_error(capsys, student, ["--config", path])
    assert not marker.exists()


@pytest.mark.parametrize("name, text, needle", [
    ("bad.json", '{"kd_T": 2,}', "not valid JSON (line 1, column 12: Expecting property name"),
    ("bad.txt", "kd_T: 2", "expected a .yaml, .yml or .json configuration file"),
    ("missing.yaml", None, "cannot read it (No such file or directory)"),
])
def test_unreadable_files(tmp_path, capsys, name, text, needle):
    path = write(tmp_path, name, text) if text is not None else str(tmp_path / name)
    for parse in (student, train_teacher.parse_args):
        assert needle in one_line_error(capsys, parse, ["--config", path])


def test_every_key_names_one_flag():
    """The names a key may use (dests and option spellings) never name two flags."""
    for parser in (train_student.build_parser(), train_teacher.build_parser()):
        keys = keys_of(parser)
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert keys[action.dest][0] is action
                for option in action.option_strings:
                    if not option.startswith("--no-"):
                        assert keys[option.lstrip("-")][0] is action, option


# -- records --------------------------------------------------------------------------------------
def record(tmp_path, config, name="args.json", **extra):
    """What a run writes as args.json for ``config`` (the resolved flags and derived values)."""
    path = tmp_path / name
    path.write_text(json.dumps(dict(config.as_dict(), seed_used=0, config_hash="00000000", **extra)))
    return str(path)


def test_a_student_record_repeats_its_run(tmp_path):
    """--logit-stand dkd records alpha and beta already multiplied by --kd-weight: the record is read
    through given_flags, so a repeat does not multiply them again."""
    config = student_config("--distill", "dkd", "--logit-stand", "--kd-weight", "9", "--dkd_beta", "6",
                            "--path_t", "t.pth", "--learning_rate", "0.1", "--resume")
    assert config.dkd_alpha == 9.0 and config.dkd_beta == 54.0
    assert config.given_flags["dkd_beta"] == 6.0 and "learning_rate" in config.given_flags
    path = record(tmp_path, config, objective="...", teacher_digests=["ab"], teacher_archs=["resnet8"])
    again = student(["--config", path]).members[0].config
    assert differing(again, config) == ["given_flags", "resume"]      # how that start went: not read
    assert not again.resume and dict(again.given_flags) == {k: v for k, v in config.given_flags.items()
                                                            if k != "resume"}
    assert student_name(again, ["resnet8"], ["ab"]) == student_name(config, ["resnet8"], ["ab"])
    tagged = student(["--config", path, "--tag", "again"]).members[0].config
    assert student_name(tagged, ["resnet8"], ["ab"]) != student_name(config, ["resnet8"], ["ab"])


def test_a_group_member_record_repeats_that_student(tmp_path):
    plan = student_plan("--distill", "kd,dkd", "--ensemble_method", "AVERAGE_LOSS", "--logit-stand", "both",
                        "--path_t", "t.pth")
    assert len(plan.members) == 4
    member = plan.members[3].config                          # dkd with logit standardization
    assert (member.distill, member.logit_stand) == ("dkd", True)
    again = student(["--config", record(tmp_path, member)]).members
    assert len(again) == 1 and differing(again[0].config, member) == []


def test_a_teacher_record_repeats_its_trial(tmp_path):
    trials = teacher_configs("--trials", "0,1", "--model", "resnet14", "--seed", "5", "--dataset", "digits")
    assert trials[1].given_flags["trial"] == "1" and "trials" not in trials[1].given_flags
    again = train_teacher.parse_args(["--config", record(tmp_path, trials[1])])
    assert len(again) == 1 and differing(again[0], trials[1]) == ["trial_list", "trials"]
    assert teacher_folder(again[0]) == teacher_folder(trials[1])


def test_a_record_from_before_given_flags_is_refused_with_its_command(tmp_path, capsys):
    config = student_config("--kd_T", "2")
    old = {k: v for k, v in config.as_dict().items() if k != "given_flags"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(dict(old, seed_used=0, command="train_student.py --kd_T 2")))
    err = one_line_error(capsys, student, ["--config", str(path)])
    assert err.rstrip().endswith("repeat it with its command: python train_student.py --kd_T 2 (see --help)")


def test_given_flags_are_the_values_not_at_their_default():
    parser = train_student.build_parser()
    ns = parser.parse_args(["--kd_T", "4", "--kd_T", "3", "-r", "1", "--teachers", "a", "b"])
    assert given_flags(parser, ns) == {"kd_T": 3.0, "gamma": 1.0, "teachers": ["a", "b"]}
    assert given_flags(parser, ns, kd_T=4) == {"gamma": 1.0, "teachers": ["a", "b"]}


def test_trials_of_one_configuration_stay_one_configuration():
    """given_flags hold each trial's own --trial: scripts/summarize.py still groups the trials."""
    from helper.results import Run
    a, b = (student_config("--trial", t, "--kd_T", "2") for t in ("0", "1"))
    assert a.given_flags != b.given_flags
    runs = [Run(str(i), dict(c.as_dict(), seed_used=i), [], None) for i, c in enumerate((a, b))]
    assert runs[0].config() == runs[1].config()


# -- a finished run's args.json, end to end -------------------------------------------------------
@pytest.mark.slow
def test_repeating_a_finished_run_from_its_args_json(tmp_path, capsys):
    """Same run folder name; with --tag again a second run whose weights are bit-identical on the CPU."""
    torch.manual_seed(0)
    teacher = tmp_path / "resnet8_teacher.pth"
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, teacher)
    save = tmp_path / "save"
    code = train_student.main(["--dataset", "digits", "--path_t", str(teacher), "--epochs", "1", "--batch_size",
                               "256", "--save_dir", str(save), "--quiet", "--device", "cpu", "--distill", "kd",
                               "--kd_T", "2", "--skip_validation", "--deterministic"])
    assert code == 0
    first, = (save / "students").iterdir()
    args = json.loads((first / "args.json").read_text())
    plan = train_student.parse_args(["--config", str(first / "args.json")])
    assert student_name(plan.shared, args["teacher_archs"], args["teacher_digests"]) == first.name
    capsys.readouterr()
    assert train_student.main(["--config", str(first / "args.json")]) == 2   # the same folder: refused
    assert "holds a finished run" in capsys.readouterr().err
    assert train_student.main(["--config", str(first / "args.json"), "--tag", "again"]) == 0
    second, = [d for d in (save / "students").iterdir() if d != first]
    assert second.name.endswith("_again_" + first.name.rsplit("_", 1)[1])
    a = torch.load(first / "resnet8_last.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(second / "resnet8_last.pth", map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "args.json").read_text())["config"] == [str(first / "args.json")]
