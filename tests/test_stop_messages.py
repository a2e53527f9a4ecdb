"""helper/stop_messages.py and the scripts' ``main``: a run that stops early (Ctrl-C, SIGTERM/SIGUSR1/
SIGHUP from a scheduler, a full disk, a NaN loss) prints one line that says where it can go on
from, releases its lock and exits with the conventional status; and every command or flag a
message suggests is one the program accepts (parsed here by the program's own parser).

Signals are real: sent to a real training subprocess (SIGTERM), or by the test process to itself
while main() runs in it (SIGUSR1, SIGHUP). A full disk is real too: the kernel refuses writes
beyond RLIMIT_FSIZE in a subprocess."""
import errno
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_student
import train_teacher
from helper import runfolder, student_run, teacher_run
from helper.checkpoint import atomic_save, load_for_resume
from helper.errors import ResumeError, RunFolderError
from helper.manifest import manifest_path, read_manifest
from helper.run_lock import LOCK_NAME, LockError, RunLock
from helper.stop_messages import checkpoint_status, error_message, resume_command
from helper.student_step import StudentTask
from helper.task import ClassifierTask, StepOutput

from builders import (SESSION_TEACHER, SUITE_DIGITS, copy_session_teacher, session_teacher_checkpoint,
                      teacher_configs)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--model", "resnet8", "--dataset", "digits", *SUITE_DIGITS, "--quiet", "--batch_size", "256"]
ONE_EPOCH = BASE + ["--epochs", "1"]
SCRIPTS = {"train_teacher.py": train_teacher, "train_student.py": train_student}


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def only_run_dir(save):
    (name,) = os.listdir(os.path.join(save, "teachers"))
    return os.path.join(save, "teachers", name)


def assert_advice_works(message, script="train_teacher.py"):
    """Every ``python SCRIPT ARGS`` command in ``message`` parses with SCRIPT's own parser, and
    every flag it names (``--flag``, ``-r``; after ``other.py`` that program's) is one of the
    program's options. Returns the commands' argument lists."""
    commands = []
    for prog, args in re.findall(r"python (train_\w+\.py) (.+?)(?= \(|$|; )", message):
        module = SCRIPTS[prog]
        commands.append(shlex.split(args))
        module.parse_args(commands[-1], module.build_parser())      # a bad command exits (SystemExit)
    prose = re.sub(r"python train_\w+\.py .+?(?= \(|$|; )", "", message)
    prose = re.sub(r"(?<![\w-])/\S*", "", prose)                  # paths are no flags
    owner = script
    for word in re.findall(r"train_\w+\.py|(?<![\w-])--?[A-Za-z][\w-]*", prose):
        if word.endswith(".py"):
            owner = word
            continue
        flags = SCRIPTS[owner].build_parser()._option_string_actions
        assert word in flags, f"{word} (in {message!r}) is not a flag of {owner}"
    return commands


def stop_in_epoch(monkeypatch, task_cls, epoch, step, make):
    """``task_cls.train_step`` hands its output to ``make`` at ``step`` of ``epoch``."""
    original, calls = task_cls.train_step, {"n": 0}

    def patched(self, batch, e, *args):
        out = original(self, batch, e, *args)
        if e == epoch:
            calls["n"] += 1
            if calls["n"] == step:
                return make(out)
        return out
    monkeypatch.setattr(task_cls, "train_step", patched)


def test_ctrl_c_prints_where_it_stopped_and_the_resume_command(tmp_path, monkeypatch, capsys):
    def interrupt(out):
        raise KeyboardInterrupt
    stop_in_epoch(monkeypatch, ClassifierTask, 2, 2, interrupt)
    argv = BASE + ["--epochs", "2", "--save_dir", str(tmp_path)]
    assert train_teacher.main(argv) == 130
    err = one_line_error(capsys)
    assert "interrupted (Ctrl-C)" in err and "holds epoch 1 of 2" in err and "Traceback" not in err
    command = err.split("continue with: ")[1]
    assert command.startswith("python train_teacher.py ") and command.endswith(" --resume")
    assert not os.path.exists(os.path.join(only_run_dir(str(tmp_path)), LOCK_NAME))
    monkeypatch.undo()
    (args,) = assert_advice_works(err)
    assert train_teacher.main(args) == 0                              # the printed command works


