"""CA-MKD's and RepDistiller's command lines (issue 27 item 1): every flag of their
``train_student.py`` and ``train_teacher.py`` parses; the ones this toolkit does another way say
so in one line (``helper.reference_flags``), change no run name, or stop with the command to run."""
import shlex

import pytest
import torch

import train_student
import train_teacher
from helper import reference_flags
from helper.distributed import DistContext

from builders import student_config, student_name, student_plan, teacher_configs, teacher_folder

# Every option string of the four reference parsers (read from CA-MKD's and RepDistiller's
# train_student.py / train_teacher.py) with a value they accept there.
CAMKD_STUDENT = [
    "--print-freq 200", "--batch_size 64", "--num_workers 8", "--epochs 240", "--gpu_id 0",
    "--learning_rate 0.05", "--lr_decay_epochs 150,180,210", "--lr_decay_rate 0.1", "--weight_decay 5e-4",
    "--momentum 0.9", "--distill_decay", "--dataset cifar100", "--model_s resnet8", "--path-t t.pth",
    "--distill inter", "--trial 1", "-r 1.0", "-a 1.0", "-b 0.0", "--gamma 1", "--alpha 1", "--beta 0",
    "--factor 2", "--convs", "--kd_T 4", "--nesterov", "--preact", "--hint_layer -2", "--c_embed 128",
    "--teacher_num 1", "--teacher_num 3 --ensemble_method CAMKD", "-C 0.6", "--seed 0", "--svm_norm", "--dali gpu",
    "--dist-url tcp://127.0.0.1:23451", "--deterministic", "--skip-validation"]
REPDISTILLER_STUDENT = [
    "--print_freq 100", "--tb_freq 500", "--save_freq 40", "--batch_size 64", "--num_workers 8", "--epochs 240",
    "--init_epochs 30", "--learning_rate 0.05", "--lr_decay_epochs 150,180,210", "--lr_decay_rate 0.1",
    "--weight_decay 5e-4", "--momentum 0.9", "--dataset cifar100", "--model_s resnet8", "--path_t t.pth",
    "--distill crd", "--trial 1", "-r 1", "-a 0", "-b 0.8", "--kd_T 4", "--feat_dim 128", "--mode exact",
    "--nce_k 16384", "--nce_t 0.07", "--nce_m 0.5", "--hint_layer 2"]
CAMKD_TEACHER = [
    "--print-freq 200", "--save_freq 40", "--batch_size 64", "--num_workers 8", "--epochs 240", "--gpu_id 0",
    "--learning_rate 0.05", "--lr_decay_epochs 150,180,210", "--lr_decay_rate 0.1", "--weight_decay 5e-4",
    "--momentum 0.9", "--model resnet110", "--dataset cifar100", "-t 0", "--trial 0", "--dali cpu",
    "--dist-url tcp://127.0.0.1:23451"]
