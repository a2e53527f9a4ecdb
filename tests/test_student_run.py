"""helper/student_run.py: teachers are checked before anything runs, and a run whose build fails
leaves nothing behind: every student of a group is built and checked, and every folder locked,
before any folder is changed; a start that fails before training removes the new runs' folders."""
import os

import pytest
import torch

import train_student
from helper import student_run
from helper.errors import RunError
from helper.run_identity import file_digest
from helper.run_lock import RunLock
from models import model_dict

from builders import session_teacher_checkpoint, student_name, student_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("problem", ["other_dataset", "nan_weights", "same_file_twice"])
def test_teachers_from_another_data_set_or_broken_or_twice_are_refused(tmp_path, capsys, problem):
    model = model_dict["resnet8"](num_classes=10)
    path = str(tmp_path / "resnet8_best.pth")
    state = model.state_dict()
    if problem == "nan_weights":
        state["fc.weight"][0, 0] = float("nan")
    torch.save({"model": state, "arch": "resnet8",
                "dataset": "cifar10" if problem == "other_dataset" else "digits"}, path)
    paths = [path]
    if problem == "same_file_twice":                 # one checkpoint under two names
        os.link(path, str(tmp_path / "copy.pth"))
        paths.append(str(tmp_path / "copy.pth"))
    code = train_student.main(["--dataset", "digits", "--save_dir", str(tmp_path), "--quiet", "--model_s", "resnet8",
                               "--epochs", "1", "--path_t", *paths] + (["--model_t", "resnet8"] if len(paths) > 1 else []))
    err = one_line_error(capsys)
    assert code == 2
    assert {"other_dataset": "trained on cifar10, this run uses --dataset digits",
            "nan_weights": "non-finite", "same_file_twice": "are the same checkpoint"}[problem] in err
    assert not os.path.exists(os.path.join(tmp_path, "students"))


@pytest.fixture
def group(digits_teachers, tmp_path):
    """(argv, [folder of each student]) of a group of two students (kd, dkd) on a session teacher."""
    teacher = session_teacher_checkpoint(digits_teachers)
    argv = ["--dataset", "digits", "--save_dir", str(tmp_path), "--quiet", "--model_s", "resnet8", "--epochs", "1",
            "--batch_size", "256", "--skip_validation", "--path_t", teacher, "--distill", "kd,dkd"]
    plan = student_plan(*argv)
    folders = [os.path.join(str(tmp_path), "students", student_name(m.config, ["resnet8"], [file_digest(teacher)]))
               for m in plan.members]
    return argv, folders


def test_a_group_whose_second_folder_is_in_use_creates_nothing(group, capsys):
    argv, (first, second) = group
    os.makedirs(second)
    other = RunLock(second).acquire()                 # another run writes the second student's folder
    try:
        assert train_student.main(argv) == 2
    finally:
        other.release()
    err = one_line_error(capsys)
    assert f"run folder {second} is in use by process {os.getpid()}" in err
    assert not os.path.exists(first)                  # the first student's folder was made, then removed
    assert os.listdir(second) == []


def test_a_start_that_fails_before_training_leaves_no_folder(group, monkeypatch, capsys):
    """The second student's start fails after the first student's folder holds its args.json and
    logs: both new runs' folders go."""
    argv, folders = group
    real, calls = student_run.build_optimizer, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            assert os.path.isfile(os.path.join(folders[0], "args.json"))
            raise RunError("--optimizer: refused (a late failure)")
        return real(*args, **kwargs)
    monkeypatch.setattr(student_run, "build_optimizer", fails_second)
    assert train_student.main(argv) == 2
    assert "refused (a late failure)" in one_line_error(capsys)
    assert not any(os.path.exists(f) for f in folders)