@pytest.mark.parametrize("signum, status", [(signal.SIGHUP, 129), (signal.SIGUSR1, 138)])
def test_a_teacher_stopped_by_a_signal_says_so_and_exits_128_plus_n(tmp_path, monkeypatch, capsys, signum, status):
    def send(out):
        os.kill(os.getpid(), signum)                                  # raised at the next bytecode
        return out
    stop_in_epoch(monkeypatch, ClassifierTask, 2, 1, send)
    before = signal.getsignal(signum)
    assert train_teacher.main(BASE + ["--epochs", "3", "--save_dir", str(tmp_path)]) == status
    err = one_line_error(capsys)
    assert f"stopped by {signal.Signals(signum).name} in trial 0; the last checkpoint" in err
    assert "holds epoch 1 of 3" in err and err.endswith(" --resume")
    assert signal.getsignal(signum) is before                         # handlers restored
    assert not os.path.exists(os.path.join(only_run_dir(str(tmp_path)), LOCK_NAME))
    assert_advice_works(err)


def test_a_student_stopped_by_sigusr1_before_its_first_checkpoint(digits_teachers, tmp_path, monkeypatch, capsys):
    def send(self, batch, epoch, *args):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(1)                                                 # (the handler interrupts the sleep)
        pytest.fail("SIGUSR1 did not stop the run")
    monkeypatch.setattr(StudentTask, "train_step", send)
    teacher = session_teacher_checkpoint(digits_teachers)
    code = train_student.main(["--dataset", "digits", "--save_dir", str(tmp_path), "--quiet", "--model_s", "resnet8",
                               "--epochs", "1", "--batch_size", "256", "--skip_validation", "--path_t", teacher])
    err = one_line_error(capsys)
    assert code == 138 and "stopped by SIGUSR1; no checkpoint was written in" in err
    assert "the same command starts the run over: python train_student.py" in err
    (run_dir,) = [os.path.join(tmp_path, "students", d) for d in os.listdir(tmp_path / "students")]
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))
    assert_advice_works(err, "train_student.py")


