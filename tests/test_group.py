"""Groups of students (issue 19): several students trained in one process on the same batches and
one teacher forward, each bit-identical to its solo run; --resume of the whole group; one-line
errors for lists that cannot make a group. Small on purpose: untrained teachers on a tiny
synthetic set (what is compared is bits, not accuracy)."""
import json
import os

import pytest
import torch

import train_student
from helper import group as group_mod
from helper.student_step import StudentTask
from helper.trainer import Member
from helper.teachers import TeacherEnsemble
from models import build_model

from builders import student_plan
from conftest import Interrupt, dies_at_step, read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# crd draws its negatives from the global RNG; mlkd asks for the strong view (a second loader)
GROUP = ["--distill", "crd,mlkd", "--ensemble_method", "AVERAGE_LOSS,EBKD"]
STUDENTS = [(d, e) for d in ("crd", "mlkd") for e in ("AVERAGE_LOSS", "EBKD")]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two untrained resnet8 teacher checkpoints (random weights: different, finite)."""
    folder = tmp_path_factory.mktemp("group_teachers")
    paths = []
    for k in range(2):
        torch.manual_seed(100 + k)
        path = str(folder / f"t{k}.pth")
        torch.save({"model": build_model("resnet8", 10).state_dict()}, path)
        paths.append(path)
    return paths


def base_args(teachers, save_dir, epochs=2):
    return ["--dataset", "synthetic", "--synthetic_train", "64", "--synthetic_test", "32",
            "--synthetic_classes", "10", "--synthetic_size", "16", "--batch_size", "32",
            "--epochs", str(epochs), "--path_t", *teachers, "--model_t", "resnet8", "--model_s", "resnet8",
            "--save_dir", str(save_dir), "--quiet", "--skip_validation", "--beta_delay_epochs", "0",
            "--nce_k", "16", "--feat_dim", "16", "--deterministic"]


def runs(save_dir):
    root = os.path.join(str(save_dir), "students")
    return {name: os.path.join(root, name) for name in sorted(os.listdir(root))}


def assert_same_run(a, b):
    """Same weights (every tensor of both checkpoints, connectors and optimiser included) and the
    same metrics, epoch by epoch (times aside)."""
    for which in ("last", "best"):
        ca = torch.load(os.path.join(a, f"resnet8_{which}.pth"), weights_only=False)
        cb = torch.load(os.path.join(b, f"resnet8_{which}.pth"), weights_only=False)
        assert ca["epoch"] == cb["epoch"]
        for key in ca["model"]:
            assert torch.equal(ca["model"][key], cb["model"][key]), (a, key)
        for key, value in ca["extra"]["distill"].items():
            assert torch.equal(value, cb["extra"]["distill"][key]), (a, key)
        assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"]), a
    ma = [{k: v for k, v in r.items() if k != "epoch_time"} for r in read_metrics(a)]
    mb = [{k: v for k, v in r.items() if k != "epoch_time"} for r in read_metrics(b)]
    assert ma == mb, a


@pytest.fixture(scope="module")
def group_and_solo(teachers, tmp_path_factory):
    """The group of four and the four solo runs, made once for the tests below."""
    group_dir, solo_dir = tmp_path_factory.mktemp("group"), tmp_path_factory.mktemp("solo")
    calls = []
    original = TeacherEnsemble.outputs
    with pytest.MonkeyPatch.context() as m:       # count the teachers' forwards of the group
        m.setattr(TeacherEnsemble, "outputs", lambda self, images, preact=False: calls.append(1)
                  or original(self, images, preact))
        assert train_student.main(base_args(teachers, group_dir) + GROUP) == 0
    # 2 epochs x 2 batches x 3 image tensors (crd's loader: the standard view; mlkd's: standard and
    # strong), whatever the number of students
    assert len(calls) == 2 * 2 * 3
    for distill, method in STUDENTS:
        assert train_student.main(base_args(teachers, solo_dir) + ["--distill", distill,
                                                                   "--ensemble_method", method]) == 0
    return group_dir, solo_dir


def test_group_students_are_bit_identical_to_solo_runs(group_and_solo):
    group_dir, solo_dir = group_and_solo
    grouped, solo = runs(group_dir), runs(solo_dir)
    assert sorted(grouped) == sorted(solo) and len(grouped) == 4      # exactly the solo runs' names
    for name in solo:
        assert_same_run(grouped[name], solo[name])
        with open(os.path.join(grouped[name], "args.json")) as f:
            saved = json.load(f)
        assert sorted(saved["group"]) == sorted(grouped)
        assert saved["distill"] in ("crd", "mlkd") and saved["ensemble_method"] in ("AVERAGE_LOSS", "EBKD")
        for f in ("summary.json", "resnet8_best.pth", "log.txt"):
            assert os.path.exists(os.path.join(grouped[name], f))
        assert any(n.startswith("events.out.tfevents") for n in os.listdir(grouped[name]))
        with open(os.path.join(grouped[name], "log.txt")) as f:
            log = f.read()
        assert "==> group of 4 students: device memory n/a on cpu" in log and "in a group of 4 students" in log
    with open(os.path.join(solo[name], "args.json")) as f:
        assert "group" not in json.load(f)                 # a solo run's args.json is as before


def test_group_resume_after_a_kill_is_bit_identical(group_and_solo, teachers, tmp_path):
    """Killed in epoch 2, resumed: every student equals the uninterrupted group's."""
    group_dir, _ = group_and_solo
    with dies_at_step(StudentTask, epoch=2, step=3), pytest.raises(Interrupt):
        train_student.main(base_args(teachers, tmp_path) + GROUP)
    assert train_student.main(base_args(teachers, tmp_path) + GROUP + ["--resume"]) == 0
    resumed, whole = runs(tmp_path), runs(group_dir)
    assert sorted(resumed) == sorted(whole)
    for name in whole:
        assert_same_run(resumed[name], whole[name])