REPDISTILLER_TEACHER = [
    "--print_freq 100", "--tb_freq 500", "--save_freq 40", "--batch_size 64", "--num_workers 8", "--epochs 240",
    "--learning_rate 0.05", "--lr_decay_epochs 150,180,210", "--lr_decay_rate 0.1", "--weight_decay 5e-4",
    "--momentum 0.9", "--model resnet110", "--dataset cifar100", "-t 0"]


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def gpus(monkeypatch, count):
    """A pretend machine with ``count`` CUDA GPUs (resolution only asks torch how many there are)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def error_line(capsys, parse, argv):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err            # one line, no usage block, no traceback
    return err


@pytest.mark.parametrize("flag", CAMKD_STUDENT + REPDISTILLER_STUDENT)
def test_every_reference_student_flag_parses(flag, monkeypatch):
    no_cuda(monkeypatch)
    argv = shlex.split(flag)
    parser = train_student.build_parser()
    ns = parser.parse_args(argv)                 # the flag exists, with the reference's spelling and value
    assert ns is not None
    if argv[0] not in ("--path-t", "--path_t"):  # (a checkpoint path is read only when the run starts)
        assert student_plan(*argv, dataset="digits") is not None


@pytest.mark.parametrize("flag", CAMKD_TEACHER + REPDISTILLER_TEACHER)
def test_every_reference_teacher_flag_parses(flag, monkeypatch):
    no_cuda(monkeypatch)
    trials = teacher_configs(*shlex.split(flag), dataset="digits")
    assert len(trials) == 1


def test_the_readme_lines_of_camkd_parse(monkeypatch, capsys):
    """The first lines a CA-MKD user types (its README)."""
    no_cuda(monkeypatch)
    plan = train_student.parse_args(shlex.split("--model_s vgg8 --teacher_num 3 --distill inter --ensemble_method "
                                                "CAMKD --nesterov -r 1 -a 1 -b 50 --trial 0 --gpu_id 0"))
    assert plan.shared.device == "cpu" and plan.shared.teacher_num == 3 and plan.shared.beta == 50
    assert "train_student.py: note: --gpu_id 0: CUDA is not available on this machine; the run uses the CPU\n" \
        == capsys.readouterr().err
    trials = train_teacher.parse_args(shlex.split("--model resnet32x4 --gpu_id 0 --trial 0"))
    assert [t.device for t in trials] == ["cpu"]
    assert "train_teacher.py: note: --gpu_id 0: CUDA is not available" in capsys.readouterr().err


def test_short_trial_flag_of_train_teacher():
    assert [t.trial for t in teacher_configs("-t", "3")] == ["3"]
    assert teacher_configs("-t", "3")[0].trial == teacher_configs("--trial", "3")[0].trial


def test_gpu_id_picks_that_gpu(monkeypatch, capsys):
    gpus(monkeypatch, 2)
    parser = train_student.build_parser()
    plan = train_student.parse_args(["--gpu_id", "1"], parser)
    assert plan.shared.device == "cuda:1"
    assert plan.shared.amp and plan.shared.channels_last        # what follows from a CUDA device follows
    assert "--gpu_id 1: the run uses cuda:1" in capsys.readouterr().err
    trials = train_teacher.parse_args(["--gpu_id", "0"])
    assert trials[0].device == "cuda:0"


def test_device_wins_over_gpu_id(monkeypatch, capsys):
    gpus(monkeypatch, 2)
    assert student_config("--gpu_id", "1").device == "cpu"      # builders pass --device cpu
    assert "--gpu_id 1: not used, --device cpu is given and wins" in capsys.readouterr().err


@pytest.mark.parametrize("parse", [train_student.parse_args, train_teacher.parse_args])
def test_gpu_id_naming_no_gpu_is_one_line(parse, monkeypatch, capsys):
    gpus(monkeypatch, 2)
    err = error_line(capsys, parse, ["--gpu_id", "2"])
    assert "--gpu_id 2 names no GPU of this machine: it has 2 visible CUDA GPU(s) (ids 0 to 1)" in err
    err = error_line(capsys, parse, ["--gpu_id", "zero"])
    assert "argument --gpu_id: expected distinct CUDA device ids like 0 or 0,1, got 'zero'" in err
    assert "0,0" in error_line(capsys, parse, ["--gpu_id", "0,0"])


def test_several_gpu_ids_give_the_torchrun_command(monkeypatch, capsys):
    gpus(monkeypatch, 4)
    err = error_line(capsys, train_student.parse_args,
                     ["--model_s", "vgg8", "--gpu_id", "1,3", "--teacher_num", "3", "--trial", "0"])
    command = ("CUDA_VISIBLE_DEVICES=1,3 torchrun --nproc_per_node 2 train_student.py --model_s vgg8 "
               "--teacher_num 3 --trial 0")
    assert err.rstrip("\n").endswith(command + " (see --help)"), err


def test_multiprocessing_distributed_gives_the_exact_torchrun_command(monkeypatch, capsys):
    """N from the visible GPUs (or --gpu_id's ids), --dist-url's address kept, every other flag kept
    in order, and the command is one the script accepts."""
    gpus(monkeypatch, 4)
    user = ["--model_s", "vgg8", "--multiprocessing-distributed", "--dist-url", "tcp://127.0.0.1:23451",
            "--distill", "kd+attention:1000", "--data_folder", "my data", "-b", "50"]
    err = error_line(capsys, train_student.parse_args, user)
    expected = ("torchrun --nproc_per_node 4 --master_addr 127.0.0.1 --master_port 23451 train_student.py "
                "--model_s vgg8 --distill kd+attention:1000 --data_folder 'my data' -b 50")
    assert "--multiprocessing-distributed: CA-MKD's spawn is torchrun's job here; run: " + expected in err
    err = error_line(capsys, train_teacher.parse_args, ["--multiprocessing", "--gpu_id=0,2", "--model", "vgg8"])
    assert "run: CUDA_VISIBLE_DEVICES=0,2 torchrun --nproc_per_node 2 train_teacher.py --model vgg8 (see" in err
    # the script's part of the suggested command is a command line it accepts
    rest = shlex.split(expected.split("train_student.py ", 1)[1])
    assert train_student.parse_args(rest + ["--device", "cpu"]).shared.data_folder == "my data"


def test_multiprocessing_distributed_without_gpus(monkeypatch, capsys):
    no_cuda(monkeypatch)
    err = error_line(capsys, train_student.parse_args, ["--multiprocessing-distributed"])
    assert ("--multiprocessing-distributed spawns one process per GPU, and no CUDA GPU is visible on this "
            "machine: run the same command without it (one process)") in err


def test_under_torchrun_the_launch_flags_change_nothing_or_refuse(monkeypatch, capsys):
    gpus(monkeypatch, 2)
    parser = train_student.build_parser()
    ctx = DistContext(rank=0, world_size=2, local_rank=0)
    ns = parser.parse_args(["--multiprocessing-distributed", "--dist-url", "tcp://h:1"])
    choice = reference_flags.resolve(parser, ns, [], "train_student.py", ctx)
    assert choice.device is None
    assert choice.notes == ("--multiprocessing-distributed: already one process per GPU under torchrun; nothing "
                            "to spawn",)
    with pytest.raises(SystemExit):
        reference_flags.resolve(parser, parser.parse_args(["--gpu_id", "1"]), [], "train_student.py", ctx)
    assert "under torchrun each process uses cuda:<LOCAL_RANK>" in capsys.readouterr().err


def test_dist_url_alone_says_it_is_unused(monkeypatch):
    no_cuda(monkeypatch)
    parser = train_teacher.build_parser()
    ns = parser.parse_args(["--dist-url", "tcp://127.0.0.1:23451"])
    notes = reference_flags.resolve(parser, ns, [], "train_teacher.py").notes
    assert notes == ("--dist-url tcp://127.0.0.1:23451: not used (it is the rendezvous of "
                     "--multiprocessing-distributed; torchrun has its own)",)


def test_flags_that_change_nothing_say_so_once(capsys):
    config = student_config("--dali", "cpu", "--tb_freq", "7", "--c_embed", "16")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[2].strip() for line in err] == ["--dali cpu", "--tb_freq 7", "--c_embed 16"]
    assert all(line.startswith("train_student.py: note: ") and "not used" in line for line in err)
    assert config.dali == "cpu" and config.tb_freq == 7
    teacher_configs("--dali", "gpu")
    assert "train_teacher.py: note: --dali gpu: not used" in capsys.readouterr().err


def test_reference_flags_change_no_run_name():
    """They are in run_identity.NOT_RESULT: no folder name or hash changes."""
    plain = student_config(dataset="digits")
    given = student_config("--gpu_id", "0", "--dali", "gpu", "--tb_freq", "5", "--c_embed", "8",
                           "--dist-url", "tcp://h:2", dataset="digits")
    assert student_name(given, ["resnet8"], ["ab"]) == student_name(plain, ["resnet8"], ["ab"])
    teacher = teacher_configs("--gpu_id", "0", "--dali", "cpu", "--tb_freq", "3", dataset="digits")[0]
    assert teacher_folder(teacher) == teacher_folder(teacher_configs(dataset="digits")[0])


def test_without_launch_flags_reads_argparse_spellings():
    parser = train_student.build_parser()
    argv = ["--multiprocessing", "--gpu_id=0,1", "--dist-url", "tcp://x:1", "--epochs", "3", "--dist-url=u", "-r", "1"]
    assert reference_flags.without_launch_flags(argv, parser) == ["--epochs", "3", "-r", "1"]


# The --model_s / --model choices of CA-MKD's and RepDistiller's scripts and mdistiller's CIFAR model
# dictionary (its DISTILLER.TEACHER/STUDENT names for tools/train.py).
REFERENCE_MODELS = sorted(set("""
resnet8 resnet14 resnet20 resnet32 resnet44 resnet56 resnet110 resnet8x4 resnet32x4 wrn_16_1 wrn_16_2 wrn_40_1
wrn_40_2 vgg8 vgg11 vgg13 vgg16 vgg19 ResNet50 MobileNetV2 ShuffleV1 ShuffleV2
ResNet18 ResNet34 ResNet101 ResNet152 resnet8x4_double resnet20x4 wrn_50_2 vgg8_imagenet ShuffleV2_0_5 ResNet10
shufflenet_v2_x0_5 MobileNetV2_Imagenet ShuffleV2_Imagenet ResNet34x2
""".split()))


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_every_reference_model_name_is_accepted(name, monkeypatch):
    """Each name resolves for the student and the teacher, on CIFAR-sized data or (an ImageNet
    model) on ImageNet. Names the zoo does not have yet (models/ is another change of issue 27)
    are skipped and listed."""
    from models import imagenet_model_dict, model_dict
    no_cuda(monkeypatch)
    if name not in model_dict and name not in imagenet_model_dict:
        pytest.skip(f"{name}: not in the model zoo yet (issue 27 item 1, models/)")
    dataset = "cifar100" if name in model_dict else "imagenet"
    assert student_config("--model_s", name, "--dataset", dataset).model_s == name
    assert teacher_configs("--model", name, "--dataset", dataset)[0].model == name