@pytest.mark.slow
def test_sigterm_stops_a_real_run_cleanly_and_the_printed_command_continues_it(tmp_path):
    """A scheduler's SIGTERM to a training process: one line, exit 143, no lock, consistent files;
    the line's command parses, and the run continues from its checkpoint."""
    save = str(tmp_path)
    data = ["--dataset", "synthetic", "--synthetic_train", "64", "--synthetic_test", "32", "--synthetic_classes", "4"]
    argv = ["--model", "resnet8", *data, "--batch_size", "32", "--quiet", "--device", "cpu", "--save_dir", save]
    proc = subprocess.Popen([sys.executable, "train_teacher.py", *argv, "--epochs", "400"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 240
        while not glob.glob(os.path.join(glob.escape(save), "teachers", "*", "resnet8_last.pth")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_dir = only_run_dir(save)
    assert proc.returncode == 143, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("train_teacher.py: stopped by SIGTERM in trial 0; "), err
    assert sorted(n for n in os.listdir(run_dir) if not n.startswith("events")) == [
        "args.json", "log.txt", "metrics.jsonl", "resnet8_best.pth", "resnet8_last.pth", "run_info.json"]
    epoch = load_for_resume(os.path.join(run_dir, "resnet8_last.pth"))["epoch"]
    assert f"holds epoch {epoch} of 400" in line
    (args,) = assert_advice_works(line)
    assert args == [*argv, "--epochs", "400", "--resume"]
    assert train_teacher.main([*argv, "--epochs", str(epoch + 1), "--resume"]) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        assert [json.loads(x)["epoch"] for x in f] == list(range(1, epoch + 2))


RUN_UNDER_A_SIZE_LIMIT = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                          "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
                          "sys.argv = ['train_teacher.py'] + sys.argv[1:]; "
                          "runpy.run_path('train_teacher.py', run_name='__main__')")


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_resume_continues_once_it_can(
        digits_teachers, tmp_path):
    """The kernel refuses the epoch-9 checkpoint (a 650 kB file under a 200 kB limit; a full disk
    fails alike, ENOSPC): one line naming the file and the reason, the epoch-8 checkpoints kept
    intact, no temporary; once it can be written, the printed --resume command continues the run."""
    save = str(tmp_path / "save")
    folder = copy_session_teacher(digits_teachers, save)
    argv = [*SESSION_TEACHER, "--save_dir", save, "--epochs", "9", "--resume"]
    done = subprocess.run([sys.executable, "-c", RUN_UNDER_A_SIZE_LIMIT, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    err = done.stderr.strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"error: file system error: \S+/resnet8_(best|last)\.pth: File too large", err), err
    assert "raise the limit, then in trial 0: the last checkpoint" in err and "holds epoch 8 of 9" in err
    for name in ("resnet8_last.pth", "resnet8_best.pth"):
        assert torch.load(os.path.join(folder, name), weights_only=True)["epoch"] <= 8
    assert not [n for n in os.listdir(folder) if "tmp" in n or n == LOCK_NAME]
    (args,) = assert_advice_works(err)
    assert args == argv
    assert train_teacher.main(args) == 0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        assert [json.loads(x)["epoch"] for x in f] == list(range(1, 10))


def test_full_disk_during_training_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    """The first checkpoint cannot be written: the line names it, says that no checkpoint exists
    (so the same command, not --resume, starts over) and leaves no temporary file."""
    real = os.fsync

    def full(fd):
        if ".tmp-" in os.readlink(f"/proc/self/fd/{fd}"):           # a checkpoint's temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", full)
    argv = ONE_EPOCH + ["--save_dir", str(tmp_path)]
    code = train_teacher.main(argv)
    err = one_line_error(capsys)
    assert code == 1 and re.search(r"file system error: \S+/resnet8_(best|last)\.pth: No space left on device "
                                   r"\(the disk is full\); free space, then in trial 0: no checkpoint was written", err)
    assert "--resume" not in err and assert_advice_works(err) == [argv]
    assert not [n for n in os.listdir(only_run_dir(str(tmp_path))) if n.endswith((".tmp", ".pth"))]
    assert read_manifest(manifest_path(str(tmp_path))) == {}


def test_read_only_save_folder_is_one_line(tmp_path, monkeypatch, capsys):
    real = os.makedirs

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "makedirs", read_only)
    code = train_teacher.main(ONE_EPOCH + ["--save_dir", str(tmp_path / "save")])
    err = one_line_error(capsys)
    assert code == 1 and "Read-only file system" in err and "writable --save_dir" in err
    assert_advice_works(err)


@pytest.mark.parametrize("epoch, status", [(1, "no checkpoint was written"), (2, "holds epoch 1 of 2")])
def test_nan_stop_says_whether_a_checkpoint_exists_and_likely_causes(tmp_path, monkeypatch, capsys, epoch, status):
    stop_in_epoch(monkeypatch, ClassifierTask, epoch, 2,
                  lambda out: StepOutput(out.loss * float("nan"), out.logits, out.labels))
    argv = BASE + ["--epochs", "2", "--save_dir", str(tmp_path)]
    assert train_teacher.main(argv) == 1
    err = one_line_error(capsys)
    assert f"non-finite training loss at epoch {epoch}" in err and status in err and "likely causes" in err
    assert "--weight_decay" in err and "checkpoint is kept" not in err
    assert_advice_works(err)


def test_student_ctrl_c_before_the_first_checkpoint_says_so(digits_teachers, tmp_path, monkeypatch, capsys):
    def interrupt(self, batch, epoch, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(StudentTask, "train_step", interrupt)
    teacher = session_teacher_checkpoint(digits_teachers)
    code = train_student.main(["--dataset", "digits", "--save_dir", str(tmp_path), "--quiet", "--model_s", "resnet8",
                               "--epochs", "1", "--batch_size", "256", "--skip_validation", "--path_t", teacher])
    err = one_line_error(capsys)
    assert code == 130 and "interrupted (Ctrl-C)" in err and "no checkpoint was written" in err
    (run_dir,) = [os.path.join(tmp_path, "students", d) for d in os.listdir(tmp_path / "students")]
    assert not os.path.exists(os.path.join(run_dir, LOCK_NAME))
    assert_advice_works(err, "train_student.py")


# -- every suggestion is one the program accepts -----------------------------------------------------
def test_resume_commands_drop_every_spelling_of_the_flags_they_replace():
    parser = train_teacher.build_parser()
    argv = ["--model", "resnet8", "--over", "--epochs", "3", "--take_over", "--resu", "--tag", "t"]
    assert resume_command("train_teacher.py", argv, parser) == \
        "python train_teacher.py --model resnet8 --epochs 3 --tag t --resume"
    assert resume_command("train_teacher.py", ["--overwrite", "--epochs", "3"]) == \
        "python train_teacher.py --epochs 3 --resume"                      # without a parser: exact names


def test_every_suggested_flag_and_command_is_accepted(tmp_path):
    """The refusals and stop lines that suggest what to do (folder taken, locks, resume checks, the
    NaN causes, the manifest's name conflict), parsed by the programs that print them."""
    teacher_argv = ["--model", "resnet8", "--dataset", "digits", "--resume", "--epochs", "2"]
    student_argv = ["--dataset", "digits", "--path_t", "t.pth", "--overwrite", "--take_over_lock"]
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    messages = []

    def refusal(call, *args, **kw):
        with pytest.raises((RunFolderError, ResumeError, LockError)) as e:
            call(*args, **kw)
        return e.value

    open(os.path.join(folder, "resnet8_last.pth"), "wb").close()
    messages.append(str(refusal(runfolder.check_free, folder, False)))
    held = RunLock(folder).acquire()
    messages += [str(refusal(RunLock(folder).acquire, resume=r)) for r in (False, True)]
    held.release()
    with open(os.path.join(folder, LOCK_NAME), "w") as f:
        f.write("7 elsewhere\n")
    lock_error = refusal(RunLock(folder).acquire)
    for prog, argv in (("train_teacher.py", teacher_argv), ("train_student.py", student_argv)):
        line = error_message(lock_error, prog, argv, SCRIPTS[prog].build_parser())
        (command,) = assert_advice_works(line, prog)
        assert command.count("--take_over_lock") == 1
    os.remove(os.path.join(folder, LOCK_NAME))
    atomic_save({"model": {}, "optimizer": {}, "epoch": 3, "arch": "resnet8"}, os.path.join(folder, "resnet8_last.pth"))
    messages.append(str(refusal(load_for_resume, os.path.join(folder, "resnet8_last.pth"))))   # RepDistiller's
    messages.append(checkpoint_status(folder, "resnet8", "train_teacher.py", teacher_argv, 9,
                                      parser=train_teacher.build_parser()))
    messages.append(checkpoint_status(str(tmp_path / "none"), "resnet8", "train_teacher.py", teacher_argv, 9,
                                      parser=train_teacher.build_parser()))
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write('x\n{"epoch": 1}\n')
    parser = train_teacher.build_parser()
    config = teacher_configs(*teacher_argv)[0]
    messages.append(str(refusal(runfolder.check_resume, parser, folder, {}, seed=0)))
    os.remove(os.path.join(folder, "metrics.jsonl"))
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump({"seed_used": 5, "momentum": 0.5}, f)
    messages.append(str(refusal(runfolder.check_resume, parser, folder, {"momentum": 0.9})))
    messages.append(str(refusal(runfolder.check_resume, parser, folder, {}, seed=0)))
    for text in messages:
        assert_advice_works(text)
    assert_advice_works(student_run.NAN_CAUSES, "train_student.py")
    assert_advice_works(teacher_run.NAN_CAUSES, "train_teacher.py")
    # the manifest's name conflict, as train_teacher.py refuses it before training
    from helper.manifest import add_teacher
    other = tmp_path / "save" / "teachers" / "other"
    other.mkdir(parents=True)
    add_teacher(manifest_path(str(tmp_path / "save")), model="resnet8", dataset="digits", trial="0",
                checkpoint=str(other / "resnet8_best.pth"), best_acc=1.0)
    run = teacher_run.TeacherRun(parser, [config.replace(save_dir=str(tmp_path / "save"), resume=False)], None)
    with pytest.raises(teacher_run.RunError) as e:
        run.start(run.trials[0])
    assert "already names the teacher in" in str(e.value)
    assert_advice_works(str(e.value))
