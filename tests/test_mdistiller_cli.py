"""mdistiller's command line (issue 27 item 2): ``python tools/train.py --cfg FILE.yaml [--resume]
[--logit-stand --base-temp T --kd-weight W] [KEY VALUE ...]`` is a thin adapter onto
train_student.py's flags: the same configuration, run folder name and hash as the flags it prints
(and as the toolkit's own commands of the logit-standardization table), mdistiller's defaults and
yacs' merge rules, one-line errors naming the key.

The YAML files in tests/fixtures/mdistiller/ are written for these tests in mdistiller's schema."""
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from helper import mdistiller_config
from helper.run_identity import config_hash, parser_defaults, student_identity
from models import get_model_cfg, model_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "mdistiller"
KD, DKD, MLKD = (str(FIXTURES / f"{m}_resnet32x4_resnet8x4.yaml") for m in ("kd", "dkd", "mlkd"))
TEACHER = "download_ckpts/cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"


def load_tool(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool("mdistiller_train_tool", ROOT / "tools" / "train.py")


@pytest.fixture
def teachers_here(tmp_path, monkeypatch):
    """The current folder is one where mdistiller's teacher layout holds resnet32x4 (the translation
    only checks that the file is there)."""
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.dirname(TEACHER))
    Path(TEACHER).write_bytes(b"")
    return tmp_path


def translated(*argv):
    return tool.translation(list(argv))[0]


def identity(argv):
    """(configuration, run folder name, hash, result settings) train_student.py gives ``argv``."""
    parser = train_student.build_parser()
    config = train_student.parse_args(["--device", "cpu", *argv], parser).members[0].config
    name, settings = student_identity(parser, config, ["resnet32x4"], ["0123456789abcdef"],
                                      get_model_cfg(config.model_s, False).default_lr)
    return config, name, config_hash(settings, parser_defaults(parser)), settings


# The toolkit's own commands for the logit-standardization table (scripts/run_logit_stand.sh,
# resnet32x4 -> resnet8x4), which the mdistiller lines must match run for run.
COMMON = (f"--path_t {TEACHER} --model_s resnet8x4 --dataset cifar100 --batch_size 64 --weight_decay 5e-4 "
          f"--momentum 0.9 --lr_decay_epochs 150,180,210 --trial 0 ")
TABLE = [
    ((KD,), "--distill kd -r 0.1 -a 0.9 --kd_T 4 --epochs 240"),
    ((KD, "--logit-stand", "--base-temp", "2", "--kd-weight", "9"),
     "--distill kd --epochs 240 --logit-stand --base-temp 2 --kd-weight 9"),
    ((DKD,), "--distill dkd --dkd_alpha 1 --dkd_T 4 --dkd_warmup 20 --epochs 240 --dkd_beta 8"),
    ((DKD, "--logit-stand"), "--distill dkd --dkd_alpha 1 --dkd_T 4 --dkd_warmup 20 --epochs 240 --dkd_beta 8 "
                             "--logit-stand --base-temp 2 --kd-weight 9"),
    ((MLKD,), "--distill mlkd -r 0.1 -a 0.9 --kd_T 4 --epochs 480 --learning_rate 0.025 --mlkd_mask reference"),
    ((MLKD, "--logit-stand", "--base-temp", "2", "--kd-weight", "9"),
     "--distill mlkd --epochs 480 --learning_rate 0.025 --logit-stand --base-temp 2 --kd-weight 9 "
     "--mlkd_mask reference"),
]


@pytest.mark.parametrize("tool_argv, flags", TABLE)
def test_the_run_is_that_of_the_toolkits_own_command(teachers_here, tool_argv, flags):
    cfg, *rest = tool_argv
    mine = identity(translated("--cfg", cfg, *rest))
    theirs = identity(shlex.split(COMMON + flags))
    assert mine[1] == theirs[1]                      # the run folder name
    assert mine[2] == theirs[2] and mine[3] == theirs[3]     # the hash and every result setting


