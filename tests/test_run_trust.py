"""Runs people can trust (issue 17): a run folder belongs to one run, --resume continues the run
that was started or refuses, every flag is validated where it is read, and every failure is one
line with nothing left half done. (Reading data never runs code: tests/test_data_cifar.py.)

Most cases parse flags only or use one epoch of digits with a small batch count."""
import errno
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

import setting
import train_student
import train_teacher
from helper import runfolder
from helper.checkpoint import atomic_save
from helper.task import ClassifierTask, StepOutput
from helper.manifest import ManifestError, add_teacher, manifest_path, read_manifest
from helper.results import find_runs
from models import model_dict

from builders import student_config, student_name, teacher_configs, teacher_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--model", "resnet8", "--dataset", "digits", "--quiet", "--batch_size", "256"]
ONE_EPOCH = BASE + ["--epochs", "1"]
PLAIN = "resnet8_digits_lr_0.05_decay_0.0005_trial_0"           # RepDistiller's name
TEACHER_DIR = PLAIN + "_batch_size~256"                         # ... and the flag not at its default


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def teacher_dir(save):
    return os.path.join(save, "teachers", TEACHER_DIR)


def snapshot(folder):
    """{file name: bytes} of a folder (to show that a refused run changed nothing)."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


@pytest.fixture(scope="module")
def one_epoch_teachers(tmp_path_factory):
    """Two resnet8 teachers trained for one epoch on digits (trials 0 and 1)."""
    save = str(tmp_path_factory.mktemp("one_epoch"))
    assert train_teacher.main(ONE_EPOCH + ["--trials", "2", "--save_dir", save]) == 0
    return save


@pytest.fixture
def finished_teacher(one_epoch_teachers, tmp_path):
    """A private copy of a finished one-epoch teacher run folder (trial 0) and its manifest."""
    import shutil
    save = str(tmp_path / "save")
    shutil.copytree(teacher_dir(one_epoch_teachers), teacher_dir(save))
    return save


def teacher_paths(save):
    return [os.path.join(save, "teachers", d, "resnet8_best.pth")
            for d in (TEACHER_DIR, TEACHER_DIR.replace("trial_0", "trial_1"))]


# -- class 2: a run folder belongs to one run ------------------------------------------------------
def test_a_second_run_into_a_run_folder_is_refused_and_changes_nothing(finished_teacher, capsys):
    before = snapshot(teacher_dir(finished_teacher))
    with_other_momentum = ONE_EPOCH + ["--save_dir", finished_teacher]
    assert train_teacher.main(with_other_momentum) == 2
    err = one_line_error(capsys)
    assert TEACHER_DIR in err and "already holds a finished run" in err
    assert "--resume" in err and "--tag" in err and "--overwrite" in err
    assert snapshot(teacher_dir(finished_teacher)) == before        # args.json and checkpoints untouched
    assert not os.path.exists(os.path.join(teacher_dir(finished_teacher), runfolder.LOCK_NAME))


def test_overwrite_replaces_the_run_and_its_files(finished_teacher):
    folder = teacher_dir(finished_teacher)
    open(os.path.join(folder, "ckpt_epoch_40.pth"), "wb").close()   # a file only the old run had
    assert train_teacher.main(ONE_EPOCH + ["--save_dir", finished_teacher, "--overwrite"]) == 0
    assert "ckpt_epoch_40.pth" not in os.listdir(folder)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        assert len(f.readlines()) == 1


def test_a_live_lock_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    lock_path = os.path.join(run_dir, runfolder.LOCK_NAME)
    import socket
    with open(lock_path, "w") as f:                   # a live process (this test's parent) holds it
        f.write(f"{os.getppid()} {socket.gethostname()}\n")
    with pytest.raises(runfolder.RunFolderError, match=rf"in use by process {os.getppid()}") as e:
        runfolder.claim(run_dir, resume=False, overwrite=False)
    assert "\n" not in str(e.value)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                       # a dead process (kill -9) left its lock
    with open(lock_path, "w") as f:
        f.write(f"{gone.pid} {socket.gethostname()}\n")
    lock = runfolder.claim(run_dir, resume=False, overwrite=False)
    with open(lock_path) as f:
        assert f.read().split()[0] == str(os.getpid())
    with pytest.raises(runfolder.RunFolderError, match=rf"in use by process {os.getpid()}"):
        runfolder.claim(run_dir, resume=True, overwrite=False)     # a second run while this one writes
    lock.release()
    assert not os.path.exists(lock_path)


def test_stale_temporaries_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    names = [".tmp-a1b2c3.pth", ".tmp-zz.pth", ".args.json.0f0f.tmp", "summary.json.tmp"]
    for n in names:
        open(os.path.join(run_dir, n), "wb").close()
    open(os.path.join(run_dir, "resnet8_last.pth"), "wb").close()
    runfolder.claim(run_dir, resume=True, overwrite=False).release()
    assert os.listdir(run_dir) == ["resnet8_last.pth"]


def test_teacher_folder_names_tell_result_changing_flags_apart():
    def folder(*argv):
        return teacher_folder(teacher_configs("--model", "resnet8", "--dataset", "digits", *argv)[0])
    assert folder() == PLAIN                                         # RepDistiller's name is kept
    assert folder("--seed", "5") == PLAIN + "_seed~5"
    assert folder("--loss", "evidential").endswith("_loss~evidential")
    assert folder("--cosine", "--momentum", "0.5") == PLAIN + "_momentum~0.5_cosine"
    assert folder("--epochs", "3", "--print_freq", "5", "--quiet") == PLAIN   # not result-changing
    assert len({folder(), folder("--seed", "1"), folder("--trial", "1"), folder("--batch_size", "32")}) == 4


def _student_args(*argv):
    return student_config("--dataset", "digits", *argv)


def test_student_names_differ_in_teachers_seed_and_loss_flags_and_are_folder_safe():
    base = _student_args()
    name = student_name(base, ["resnet8"], ["aaaa"])
    assert name.startswith("S~resnet8_digits_kd_r~1.0_a~1.0_b~0.0_0_resnet8_h")
    others = [student_name(base, ["resnet8"], ["bbbb"]),             # another teacher checkpoint
              student_name(_student_args("--seed", "1"), ["resnet8"], ["aaaa"]),
              student_name(_student_args("--kd_T", "8"), ["resnet8"], ["aaaa"]),
              student_name(_student_args("-C", "0.7"), ["resnet8"], ["aaaa"])]
    assert len({name, *others}) == 5
    assert "_seed~1_" in others[1] and "_kd_T~8.0_" in others[2]
    assert student_name(_student_args("--epochs", "9", "--print_freq", "3"), ["resnet8"], ["aaaa"]) == name
    odd = student_name(_student_args("--distill", "kd+attention:1000"), ["resnet8"], ["aaaa"])   # composite objectives
    assert "kd+attention~1000" in odd and ":" not in odd and "/" not in odd


# -- class 3: --resume continues the run that was started, or refuses -------------------------------
def test_resume_with_other_result_flags_is_refused_listing_them(finished_teacher, capsys):
    before = snapshot(teacher_dir(finished_teacher))
    code = train_teacher.main(ONE_EPOCH + ["--save_dir", finished_teacher, "--resume", "--momentum", "0.5",
                                           "--batch_size", "32", "--cosine"])
    err = one_line_error(capsys)
    assert code == 2 and "started with other settings" in err
    assert "--momentum 0.9 -> 0.5" in err and "--batch_size 256 -> 32" in err and "--cosine False -> True" in err
    assert snapshot(teacher_dir(finished_teacher)) == before


def test_resume_may_extend_epochs_keeps_history_and_survives_a_partial_metrics_line(finished_teacher):
    folder = teacher_dir(finished_teacher)
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 2, "train_lo')                          # kill -9 in the middle of a line
    with open(os.path.join(folder, "run_info.json")) as f:
        first_command = json.load(f)["command"]
    argv = BASE + ["--epochs", "2", "--print_freq", "7",
                             "--save_dir", finished_teacher, "--resume"]
    assert train_teacher.main(argv) == 0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
    with open(os.path.join(folder, "run_info.json")) as f:
        info = json.load(f)
    assert info["command"] == first_command and len(info["history"]) == 2
    assert info["history"][0]["command"] == first_command


def test_resume_with_nothing_to_resume_leaves_no_folder(tmp_path, capsys):
    save = tmp_path / "save"
    assert train_teacher.main(ONE_EPOCH + ["--save_dir", str(save), "--resume"]) == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert not (save / "teachers").exists()


@pytest.mark.parametrize("content, needle", [
    ("repdistiller", "no 'best' or 'rng' entry"),
    ("other_arch", "checkpoint of arch 'resnet20'"),
    ("garbage", "cannot read"),
])
def test_resume_from_a_foreign_checkpoint_is_one_line(finished_teacher, capsys, content, needle):
    last = os.path.join(teacher_dir(finished_teacher), "resnet8_last.pth")
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
    code = train_teacher.main(ONE_EPOCH + ["--save_dir", finished_teacher, "--resume", "--epochs", "2"])
    assert code == 2 and needle in one_line_error(capsys)


def test_student_resume_with_other_teachers_or_kd_T_is_refused(one_epoch_teachers, tmp_path, capsys):
    t0, t1 = teacher_paths(one_epoch_teachers)
    save = str(tmp_path)
    common = ["--dataset", "digits", "--save_dir", save, "--quiet", "--model_s", "resnet8", "--epochs", "1",
              "--batch_size", "256", "--skip_validation"]
    assert train_student.main(common + ["--path_t", t0]) == 0
    capsys.readouterr()
    assert train_student.main(common + ["--path_t", t0, "--kd_T", "10", "--resume"]) == 2
    err = one_line_error(capsys)
    assert "--kd_T 4 -> 10" in err
    assert train_student.main(common + ["--path_t", t1, "--resume"]) == 2
    assert "the teachers' checkpoints" in one_line_error(capsys)
    assert len(os.listdir(os.path.join(save, "students"))) == 1      # nothing new was created


# -- class 4: every flag validated where it is read ------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--trials", "../../evil"], "--trials label '../../evil'"),
    (["--trials", "0,..,2"], "--trials label '..'"),
    (["--trial", "../../../x"], "--trial"),
    (["--trial", ".hidden"], "--trial"),
    (["--lr_decay_rate", "-1"], "--lr_decay_rate"),
    (["--lr_decay_rate", "0"], "--lr_decay_rate"),
    (["--momentum", "5"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--learning_rate", "inf"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--weight_decay", "-1e-4"], "--weight_decay"),
    (["--batch_size", "0"], "--batch_size"),
    (["--save_dir", ""], "--save_dir"),
    (["--print_freq", "0"], "--print_freq"),
    (["--resume", "--overwrite"], "give one of them"),
])
def test_teacher_flags_are_validated(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["--kd_T", "0"], "--kd_T"),
    (["--kd_T", "-4"], "--kd_T"),
    (["--kd_T", "inf"], "--kd_T"),
    (["-r", "-1"], "-r/--gamma"),
    (["-a", "nan"], "-a/--alpha"),
    (["-b", "inf"], "-b/--beta"),
    (["--init_epochs", "-3"], "--init_epochs"),
    (["--beta_delay_epochs", "-1"], "--beta_delay_epochs"),
    (["--tag", "../x"], "--tag"),
    (["--trial", "a/b"], "--trial"),
    (["--teachers", "digits-resnet8-0", "digits-resnet8-0"], "--teachers names digits-resnet8-0 more than once"),
    (["--path_t", "a.pth", "./a.pth"], "--path_t names"),
    (["--model_s", "ResNet18"], "--model_s ResNet18 is an ImageNet model"),
    (["--momentum", "1"], "--momentum"),
])
def test_student_flags_are_validated(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


def test_save_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for main in (train_teacher.main, train_student.main):
        with pytest.raises(SystemExit):
            main(["--dataset", "digits", "--save_dir", str(f)])
        assert "is a file" in one_line_error(capsys)


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


# -- class 5: every failure is one line, nothing left half done --------------------------------------
@pytest.mark.parametrize("entry, needle", [
    ({"model": "resnet8", "dataset": "digits"}, "has no 'path'"),
    ({"path": None, "model": "resnet8", "dataset": "digits"}, "has 'path' None"),
    ({"path": 7, "model": "resnet8", "dataset": "digits"}, "has 'path' 7"),
    ("just a string", "is a str"),
])
def test_bad_manifest_entries_are_one_line_and_import_setting_still_works(tmp_path, entry, needle):
    with open(manifest_path(str(tmp_path)), "w") as f:
        json.dump({"teachers": {"digits-resnet8-0": entry}}, f)
    with pytest.raises(ManifestError, match=needle) as e:
        setting.available_teachers(str(tmp_path))
    assert "digits-resnet8-0" in str(e.value) and "\n" not in str(e.value)
    out = subprocess.run([sys.executable, "-c", "import setting; print(setting.teacher_model_path_dict)"],
                         cwd=ROOT, env=dict(os.environ, MTKD_SAVE_DIR=str(tmp_path)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "{}"
    assert "digits-resnet8-0" in out.stderr and "Traceback" not in out.stderr


def test_manual_teacher_without_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(setting, "MANUAL_TEACHERS", {"cifar100-resnet32x4-0": {"model": "resnet32x4"}})
    with pytest.raises(ManifestError, match=r"setting.py MANUAL_TEACHERS: entry 'cifar100-resnet32x4-0' has no 'path'"):
        setting.available_teachers(str(tmp_path))


def test_corrupt_manifest_stops_train_teacher_before_training(tmp_path, capsys):
    with open(manifest_path(str(tmp_path)), "w") as f:
        f.write('{"teachers": {"x": ')
    code = train_teacher.main(ONE_EPOCH + ["--trials", "2", "--save_dir", str(tmp_path)])
    err = one_line_error(capsys)
    assert code == 2 and "manifest.json" in err and "before training" in err
    assert not (tmp_path / "teachers").exists()


def test_full_disk_while_writing_the_manifest_leaves_it_intact_and_no_temporary(tmp_path, monkeypatch):
    path = manifest_path(str(tmp_path))
    add_teacher(path, model="resnet8", dataset="digits", trial=0, checkpoint=str(tmp_path / "a.pth"), best_acc=1.0)
    before = open(path).read()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        add_teacher(path, model="resnet8", dataset="digits", trial=1, checkpoint=str(tmp_path / "b.pth"), best_acc=2.0)
    assert open(path).read() == before
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "manifest.json.lock"]


def test_full_disk_during_training_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    code = train_teacher.main(ONE_EPOCH + ["--save_dir", str(tmp_path)])
    err = one_line_error(capsys)
    assert code == 1 and "No space left on device" in err and "--resume" in err
    assert not [n for n in os.listdir(teacher_dir(str(tmp_path))) if n.endswith((".tmp", ".pth"))]
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


def _stop_in_epoch(monkeypatch, epoch, make):
    original = ClassifierTask.train_step
    calls = {"n": 0}

    def step(self, batch, e, *args):
        out = original(self, batch, e, *args)
        if e == epoch:
            calls["n"] += 1
            if calls["n"] == 2:
                return make(out)
        return out
    monkeypatch.setattr(ClassifierTask, "train_step", step)


def test_ctrl_c_prints_where_it_stopped_and_the_resume_command(tmp_path, monkeypatch, capsys):
    def interrupt(out):
        raise KeyboardInterrupt
    _stop_in_epoch(monkeypatch, 2, interrupt)
    argv = BASE + ["--epochs", "2", "--save_dir", str(tmp_path)]
    assert train_teacher.main(argv) == 130
    err = one_line_error(capsys)
    assert "interrupted (Ctrl-C)" in err and "holds epoch 1 of 2" in err and "Traceback" not in err
    command = err.split("continue with: ")[1]
    assert command.startswith("python train_teacher.py ") and command.endswith(" --resume")
    assert not os.path.exists(os.path.join(teacher_dir(str(tmp_path)), runfolder.LOCK_NAME))
    monkeypatch.undo()
    import shlex
    assert train_teacher.main(shlex.split(command)[2:]) == 0          # the printed command works


@pytest.mark.parametrize("epoch, status", [(1, "no checkpoint was written"), (2, "holds epoch 1 of 2")])
def test_nan_stop_says_whether_a_checkpoint_exists_and_likely_causes(tmp_path, monkeypatch, capsys, epoch, status):
    _stop_in_epoch(monkeypatch, epoch, lambda out: StepOutput(out.loss * float("nan"), out.logits, out.labels))
    argv = BASE + ["--epochs", "2", "--save_dir", str(tmp_path)]
    assert train_teacher.main(argv) == 1
    err = one_line_error(capsys)
    assert f"non-finite training loss at epoch {epoch}" in err and status in err and "likely causes" in err
    assert "checkpoint is kept" not in err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_save({"x": torch.zeros(1)}, str(tmp_path / "c.pth"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c.pth").st_mode) == mode
    assert os.listdir(tmp_path) == ["c.pth"]


def _fake_run(root, name, acc, **files):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    content = {"args.json": json.dumps({"model": "resnet8", "loss": "ce", "trial": name, "epochs": 1}),
               "summary.json": json.dumps({"status": "finished", "last_acc": acc, "best_acc": acc}),
               "metrics.jsonl": json.dumps({"epoch": 1, "test_acc": acc}) + "\n"}
    content.update(files)
    for file, text in content.items():
        with open(os.path.join(folder, file), "w") as f:
            f.write(text)
    return folder


@pytest.mark.parametrize("bad_file, text", [
    ("summary.json", '{"status": "fini'),
    ("args.json", "[1, 2]"),
    ("metrics.jsonl", '{"epoch": 1}\nnot json\n{"epoch": 3}\n'),
])
def test_summarize_names_a_corrupt_file_skips_that_run_and_summarises_the_rest(tmp_path, capsys, bad_file, text):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import summarize
    _fake_run(str(tmp_path), "0", 50.0)
    _fake_run(str(tmp_path), "1", 70.0)
    bad = _fake_run(str(tmp_path), "2", 99.0, **{bad_file: text})
    assert summarize.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert os.path.join(bad, bad_file) in err and len(err.strip().splitlines()) == 1
    assert "60.00 ± 14.14" in out and "99" not in out


def test_a_partial_last_metrics_line_is_not_corruption(tmp_path):
    _fake_run(str(tmp_path), "0", 50.0, **{"metrics.jsonl": '{"epoch": 1, "test_acc": 50.0}\n{"epoch": 2, "te'})
    runs = find_runs(str(tmp_path), on_skip=lambda *a: pytest.fail(f"skipped {a}"))
    assert [m["epoch"] for m in runs[0].metrics] == [1]


def test_student_ctrl_c_before_the_first_checkpoint_says_so(one_epoch_teachers, tmp_path, monkeypatch, capsys):
    from helper.student_step import StudentTask

    def interrupt(self, batch, epoch, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(StudentTask, "train_step", interrupt)
    code = train_student.main(["--dataset", "digits", "--save_dir", str(tmp_path), "--quiet", "--model_s", "resnet8",
                               "--epochs", "1", "--batch_size", "256", "--skip_validation",
                               "--path_t", teacher_paths(one_epoch_teachers)[0]])
    err = one_line_error(capsys)
    assert code == 130 and "interrupted (Ctrl-C)" in err and "no checkpoint was written" in err
    (run_dir,) = [os.path.join(tmp_path, "students", d) for d in os.listdir(tmp_path / "students")]
    assert not os.path.exists(os.path.join(run_dir, runfolder.LOCK_NAME))
