"""helper/runfolder.py: a run folder belongs to one run (a second start is refused, --overwrite
replaces, stale temporaries go), --resume continues the run that was started or refuses in one
line (other flags, another seed, a corrupt metrics line, fewer epochs than trained, a checkpoint
that does not fit), and claim_all locks every folder of a run before it changes any.

The teacher runs are copies of the session's teachers (tests/conftest.py); nothing here trains a
teacher from scratch."""
import json
import os

import pytest
import torch

import train_student
import train_teacher
from helper import runfolder
from helper.errors import RunFolderError
from helper.run_lock import LOCK_NAME, RunLock

from builders import SESSION_TEACHER, copy_session_teacher, session_teacher_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def snapshot(folder):
    """{file name: bytes} of a folder (to show that a refused run changed nothing)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


@pytest.fixture
def finished_teacher(digits_teachers, tmp_path):
    """(save folder, run folder) of a private copy of a finished session teacher (trial 0)."""
    save = str(tmp_path / "save")
    return save, copy_session_teacher(digits_teachers, save)


def teacher_argv(save, *more):
    return [*SESSION_TEACHER, "--save_dir", save, *more]


# -- a run folder belongs to one run -----------------------------------------------------------------
def test_a_second_run_into_a_run_folder_is_refused_and_changes_nothing(finished_teacher, capsys):
    save, folder = finished_teacher
    before = snapshot(folder)
    assert train_teacher.main(teacher_argv(save)) == 2
    err = one_line_error(capsys)
    assert os.path.basename(folder) in err and "already holds a finished run" in err
    assert "--resume" in err and "--tag" in err and "--overwrite" in err
    assert snapshot(folder) == before        # args.json and checkpoints untouched
    assert not os.path.exists(os.path.join(folder, LOCK_NAME))


def test_overwrite_replaces_the_run_and_its_files(finished_teacher):
    save, folder = finished_teacher
    open(os.path.join(folder, "ckpt_epoch_40.pth"), "wb").close()   # a file only the old run had
    assert train_teacher.main(teacher_argv(save, "--overwrite", "--epochs", "1")) == 0
    assert "ckpt_epoch_40.pth" not in os.listdir(folder)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        assert len(f.readlines()) == 1


def test_stale_temporaries_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    names = [".tmp-a1b2c3.pth", ".tmp-zz.pth", ".args.json.0f0f.tmp", "summary.json.tmp"]
    for n in names:
        open(os.path.join(run_dir, n), "wb").close()
    open(os.path.join(run_dir, "resnet8_last.pth"), "wb").close()
    runfolder.claim(run_dir, resume=True, overwrite=False).release()
    assert os.listdir(run_dir) == ["resnet8_last.pth"]


def test_claim_all_locks_every_folder_before_it_changes_one(tmp_path):
    """The second folder is in use: the first (an earlier run there, --overwrite) keeps its files,
    a folder the claim made is removed, no lock stays."""
    kept, made, busy = (str(tmp_path / n) for n in ("kept", "made", "busy"))
    os.makedirs(kept)
    open(os.path.join(kept, "resnet8_last.pth"), "wb").close()
    os.makedirs(busy)
    other = RunLock(busy).acquire()
    with pytest.raises(RunFolderError, match="busy is in use"):
        runfolder.claim_all([(kept, False, True), (made, False, False), (busy, False, False)])
    assert os.listdir(kept) == ["resnet8_last.pth"] and not os.path.exists(made)
    assert os.listdir(busy) == [LOCK_NAME]
    other.release()
    claims = runfolder.claim_all([(kept, False, True), (made, False, False)])
    assert os.listdir(kept) == [LOCK_NAME] and os.listdir(made) == [LOCK_NAME]     # --overwrite cleared it
    for c in claims:
        c.abandon()                               # a start that failed before training
    assert os.listdir(kept) == [] and not os.path.exists(made)       # made by this claim: removed


# -- --resume continues the run that was started, or refuses -----------------------------------------
def test_resume_with_other_result_flags_is_refused_listing_them(finished_teacher, capsys):
    save, folder = finished_teacher
    before = snapshot(folder)
    code = train_teacher.main(teacher_argv(save, "--resume", "--momentum", "0.5", "--batch_size", "32", "--cosine"))
    err = one_line_error(capsys)
    assert code == 2 and "started with other settings" in err
    assert "--momentum 0.9 -> 0.5" in err and "--batch_size 64 -> 32" in err and "--cosine False -> True" in err
    assert snapshot(folder) == before


def test_resume_with_nothing_to_resume_leaves_no_folder(tmp_path, capsys):
    save = tmp_path / "save"
    assert train_teacher.main(teacher_argv(str(save), "--resume")) == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert not (save / "teachers").exists()


def test_a_corrupt_line_in_the_middle_of_metrics_is_refused_not_dropped(finished_teacher, capsys):
    save, folder = finished_teacher
    path = os.path.join(folder, "metrics.jsonl")
    with open(path) as f:
        lines = f.readlines()
    lines[3] = '{"epoch": 4, "train_lo\n'                    # damaged, but not the last line
    with open(path, "w") as f:
        f.writelines(lines)
    before = snapshot(folder)
    assert train_teacher.main(teacher_argv(save, "--resume", "--epochs", "9")) == 2
    err = one_line_error(capsys)
    assert f"{path} line 4 is not an epoch record" in err and "--overwrite" in err
    assert snapshot(folder) == before


def test_resume_with_fewer_epochs_than_trained_is_refused(finished_teacher, capsys):
    """Killed after its last checkpoint but before summary.json: --epochs 7 would relabel an 8-epoch
    run; refused. With --epochs 8 the summary is written from what the run holds."""
    save, folder = finished_teacher
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    os.remove(os.path.join(folder, "summary.json"))
    before = snapshot(folder)
    assert train_teacher.main(teacher_argv(save, "--resume", "--epochs", "7")) == 2
    err = one_line_error(capsys)
    assert "already holds epoch 8" in err and "--epochs 8 or more" in err
    assert snapshot(folder) == before
    assert train_teacher.main(teacher_argv(save, "--resume")) == 0
    with open(os.path.join(folder, "summary.json")) as f:
        again = json.load(f)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    assert again["last_epoch"] == 8 and again["last_acc"] == last["test_acc"] == summary["last_acc"]
    assert again["best_epoch"] == summary["best_epoch"] and again["best_acc"] == summary["best_acc"]


def test_resume_with_a_seed_the_run_did_not_start_with_is_refused(finished_teacher, capsys):
    save, folder = finished_teacher
    path = os.path.join(folder, "args.json")
    with open(path) as f:
        args = json.load(f)
    args["seed_used"] = 4242                       # e.g. a label's seed under an earlier version
    with open(path, "w") as f:
        json.dump(args, f)
    assert train_teacher.main(teacher_argv(save, "--resume", "--epochs", "9")) == 2
    err = one_line_error(capsys)
    assert "started with seed 4242" in err and "now has seed 0" in err and "--overwrite" in err


def test_student_resume_with_other_teachers_kd_T_or_a_checkpoint_that_does_not_fit_is_refused(
        digits_teachers, tmp_path, capsys):
    t0, t1 = (session_teacher_checkpoint(digits_teachers, trial) for trial in ("0", "1"))
    save = str(tmp_path)
    common = ["--dataset", "digits", "--save_dir", save, "--quiet", "--model_s", "resnet8", "--epochs", "1",
              "--batch_size", "256", "--skip_validation"]
    assert train_student.main(common + ["--path_t", t0]) == 0
    capsys.readouterr()
    assert train_student.main(common + ["--path_t", t0, "--kd_T", "10", "--resume"]) == 2
    assert "--kd_T 4 -> 10" in one_line_error(capsys)
    assert train_student.main(common + ["--path_t", t1, "--resume"]) == 2
    assert "the teachers' checkpoints" in one_line_error(capsys)
    (folder,) = [os.path.join(save, "students", d) for d in os.listdir(os.path.join(save, "students"))]
    last = os.path.join(folder, "resnet8_last.pth")
    state = torch.load(last, weights_only=True)
    state["model"]["fc.weight"] = torch.zeros(3, 3)               # a tensor of another shape
    torch.save(state, last)
    before = snapshot(folder)
    assert train_student.main(common + ["--path_t", t0, "--resume"]) == 2
    err = one_line_error(capsys)
    assert "does not fit this run: fc.weight has shape (3, 3) in the checkpoint" in err
    assert snapshot(folder) == before                             # refused before anything was written
