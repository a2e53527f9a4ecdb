"""Shared fixtures: seeded tests, and real teachers trained once per session on digits.

End-to-end tests call the scripts' ``main(argv)`` in-process (no interpreter start-up per run)
and read what the run wrote. The suite runs on every core (pytest-xdist, ``addopts`` in
pyproject.toml; ``-n 0`` for one process); what a session makes once (the digits teachers, the
shared reference runs) is made once for all the workers, in a folder they share, under a file lock.
"""
import contextlib
import fcntl
import hashlib
import json
import os

import pytest
import torch

import train_student
import train_teacher
from builders import SESSION_TEACHER, SUITE_DIGITS


def pytest_configure(config):
    """One share of the cores per xdist worker: torch's default (every core) in each of N workers
    oversubscribes them, and every OpenMP region then waits for a time slice."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def session_folder(tmp_path_factory):
    """A folder all the workers of this session share (the session's base folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def made_once(folder, name):
    """``(path, done)`` for a thing made once per session: ``done`` is False for the one worker
    that must make it (holding the lock until it has; the others wait), True where it is made."""
    path = folder / name
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = (path / ".made").exists()
        yield path, done
        if not done:
            (path / ".made").touch()


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_backend_flags():
    """A script run in-process with --deterministic (or on CUDA, cuDNN autotuning) sets global
    backend flags; give every test the flags it started with."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1], flags[2]


# Where a test compares two runs bit for bit: on a GPU (the default device there) only
# deterministic kernels make two runs equal; on the CPU the flag changes nothing.
BIT_IDENTICAL = ["--deterministic"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny tensors or small runs: on a loaded 2-core machine
    every OpenMP region can wait a scheduler time slice for its second thread, which made such
    files several times slower. Restores the thread count afterwards. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TEACHER_EPOCHS = int(SESSION_TEACHER[SESSION_TEACHER.index("--epochs") + 1])


@pytest.fixture(scope="session")
def digits_teachers(session_folder):
    """A save folder with three resnet8 teachers trained on digits (about 85-90% test accuracy),
    registered in its manifest as digits-resnet8-0/1/2 (trained once for all workers; read-only)."""
    with made_once(session_folder, "digits_teachers") as (save_dir, done):
        if not done:
            torch.manual_seed(0)
            code = train_teacher.main([*SESSION_TEACHER, "--trials", "3", "--save_dir", str(save_dir)])
            assert code == 0
    return str(save_dir)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def student_run_dir(save_dir):
    """The (single) student run folder under a save folder."""
    root = os.path.join(save_dir, "students")
    runs = sorted(os.listdir(root))
    assert len(runs) == 1, runs
    return os.path.join(root, runs[0])


def run_student(save_dir, *argv):
    """Run train_student.py in-process on digits (the suite's 16 px) with the session's teachers; returns
    (exit code, run folder or None, metrics list)."""
    args = ["--dataset", "digits", *SUITE_DIGITS, "--save_dir", save_dir, "--quiet", "--model_s", "resnet8", *argv]
    code = train_student.main(args)
    root = os.path.join(save_dir, "students")
    if code != 0 or not os.path.isdir(root):
        return code, None, []
    run_dir = max((os.path.join(root, d) for d in os.listdir(root)), key=os.path.getmtime)
    return code, run_dir, read_metrics(run_dir)


def see_teachers(digits_teachers, folder):
    """Make ``folder`` a save folder that sees the session's teachers (manifest copied, paths
    absolute); returns it as a string."""
    with open(os.path.join(digits_teachers, "manifest.json")) as f:
        data = json.load(f)
    for entry in data["teachers"].values():
        entry["path"] = os.path.join(digits_teachers, entry["path"])
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(data, f)
    return str(folder)


@pytest.fixture
def student_save_dir(digits_teachers, tmp_path):
    """A fresh save folder that sees the session's teachers."""
    return see_teachers(digits_teachers, tmp_path)


class SharedRuns:
    """Student runs made once per session (for all workers), keyed by their arguments: an e2e test
    that needs the plain-KD run of its setting as a reference gets the run that setting's own KD
    test makes (or makes it, and that test then reuses it), so the references add no runs. The runs
    are read-only for their users."""

    def __init__(self, digits_teachers, folder):
        self.teachers, self.folder = digits_teachers, folder

    def __call__(self, *argv):
        key = hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:16]
        with made_once(self.folder, f"shared_run_{key}") as (save_dir, done):
            if not done:
                save_dir.mkdir()
                torch.manual_seed(0)
                code, run_dir, _ = run_student(see_teachers(self.teachers, save_dir), *argv)
                (save_dir / "result.json").write_text(json.dumps({"code": code, "run_dir": run_dir}))
        result = json.loads((save_dir / "result.json").read_text())
        run_dir = result["run_dir"]
        return result["code"], run_dir, read_metrics(run_dir) if run_dir else []


