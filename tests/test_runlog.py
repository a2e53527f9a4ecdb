"""helper/runlog.py (and the atomic writes of helper/checkpoint.py it uses): what a run writes stays
true after any interruption. A resume keeps the history of starts, drops only a last metrics line
cut short by a kill (a corrupt line elsewhere is an error), and removes summary.json until the run
ends again; TensorBoard events are real event files; and every write that really fails (a file
size limit in a subprocess: the kernel refuses the bytes with EFBIG) names its file and leaves the
file as it was."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import train_teacher
from helper.errors import ResumeError
from helper.runlog import RunLogger, read_metrics_file

from builders import SESSION_TEACHER, copy_session_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resume_may_extend_epochs_keeps_history_and_survives_a_partial_metrics_line(digits_teachers, tmp_path):
    save = str(tmp_path / "save")
    folder = copy_session_teacher(digits_teachers, save)
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 9, "train_lo')                          # kill -9 in the middle of a line
    with open(os.path.join(folder, "run_info.json")) as f:
        first_command = json.load(f)["command"]
    argv = [*SESSION_TEACHER, "--epochs", "9", "--print_freq", "7", "--save_dir", save, "--resume"]
    assert train_teacher.main(argv) == 0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == list(range(1, 10))
    with open(os.path.join(folder, "run_info.json")) as f:
        info = json.load(f)
    assert info["command"] == first_command and len(info["history"]) == 2
    assert info["history"][0]["command"] == first_command
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    assert summary["epochs"] == summary["last_epoch"] == 9


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_only_a_last_line_cut_short_is_left_out_of_the_metrics(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    write(path, '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "te')
    assert read_metrics_file(path) == ([{"epoch": 1}, {"epoch": 2}], True)
    write(path, '{"epoch": 1}\n{"epoch": 2}')                      # complete, only its newline missing
    assert read_metrics_file(path) == ([{"epoch": 1}, {"epoch": 2}], False)
    assert read_metrics_file(str(tmp_path / "none.jsonl")) == ([], False)
    for bad, why in (('{"epoch": 1}\nnot json\n{"epoch": 3}\n', "line 2 is not an epoch record (not JSON"),
                     ('{"epoch": 1}\n[1, 2]\n', "line 2 is not an epoch record (a JSON list"),
                     ('{"epoch": "1"}\n{"epoch": 2}\n', "line 1 is not an epoch record ('epoch' is '1'"),
                     ('{"epoch": 1}\n{"epoch": 3, "te\n', "line 2")):        # cut short, then a newline: not a kill
        write(path, bad)
        with pytest.raises(ResumeError, match=re.escape(f"{path} {why}")):
            read_metrics_file(path)


def test_truncate_drops_later_epochs_returns_the_checkpoints_record_and_unfinishes_the_run(tmp_path):
    run = RunLogger(str(tmp_path), echo=False, tensorboard=False)
    for epoch in (1, 2, 3):
        run.log_epoch({"epoch": epoch, "test_acc": 10.0 * epoch})
    run.write_summary({"status": "finished"})
    resumed = RunLogger(str(tmp_path), echo=False, tensorboard=False, fresh=False)
    assert resumed.truncate_metrics(2) == {"epoch": 2, "test_acc": 20.0}
    assert read_metrics_file(str(tmp_path / "metrics.jsonl"))[0] == [{"epoch": 1, "test_acc": 10.0},
                                                                      {"epoch": 2, "test_acc": 20.0}]
    assert not (tmp_path / "summary.json").exists()                 # not finished until it ends again
    assert resumed.truncate_metrics(5) is None                      # no record of that epoch


def test_tensorboard_reads_the_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = RunLogger(str(tmp_path), echo=False)
    run.log_epoch({"epoch": 1, "test_acc": 50.5, "train_loss": 2.0, "note": "text", "flag": True})
    run.log_epoch({"epoch": 2, "test_acc": 60.25, "train_loss": 1.5})
    run.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["test_acc", "train_loss"]
    assert [(e.step, e.value) for e in events.Scalars("test_acc")] == [(1, 50.5), (2, 60.25)]


WRITES_UNDER_A_SIZE_LIMIT = textwrap.dedent("""
    import json, os, resource, signal, sys
    import torch
    from helper.checkpoint import atomic_save, atomic_write_text
    from helper.runlog import RunLogger
    folder = sys.argv[1]
    limit = 64_000
    ckpt, text = os.path.join(folder, "m_last.pth"), os.path.join(folder, "summary.json")
    atomic_save({"w": torch.zeros(10)}, ckpt)                  # the previous good files
    atomic_write_text(text, "{}\\n")
    run = RunLogger(folder, echo=False)
    for name in ("metrics.jsonl", "log.txt"):                  # logs that have grown close to the limit
        with open(os.path.join(folder, name), "w") as f:
            f.write("x" * (limit - 40) + "\\n")
    with open(run._tb.path, "ab") as f:
        f.write(b"\\0" * (limit - 40 - os.path.getsize(run._tb.path)))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)             # the write fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)}
    out = {}
    for what, write in [("checkpoint", lambda: atomic_save({"w": torch.zeros(100_000)}, ckpt)),
                        ("json", lambda: atomic_write_text(text, "x" * (2 * limit))),
                        ("metrics", lambda: run.log_epoch({"epoch": 1, "loss": 1.0, "pad": "y" * 100})),
                        ("log", lambda: run.info("z" * 100)),
                        ("events", lambda: run._tb.scalars(1, {"a" * 50: 1.0, "b" * 50: 2.0}))]:
        try:
            write()
            out[what] = "written"
        except OSError as exc:
            out[what] = [exc.errno, os.path.basename(exc.filename or "")]
        except BaseException as exc:
            out[what] = repr(exc)
    out["unchanged"] = sizes == {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)}
    out["checkpoint_holds"] = torch.load(ckpt, weights_only=True)["w"].numel()
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_every_write_that_really_fails_names_its_file_and_leaves_it_as_it_was(tmp_path):
    """RLIMIT_FSIZE with SIGXFSZ ignored makes the kernel refuse writes beyond the limit (EFBIG),
    so torch.save, JSON replacement and every append fail for real (torch.save reports only
    "unexpected pos" in a RuntimeError)."""
    done = subprocess.run([sys.executable, "-c", WRITES_UNDER_A_SIZE_LIMIT, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    events = next(n for n in os.listdir(tmp_path) if n.startswith("events.out.tfevents"))
    assert out == {"checkpoint": [27, "m_last.pth"], "json": [27, "summary.json"], "metrics": [27, "metrics.jsonl"],
                   "log": [27, "log.txt"], "events": [27, events], "unchanged": True, "checkpoint_holds": 10}
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]       # no temporary left