def test_teachers_run_once_per_batch_and_view():
    """Outputs are computed once per image tensor and preact, and each caller gets its own copies."""
    calls = []

    class Fake:
        def outputs(self, images, preact=False):
            calls.append(preact)
            from distiller_zoo.base import NetOutput
            return [NetOutput(feats=[images * 2], logits=images.sum(1))]

        def __len__(self):
            return 1

    shared = group_mod.SharedTeachers(Fake())
    x, y = torch.ones(2, 3), torch.zeros(2, 3)
    a, b = shared.outputs(x), shared.outputs(x)
    assert len(calls) == 1 and torch.equal(a[0].feats[0], b[0].feats[0])
    a[0].feats.append("edited")
    assert len(shared.outputs(x)[0].feats) == 1              # one caller's edit is not another's
    shared.outputs(x, preact=True)
    shared.outputs(y)
    assert calls == [False, True, False]
    shared.clear()
    shared.outputs(x)
    assert len(calls) == 4


def test_students_that_fit():
    # 10 GiB device, 2 GiB of teachers and data, 3 students measured at +1 GiB each: 8 fit
    gib = 1 << 30
    assert group_mod.students_that_fit(10 * gib, 2 * gib, [3 * gib, 4 * gib, 5 * gib]) == 8
    assert group_mod.students_that_fit(10 * gib, 2 * gib, []) == 0


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["--ensemble_method", "AVERAGE_LOSS,MAJORITY"], "--ensemble_method: unknown strategy 'MAJORITY'"),
    (["--ensemble_method", "EBKD,EBKD"], "lists EBKD more than once"),
    (["--distill", "kd,telepathy"], "--distill: unknown loss 'telepathy'"),
    (["--distill", "kd,dkd,kd"], "lists kd more than once"),
    (["--distill", "kd,"], "an empty name in the list"),
    (["--distill", "kd,dkd", "--ensemble_method", "AVERAGE_LOSS,CAMKD"], "CAMKD needs at least 2 teachers"),
])
def test_bad_lists(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.main(["--dataset", "digits", "--teacher_num", "1"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


def args_json(run_dir):
    with open(os.path.join(run_dir, "args.json")) as f:
        return json.load(f)


def test_group_static_step_is_bit_identical_to_the_eager_group(group_and_solo, teachers, tmp_path):
    """--cuda_graphs static (the group's step as restructured for capture: the batch copied once into
    static buffers every member reads in place, each member's step with the device-tensor learning
    rate): every student equals the eager group's (and so its solo run) tensor by tensor, and the
    teachers still run once per batch and view."""
    group_dir, _ = group_and_solo
    calls = []
    original = TeacherEnsemble.outputs
    with pytest.MonkeyPatch.context() as m:
        m.setattr(TeacherEnsemble, "outputs", lambda self, images, preact=False: calls.append(1)
                  or original(self, images, preact))
        assert train_student.main(base_args(teachers, tmp_path) + GROUP + ["--cuda_graphs", "static"]) == 0
    assert len(calls) == 2 * 2 * 3
    eager = {(a["distill"], a["ensemble_method"]): d for d in runs(group_dir).values() for a in [args_json(d)]}
    static = runs(tmp_path)
    assert len(static) == 4
    for name, run_dir in static.items():
        saved = args_json(run_dir)
        assert saved["cuda_graphs"] == "static"
        assert_same_run(run_dir, eager[(saved["distill"], saved["ensemble_method"])])
        with open(os.path.join(run_dir, "log.txt")) as f:
            assert "this student's step restructured for capture runs eagerly on the group's static batch" in f.read()


def test_group_capture_on_the_cpu_runs_eagerly_with_one_line(teachers, tmp_path, capsys):
    """--cuda_graphs capture is accepted for a group; off CUDA every student says why it runs eagerly."""
    argv = base_args(teachers, tmp_path, epochs=1) + ["--distill", "kd,dkd", "--cuda_graphs", "capture"]
    argv.remove("--quiet")
    assert train_student.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("--cuda_graphs capture: the step runs eagerly (device cpu is not CUDA") == 2


def test_stage_copies_each_batch_once_into_static_buffers():
    """GroupStage static: per loader, the same tensors every batch (what a captured step needs),
    filled with the batch's values; a batch of other shapes is handed on as it is; pinned teacher
    outputs survive the per-batch clear, cached ones do not."""
    class Fake:
        def outputs(self, images, preact=False):
            from distiller_zoo.base import NetOutput
            return [NetOutput(feats=[images + 1], logits=images.sum(1))]

        def __len__(self):
            return 1

    shared = group_mod.SharedTeachers(Fake())
    stage = group_mod.GroupStage(shared, "static")
    one, two = ("standard",), ("standard", "strong")
    first = stage.prepare({one: (torch.ones(2, 3), torch.zeros(2)), two: ((torch.ones(2, 3), torch.ones(2, 3)),
                                                                         torch.zeros(2), torch.arange(2))})
    second = stage.prepare({one: (torch.full((2, 3), 5.0), torch.ones(2)),
                            two: ((torch.zeros(2, 3), torch.ones(2, 3)), torch.ones(2), torch.arange(2))})
    assert first[one][0] is second[one][0] and first[two][0][1] is second[two][0][1]
    assert torch.equal(second[one][0], torch.full((2, 3), 5.0)) and torch.equal(second[two][2], torch.arange(2))
    partial = (torch.ones(1, 3), torch.zeros(1))
    assert stage.prepare({one: partial})[one] is partial
    x = second[one][0]
    shared.outputs(x)
    shared.pin(x, False, Fake().outputs(x * 0))
    shared.outputs(torch.ones(1, 3))
    assert len(shared.requested()) == 2
    stage.prepare({one: (torch.ones(2, 3), torch.zeros(2))})
    assert shared.requested() == [] and torch.equal(shared.outputs(x)[0].logits, torch.zeros(2))   # pinned
    assert shared.forwards == 2


def test_lists_make_the_cross_product():
    """--distill (comma: students, '+': terms) x --ensemble_method x --logit-stand both, each student
    with its own single values; one student is a solo run (a group of one)."""
    plan = student_plan("--dataset", "digits", "--teacher_num", "2", "--distill", "kd+attention,dkd",
                        "--ensemble_method", "EBKD,CAMKD", "--logit-stand", "both")
    got = [(m.config.distill, m.config.ensemble_method, m.config.logit_stand) for m in plan.members]
    assert got == [(d, e, s) for d in ("kd+attention", "dkd") for e in ("EBKD", "CAMKD") for s in (False, True)]
    solo = student_plan("--dataset", "digits", "--teacher_num", "2", "--logit-stand")
    assert not solo.is_group and solo.shared.logit_stand is True and solo.shared.ensemble_method == "CAMKD"


def test_group_benchmark_runs_small(capsys):
    """benchmarks/bench_group.py keeps working (tiny size; nothing asserted about time)."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import bench_group
    assert bench_group.main(["--device", "cpu", "--teachers", "resnet8", "resnet8", "--student", "resnet8",
                             "--batch_size", "8", "--steps", "1", "--warmup", "0", "--size", "16",
                             "--classes", "10", "--methods", "AVERAGE_LOSS", "CAMKD"]) == 0
    out = capsys.readouterr().out
    assert "AVERAGE_LOSS" in out and "CAMKD" in out and "group/one-run time ratio" in out


def test_out_of_memory_in_the_first_step_is_one_line(monkeypatch):
    """Simulated on the CPU: the second student's first step runs out of memory; the error names it
    and says how many would fit (from the device's size and the increments measured)."""
    class Step:
        def __init__(self, fail):
            self.fail = fail

        def train_batch(self, step, batch, epoch):
            if self.fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    members = [Member(name=n, trainer=Step(fail), views=("standard",),
                      stream=group_mod.RngStream(group_mod.rng_state())) for n, fail in (("a", False), ("b", True))]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 8 << 30}))
    with pytest.raises(group_mod.GroupOutOfMemory) as exc:
        group_mod.measured_first_step(members, {("standard",): (torch.zeros(2, 3), torch.zeros(2))}, 1, 1,
                                      torch.device("cpu"), print)
    message = str(exc.value)
    assert "\n" not in message and "student 2 (b)" in message and "8.0 GiB" in message and "would fit" in message


def test_summaries_see_group_runs_as_solo_runs(group_and_solo):
    """scripts/summarize.py's grouping: a group's student and its solo run are one configuration
    (``group`` in args.json is not a setting)."""
    from helper.results import find_runs, group_runs
    group_dir, solo_dir = group_and_solo
    groups = group_runs(find_runs(str(group_dir)) + find_runs(str(solo_dir)))
    assert len(groups) == 4 and all(len(g.runs) == 2 for g in groups)