@pytest.fixture(scope="session")
def shared_runs(digits_teachers, session_folder):
    return SharedRuns(digits_teachers, session_folder)


KD_MARGIN = 15.0         # test top-1 points a loss may fall below plain KD in the same setting


def assert_generalises_like_kd(metrics, kd_metrics, run, chance_share=0.5):
    """A student that trains but does not generalise fails here: the last epoch's test top-1 must
    be at most KD_MARGIN points below the plain-KD run of the same setting, and above chance (10%
    on digits) by at least ``chance_share`` of KD's own margin over chance (and never need more
    than 15 points). The two-epoch sweep over every loss (test_train_student_losses) passes
    ``chance_share=0``: there KD itself reaches only 12-22% and a feature term with a large weight
    slows the first epochs, so only "not below chance, not far below KD" is meaningful."""
    acc, ref = metrics[-1]["test_acc"], kd_metrics[-1]["test_acc"]
    train = metrics[-1].get("train_acc", float("nan"))
    need = max(ref - KD_MARGIN, 10.0 + min(15.0, (ref - 10.0) * chance_share))
    assert acc >= need, (
        f"{run}: last-epoch test top-1 {acc:.1f} (train {train:.1f}) against plain KD's {ref:.1f} in the "
        f"same setting; expected at least {need:.1f}")


class Interrupt(Exception):
    """What a killed job looks like to the training loop: an exception in the middle of a step."""


@contextlib.contextmanager
def dies_at_step(task_cls, epoch, step=1):
    """Within the block, ``task_cls.train_step`` raises ``Interrupt`` at the ``step``-th step of
    ``epoch`` (counted from 1), as a job killed there would stop; the class is restored afterwards."""
    original = task_cls.train_step
    calls = {"n": 0}

    def interrupted(self, batch, e, *args, **kwargs):
        if e == epoch:
            calls["n"] += 1
            if calls["n"] == step:
                raise Interrupt()
        return original(self, batch, e, *args, **kwargs)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(task_cls, "train_step", interrupted)
        yield


def assert_same_checkpoints(run_a, run_b, extra: str, filename: str = "resnet8_last.pth"):
    """The two runs' final checkpoints hold bit-identical student weights and ``extra[extra]`` state."""
    a = torch.load(os.path.join(run_a, filename), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(run_b, filename), map_location="cpu", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert set(a["extra"][extra]) == set(b["extra"][extra])
    for key, value in a["extra"][extra].items():
        assert torch.equal(value, b["extra"][extra][key]), key


@contextlib.contextmanager
def recording_term_weights(task):
    """Within the block, every term of ``task`` records the ``[M, B]`` weights it returns (a forward
    hook): yields ``{term key: [weights of each call]}``."""
    seen = {}

    def record(term, inputs, output):
        seen.setdefault(term.key, []).append(output[1].detach().clone())
    handles = [term.register_forward_hook(record) for term in task.terms]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def expected_shares(seen, steps: int):
    """Per term and teacher, the mean over ``steps`` of that teacher's share of the weights the
    term used (recorded by ``recording_term_weights``), as the metrics name them."""
    expected = {}
    for key, calls in seen.items():
        total = sum(w.mean(1) / w.mean(1).sum().clamp_min(1e-12) for w in calls) / steps
        expected.update({f"weight_{key}_t{m}": v for m, v in enumerate(total.tolist())})
    return expected


def assert_shares_are_the_step_weights(record, seen, steps: int):
    """The epoch's ``weight_<term>_t<m>`` figures (``record``: an epoch record, or the step outputs
    to accumulate) are the step weights the terms used (``recording_term_weights``)."""
    if not isinstance(record, dict):
        shares = {}
        for out in record:
            for key, share in out.shares.items():
                shares[key] = shares.get(key, 0) + share
        record = {f"weight_{key}_t{m}": v for key, total in shares.items()
                  for m, v in enumerate((total / len(record)).tolist())}
    expected = expected_shares(seen, steps)
    got = {k: v for k, v in record.items() if k.startswith("weight_")}
    assert set(got) == set(expected) and expected
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