@pytest.mark.parametrize("tool_argv", [t for t, _ in TABLE])
def test_the_frozen_configuration_is_that_of_the_printed_flags(teachers_here, tool_argv, capsys):
    """tools/train.py runs the printed train_student.py flags plus --mdistiller_cfg (the record)."""
    cfg, *rest = tool_argv
    student = translated("--cfg", cfg, *rest)
    recorded = identity(student + ["--mdistiller_cfg", os.path.abspath(cfg)])[0]
    printed = identity(student)[0]
    assert recorded.mdistiller_cfg == os.path.abspath(cfg)
    assert recorded.replace(mdistiller_cfg=None, given_flags=printed.given_flags) == printed
    assert dict(recorded.given_flags) == dict(printed.given_flags, mdistiller_cfg=os.path.abspath(cfg))


def test_what_each_key_maps_to(teachers_here):
    student = translated("--cfg", DKD, "--resume", "SOLVER.EPOCHS", "3", "DKD.BETA", "6.0", "LOG.PREFIX", "runs",
                         "DATASET.NUM_WORKERS", "0", "LOG.SAVE_CHECKPOINT_FREQ", "5")
    config = identity(student)[0]
    assert (config.model_s, config.path_t, config.model_t) == ("resnet8x4", (TEACHER,), ("resnet32x4",))
    assert (config.distill, config.gamma, config.dkd_alpha, config.dkd_beta, config.dkd_T, config.dkd_warmup) == \
        ("dkd", 1.0, 1.0, 6.0, 4.0, 20.0)
    assert (config.epochs, config.learning_rate, config.lr_decay_epochs, config.weight_decay) == \
        (3, 0.05, (150, 180, 210), 5e-4)
    assert (config.save_dir, config.num_workers, config.save_freq, config.resume) == ("runs", 0, 5, True)
    assert not config.logit_stand and config.optimizer == "sgd" and not config.nesterov


