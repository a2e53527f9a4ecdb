"""scripts/gpu_check.sh: the dry run lists every command of the GPU check, and each training
command is one the scripts' parsers accept (so a renamed flag breaks CI, not the GPU run)."""
import os
import shlex
import subprocess

import pytest

import train_student
import train_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def dry_run(*flags):
    proc = subprocess.run(["bash", SCRIPT, "--dry-run", *flags], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]


def script_args(line, script):
    words = shlex.split(line)
    return words[words.index(script) + 1:]


def test_dry_run_prints_the_whole_check_in_order():
    lines = dry_run()
    kinds = ["pytest" if " -m pytest" in l else "teacher" if "train_teacher.py" in l else
             "student" if "train_student.py" in l else "bench_student" if "bench_student.py" in l else
             "bench_data" if "bench_data.py" in l else "compare_graphs" if "compare_graphs.py" in l else
             "bench_teacher" if "bench_teacher.py" in l else "bench_group" if "bench_group.py" in l else "env"
             for l in lines]
    assert kinds == ["env", "pytest", "teacher", "student", "student", "student", "student", "student",
                     "compare_graphs", "compare_graphs", "bench_student", "bench_teacher", "bench_group", "bench_data"]
    assert lines[0] == "export CUBLAS_WORKSPACE_CONFIG=:4096:8"

    teacher = train_teacher.build_parser().parse_args(script_args(lines[2], "train_teacher.py"))
    assert (teacher.model, teacher.dataset, teacher.epochs, teacher.trials) == ("resnet32x4", "synthetic", 1, "0,1,2")
    students = [train_student.build_parser().parse_args(script_args(l, "train_student.py")) for l in lines[3:8]]
    for s in students:
        assert (s.model_s, s.teacher_num, s.distill, s.dataset) == ("vgg8", 3, "inter", "synthetic")
        assert s.save_dir == teacher.save_dir               # the students find the teachers just trained
    assert [(s.ensemble_method, s.epochs, s.compile, s.cuda_graphs) for s in students] == [
        ("CAMKD", 2, False, "off"), ("AEKD", 1, False, "off"), ("CAMKD", 2, True, "off"),
        ("AVERAGE_LOSS,EBKD,AEKD,CAMKD", 2, False, "capture"), ("AVERAGE_LOSS,CAMKD", 1, False, "off")]
    assert len({s.tag for s in students}) == 5              # five run folders
    assert "torch.distributed.run --standalone --nproc_per_node 2" in lines[7]     # the group under torchrun
    for group in (lines[6], lines[7]):                      # each a group the resolution accepts
        assert train_student.parse_args(script_args(group, "train_student.py") + ["--device", "cpu"]).is_group
    assert "--deterministic --no-amp" in lines[9]
    assert all("--device cuda" in line for line in lines[10:])


def test_no_tests_drops_the_suite_and_nothing_is_installed():
    assert not any(" -m pytest" in l for l in dry_run("--no-tests"))
    with open(SCRIPT) as f:
        text = f.read()
    assert "pip install" not in text and "pip3 install" not in text    # a GPU uses the torch it has


@pytest.mark.parametrize("argv, needle", [(["--bogus"], "--bogus"), (["--budget", "ten"], "--budget"),
                                         (["--test-budget"], "--test-budget"), (["--out"], "--out")])
def test_bad_option_is_a_one_line_error(argv, needle):
    proc = subprocess.run(["bash", SCRIPT, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and needle in proc.stderr
