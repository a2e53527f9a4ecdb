"""helper/checkpoint.py: checkpoints written atomically with the user's permissions; the checkpoint a
--resume continues from is checked in one line (another program's, another architecture's, an
unreadable file, more epochs than asked for, tensors that do not fit the run)."""
import os
import stat

import pytest
import torch

import train_teacher
from helper.checkpoint import atomic_save, load_for_resume, state_mismatch
from helper.errors import ResumeError
from models import model_dict

from builders import SESSION_TEACHER, copy_session_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("content, needle", [
    ("repdistiller", "no 'best' or 'rng' entry"),
    ("other_arch", "checkpoint of arch 'resnet20'"),
    ("garbage", "cannot read"),
])
def test_resume_from_a_foreign_checkpoint_is_one_line(digits_teachers, tmp_path, capsys, content, needle):
    save = str(tmp_path / "save")
    last = os.path.join(copy_session_teacher(digits_teachers, save), "resnet8_last.pth")
    state = torch.load(last, weights_only=True)
    if content == "repdistiller":                               # RepDistiller: model, optimizer, epoch, best_acc
        torch.save({k: state[k] for k in ("model", "optimizer", "epoch", "best_acc")}, last)
    elif content == "other_arch":
        state["arch"] = "resnet20"
        state["model"] = model_dict["resnet20"](num_classes=10).state_dict()
        torch.save(state, last)
    else:
        with open(last, "wb") as f:
            f.write(b"PK\x03\x04 not a zip")
    code = train_teacher.main([*SESSION_TEACHER, "--save_dir", save, "--resume", "--epochs", "9"])
    assert code == 2 and needle in one_line_error(capsys)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_save({"x": torch.zeros(1)}, str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c.pth").st_mode) == mode
    assert os.listdir(tmp_path) == ["c.pth"]


def run_checkpoint(path, epoch):
    atomic_save({"model": {}, "optimizer": {}, "epoch": epoch, "best": {}, "rng": {}, "arch": "resnet8"}, path)


def test_a_resume_never_shortens_a_run(tmp_path):
    path = str(tmp_path / "resnet8_last.pth")
    run_checkpoint(path, 5)
    assert load_for_resume(path, epochs=5)["epoch"] == 5 and load_for_resume(path, epochs=9)["epoch"] == 5
    with pytest.raises(ResumeError, match=r"--resume --epochs 4: .* already holds epoch 5; give --epochs 5 or more"):
        load_for_resume(path, expect={"arch": "resnet8"}, epochs=4)


def test_state_mismatch_names_the_first_difference():
    expected = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert state_mismatch({"a.weight": torch.ones(2, 3), "a.bias": torch.ones(2)}, expected) is None
    assert state_mismatch({"a.weight": torch.ones(2, 3)}, expected) == "missing keys a.bias"
    assert state_mismatch(dict(expected, **{f"x{i}": 0 for i in range(5)}), expected) == \
        "unexpected keys x0, x1, x2 (+2 more)"
    assert state_mismatch({"a.weight": torch.ones(3, 2), "a.bias": torch.ones(2)}, expected) == \
        "a.weight has shape (3, 2) in the checkpoint, (2, 3) in this run"
    assert state_mismatch([1, 2], expected) == "a list where a state_dict belongs"