def test_absent_keys_take_mdistillers_defaults(teachers_here, tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text('DISTILLER:\n  TYPE: "KD"\n  TEACHER: "resnet32x4"\n  STUDENT: "MobileNetV2"\n')
    config = identity(translated("--cfg", str(path)))[0]
    # mdistiller: weight decay 1e-4, lr 0.05 whatever the student (the toolkit's own default for
    # MobileNetV2 is 0.01), KD T 4 with CE 0.1 / KD 0.9, outputs under ./output, 2 loader workers
    assert (config.weight_decay, config.learning_rate, config.kd_T, config.gamma, config.alpha) == \
        (1e-4, 0.05, 4.0, 0.1, 0.9)
    assert (config.save_dir, config.num_workers, config.batch_size, config.epochs) == ("./output", 2, 64, 240)


def test_logit_stand_from_the_file_keeps_its_weights(teachers_here, tmp_path):
    """EXPERIMENT.LOGIT_STAND (the logit-standardization repository's key) without --logit-stand:
    the configuration's own temperature and weights, standardized."""
    path = tmp_path / "ls.yaml"
    path.write_text("EXPERIMENT:\n  LOGIT_STAND: True\nDISTILLER:\n  TYPE: KD\n  TEACHER: resnet32x4\n"
                    "  STUDENT: resnet8x4\nKD:\n  TEMPERATURE: 3\n  LOSS:\n    KD_WEIGHT: 6.0\n")
    config = identity(translated("--cfg", str(path)))[0]
    assert config.logit_stand and (config.base_temp, config.alpha, config.gamma) == (3.0, 6.0, 0.1)
    dkd = identity(translated("--cfg", DKD, "EXPERIMENT.LOGIT_STAND", "True", "DKD.T", "3.0"))[0]
    assert dkd.logit_stand and (dkd.base_temp, dkd.kd_weight, dkd.dkd_alpha, dkd.dkd_beta) == (3.0, 1.0, 1.0, 8.0)


@pytest.mark.parametrize("pairs, needle", [
    (["SOLVER.EPOCH", "1"], "SOLVER.EPOCH: not a key of mdistiller's configuration (did you mean SOLVER.EPOCHS?)"),
    (["SOLVER.LR", "1"], "SOLVER.LR: expected a float like mdistiller's default 0.05 (yacs requires the default's "
                         "type), got 1 (an int)"),
    (["KD.TEMPERATURE", "2.5"], "KD.TEMPERATURE: expected an int like mdistiller's default 4"),
    (["SOLVER.EPOCHS"], "expected KEY VALUE pairs after the flags, got an odd number of words: SOLVER.EPOCHS"),
    (["SOLVER.EPOCHS", "1", "--resume"], "--resume comes after the KEY VALUE pairs"),
    (["KD.LOSS", "1"], "KD.LOSS: a section, not a value (name one of its keys: KD.LOSS.CE_WEIGHT, KD.LOSS.KD_WEIGHT)"),
    (["FOO.BAR", "1"], "FOO.BAR: not a key of mdistiller's configuration"),
    (["SOLVER.TYPE", "Adam"], "SOLVER.TYPE 'Adam': mdistiller trains with SGD only"),
    (["SOLVER.TRAINER", "ours"], "SOLVER.TRAINER 'ours': DISTILLER.TYPE KD trains with the trainer 'base'"),
    (["SOLVER.TRAINER", "dot"], "SOLVER.TRAINER dot: DOT is not in this toolkit"),
    (["DISTILLER.TYPE", "AT"], "DISTILLER.TYPE AT: tools/train.py translates KD, DKD and MLKD (the "
                               "logit-standardization configurations); train_student.py --distill attention runs AT"),
    (["DISTILLER.TYPE", "OFD"], "DISTILLER.TYPE OFD: OFD is not in this toolkit"),
    (["DISTILLER.TYPE", "XYZ"], "DISTILLER.TYPE 'XYZ': not a method of mdistiller's"),
    (["DATASET.TYPE", "imagenet"], "DATASET.TYPE imagenet: mdistiller's ImageNet teachers are torchvision's"),
    (["DATASET.TYPE", "tiny_imagenet"], "DATASET.TYPE tiny_imagenet: mdistiller's tiny-ImageNet teacher"),
    (["DATASET.TYPE", "mnist"], "DATASET.TYPE 'mnist': expected cifar100 or a data set of this toolkit"),
    (["DISTILLER.TEACHER", "vgg13"], "DISTILLER.TEACHER vgg13: no checkpoint at download_ckpts/cifar_teachers/"
                                     "vgg13_vanilla/ckpt_epoch_240.pth, where mdistiller reads it (python "
                                     "scripts/fetch_teachers.py mdistiller puts"),
])
def test_bad_keys_and_values_are_one_line_naming_the_key(teachers_here, capsys, pairs, needle):
    assert tool.main(["--cfg", KD, *pairs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert err.startswith("tools/train.py: error: ")


@pytest.mark.parametrize("text, needle", [
    ("SOLVER:\n  EPOCHS: 1.5\n", "SOLVER.EPOCHS: expected an int like mdistiller's default 240"),
    ("SOLVER: 3\n", "SOLVER: expected a section of keys (TRAINER, BATCH_SIZE, EPOCHS, LR, LR_DECAY_STAGES, "),
    ("SOLVER:\n", "SOLVER: expected a section of keys (TRAINER, "),
    ("SOLVERS:\n  LR: 0.1\n", "SOLVERS: not a key of mdistiller's configuration (did you mean SOLVER?)"),
    ("KD:\n  TEMPERATURE: !!python/object/apply:os.system ['echo x']\n", "is not allowed (configuration files are "
                                                                         "data"),
    ("SOLVER: [1\n", "not valid YAML"),
])
def test_bad_files_are_one_line(teachers_here, tmp_path, capsys, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert tool.main(["--cfg", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: " in err and needle in err, err


def test_yacs_reads_literals_and_lists(teachers_here):
    cfg = mdistiller_config.load(DKD, ["SOLVER.LR_DECAY_STAGES", "(100, 200)", "EXPERIMENT.TAG", "a,b",
                                       "FITNET.INPUT_SIZE", "[16, 16]"])
    assert cfg["SOLVER"]["WEIGHT_DECAY"] == 5e-4                 # the file's string "5e-4" read as a number
    assert cfg["SOLVER"]["LR_DECAY_STAGES"] == [100, 200]       # a tuple stands for the default's list
    assert cfg["FITNET"]["INPUT_SIZE"] == (16, 16) and cfg["EXPERIMENT"]["TAG"] == "a,b"
    assert mdistiller_config.DEFAULTS["SOLVER"]["LR_DECAY_STAGES"] == [150, 180, 210]   # defaults untouched


def test_type_none_gives_the_train_teacher_command(teachers_here, capsys):
    assert tool.main(["--cfg", KD, "DISTILLER.TYPE", "NONE", "SOLVER.EPOCHS", "3"]) == 2
    err = capsys.readouterr().err
    command = err.split("trains the student without a teacher: ", 1)[1].rstrip()
    assert command.startswith("python train_teacher.py --model resnet8x4 --dataset cifar100 ")
    trial, = train_teacher.parse_args(shlex.split(command)[2:] + ["--device", "cpu"])   # a command it accepts
    assert (trial.model, trial.epochs, trial.weight_decay) == ("resnet8x4", 3, 5e-4)


def test_notes_and_the_printed_command(teachers_here, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(train_student, "main", lambda argv: ran.append(argv) or 0)
    assert tool.main(["--cfg", KD, "--base-temp", "3"]) == 0
    captured = capsys.readouterr()
    assert "tools/train.py: note: --base-temp 3.0: not used without --logit-stand" in captured.err
    assert "tools/train.py: note: LOG.WANDB True: no Weights & Biases here" in captured.err
    printed = captured.out.split("the run of python train_student.py ", 1)[1].splitlines()[0]
    assert ran == [shlex.split(printed) + ["--mdistiller_cfg", os.path.abspath(KD)]]


def test_the_teacher_layout_is_fetch_teachers(teachers_here):
    spec = importlib.util.spec_from_file_location("fetch_teachers", ROOT / "scripts" / "fetch_teachers.py")
    fetch = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, fetch)          # its dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    source = sys.modules[spec.name].SOURCES["mdistiller"]
    default_dest = sys.modules[spec.name].build_parser().get_default("dest")
    assert mdistiller_config.TEACHER_PATH.format(arch="vgg13") == os.path.join(default_dest, source.member("vgg13"))


@pytest.mark.slow
def test_a_run_on_digits_records_its_file(teachers_here, capsys):
    """The issue's override example end to end: one epoch on digits with a digits teacher where
    mdistiller keeps teachers; args.json records the file; the folder is the printed flags' own."""
    torch.manual_seed(0)
    teacher = Path("download_ckpts/cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
    teacher.parent.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict()}, teacher)
    argv = ["--cfg", DKD, "SOLVER.EPOCHS", "1", "DATASET.TYPE", "digits", "DISTILLER.TEACHER", "resnet8",
            "DISTILLER.STUDENT", "resnet8", "SOLVER.BATCH_SIZE", "256", "LOG.PREFIX", "out", "DATASET.NUM_WORKERS", "0"]
    assert tool.main(argv[:2] + ["--logit-stand"] + argv[2:]) == 0
    printed = capsys.readouterr().out.split("the run of python train_student.py ", 1)[1].splitlines()[0]
    run, = Path("out/students").iterdir()
    args = json.loads((run / "args.json").read_text())
    assert args["mdistiller_cfg"] == os.path.abspath(DKD) and args["epochs"] == 1 and args["logit_stand"]
    parser = train_student.build_parser()
    config = train_student.parse_args(shlex.split(printed), parser).members[0].config
    name, _ = student_identity(parser, config, args["teacher_archs"], args["teacher_digests"], 0.05)
    assert name == run.name
