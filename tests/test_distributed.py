"""torchrun on the CPU (gloo): one node with 2 processes, and two nodes on loopback (two
``torchrun --nnodes 2 --node_rank 0|1 --rdzv_endpoint 127.0.0.1:PORT`` launchers of one process
each, started here and bounded in time), for a teacher and for a group of students: identical
weights on every rank, only rank 0 writes, the epoch's figures are every rank's, ``--resume``
after a kill of both nodes continues bit-identically (the reference: the same job on one node,
which has the same ranks); also the fused (vmap) teacher forward equals separate forwards."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from helper.teachers import TeacherEnsemble
from models import build_model, model_dict
from models.checkpoint import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each rank leaves for the test (``out``): its final weights of every run it trained
# (``<run>.rank<r>.pt``), its own share of each epoch's training sums before they are reduced
# (``<run>.rank<r>.epoch<e>.json``); with MTKD_TEST_STOP_AT_EPOCH=e it stops at the start of epoch
# e (every run's epoch e-1 checkpoint written), leaves ``stopped.rank<r>`` with its process id, and
# waits to be killed.
WRAPPER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    import torch
    import torch.distributed as dist
    from helper.trainer import Trainer
    import {script} as script

    OUT, STOP = {out!r}, int(os.environ.get("MTKD_TEST_STOP_AT_EPOCH", "0"))
    original_finish, original_end, original_begin = Trainer.finish, Trainer.end_epoch, Trainer.begin_epoch

    def name(trainer):
        return f"{{os.path.basename(trainer.run.run_dir)}}.rank{{dist.get_rank()}}"

    def finish(self):
        summary = original_finish(self)
        torch.save(self.task.model.state_dict(), os.path.join(OUT, name(self) + ".pt"))
        return summary

    def end_epoch(self, epoch):
        local = self.acc.sums.read()          # this rank's sums, before the epoch's record reduces them
        with open(os.path.join(OUT, f"{{name(self)}}.epoch{{epoch}}.json"), "w") as f:
            json.dump(local, f)
        return original_end(self, epoch)

    def begin_epoch(self, epoch):
        if epoch == STOP:
            with open(os.path.join(OUT, f"stopped.rank{{dist.get_rank()}}"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
        return original_begin(self, epoch)

    Trainer.finish, Trainer.end_epoch, Trainer.begin_epoch = finish, end_epoch, begin_epoch
    code = script.main({argv!r})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # main has closed its files; skipping the interpreter's teardown saves seconds per launch
""")


# Two processes need two GPUs for NCCL (the default device on a GPU machine); with fewer, the
# same tests run on the CPU with gloo. Two nodes on loopback are one machine whose two "nodes" would
# both take GPU 0 (local rank 0 each; NCCL refuses a GPU twice): they always run on the CPU.
DEVICE = [] if torch.cuda.device_count() >= 2 else ["--device", "cpu"]
CPU = ["--device", "cpu"]
LAUNCH_TIMEOUT = 300       # seconds for one launch of a test job (a few seconds of training, ~15 s of start-up)


def write_wrapper(folder, script, argv, device=None):
    os.makedirs(folder, exist_ok=True)
    wrapper = os.path.join(folder, f"wrapper_{script}.py")
    with open(wrapper, "w") as f:
        f.write(WRAPPER.format(repo=REPO, script=script, out=str(folder),
                               argv=list(argv) + (DEVICE if device is None else device)))
    return wrapper


def launcher_env(stop_at=0):
    return dict(os.environ, OMP_NUM_THREADS="1", MTKD_TEST_STOP_AT_EPOCH=str(stop_at))


def torchrun(tmp_path, script, argv, device=None):
    """One node, two processes; waits for the job."""
    wrapper = write_wrapper(tmp_path, script, argv, device)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", wrapper]
    return subprocess.run(cmd, cwd=str(tmp_path), env=launcher_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)       # the launcher and the worker it started
    except ProcessLookupError:
        pass
    proc.wait()


def two_nodes(folder, script, argv, stop_at=0):
    """Two launchers, node ranks 0 and 1, one process each, meeting at 127.0.0.1:<free port>.
    Without ``stop_at``: waits for both and returns their (exit status, output). With it: waits
    until both ranks have stopped at the start of epoch ``stop_at``, then kills both nodes
    (SIGKILL: launchers and workers) and returns None. Bounded in time either way."""
    wrapper = write_wrapper(folder, script, argv, CPU)
    port = free_port()
    logs = [open(os.path.join(folder, f"node{r}.log"), "w+") for r in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--rdzv_endpoint", f"127.0.0.1:{port}", wrapper],
                              cwd=str(folder), env=launcher_env(stop_at), stdout=logs[r], stderr=subprocess.STDOUT,
                              start_new_session=True) for r in range(2)]

    def output():
        text = []
        for f in logs:
            f.seek(0)
            text.append(f.read()[-3000:])
        return "\n".join(text)

    markers = [os.path.join(folder, f"stopped.rank{r}") for r in range(2)]
    deadline = time.time() + LAUNCH_TIMEOUT
    try:
        while time.time() < deadline:
            if stop_at and all(os.path.exists(m) and open(m).read() for m in markers):
                for m in markers:                   # the workers, in case the launcher started a session
                    try:
                        os.kill(int(open(m).read()), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for p in procs:
                    kill_group(p)
                return None
            if not stop_at and all(p.poll() is not None for p in procs):
                return [p.returncode for p in procs], output()
            if stop_at and any(p.poll() is not None for p in procs):
                pytest.fail(f"a node ended before epoch {stop_at}: {output()}")
            time.sleep(0.2)
        pytest.fail(f"the two-node job did not finish in {LAUNCH_TIMEOUT} s: {output()}")
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)
        for f in logs:
            f.close()


def rank_weights(folder, run_name):
    return [torch.load(os.path.join(folder, f"{run_name}.rank{r}.pt"), map_location="cpu", weights_only=True)
            for r in range(2)]


def assert_same_weights(a, b, what):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), (what, key)


def assert_metrics_are_every_ranks(folder, run_dir, epochs):
    """Each epoch's train_loss/train_acc in metrics.jsonl is the sum of both ranks' shares."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    name = os.path.basename(run_dir)
    for record in records:
        shares = []
        for r in range(2):
            with open(os.path.join(folder, f"{name}.rank{r}.epoch{record['epoch']}.json")) as f:
                shares.append(json.load(f))
        n = sum(s["n"] for s in shares)
        assert all(0 < s["n"] < n for s in shares)
        assert record["train_loss"] == pytest.approx(sum(s["loss"] for s in shares) / n, rel=1e-9)
        assert record["train_acc"] == pytest.approx(100 * sum(s["top1"] for s in shares) / n, rel=1e-9)
    return records


def log_of(run_dir):
    with open(os.path.join(run_dir, "log.txt")) as f:
        return f.read()


def kill_and_resume(folder, script, argv):
    """The job on two nodes, killed at the start of epoch 2, then resumed to its end."""
    assert two_nodes(folder, script, argv, stop_at=2) is None
    codes, out = two_nodes(folder, script, list(argv) + ["--resume"])
    assert codes == [0, 0], out


# synthetic data small enough for seconds per epoch; 75 test images: the ranks' evaluation shares
# differ in size (batches of 32, 32, 11: rank 0 evaluates two, rank 1 one)
SMALL_DATA = ["--dataset", "synthetic", "--synthetic_train", "256", "--synthetic_test", "75",
              "--synthetic_classes", "10", "--synthetic_size", "16", "--batch_size", "64", "--epochs", "2", "--quiet"]


def test_launcher_options_are_torchruns():
    """The commands above are torchrun's (a renamed option fails here, fast, not in a slow test)."""
    from torch.distributed.run import get_args_parser
    for argv in (["--standalone", "--nproc_per_node", "2", "x.py"],
                 ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "1", "--rdzv_endpoint", "127.0.0.1:1",
                  "x.py"]):
        ns = get_args_parser().parse_args(argv)
        assert ns.training_script == "x.py"


@pytest.mark.slow
def test_two_nodes_train_a_teacher_and_resume_after_a_kill_of_both(tmp_path):
    """Reference: one node, two processes, uninterrupted. Two nodes, killed at the start of epoch
    2 and resumed: the same weights on both ranks as the reference's, bit for bit; rank 0 alone
    wrote; each epoch's figures are both ranks'; the test accuracy is the whole test set's."""
    ref, nodes = tmp_path / "ref", tmp_path / "nodes"
    argv = ["--model", "resnet8", *SMALL_DATA]
    proc = torchrun(ref, "train_teacher", argv + ["--save_dir", str(ref / "save")], CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kill_and_resume(nodes, "train_teacher", argv + ["--save_dir", str(nodes / "save")])

    [ref_dir] = glob.glob(str(ref / "save" / "teachers" / "resnet8_synthetic_*"))
    [run_dir] = glob.glob(str(nodes / "save" / "teachers" / "resnet8_synthetic_*"))
    name = os.path.basename(run_dir)
    assert name == os.path.basename(ref_dir)
    reference, (w0, w1) = rank_weights(ref, name)[0], rank_weights(nodes, name)
    assert_same_weights(w0, w1, "rank 1 against rank 0")
    assert_same_weights(w0, reference, "two nodes, killed and resumed, against one node uninterrupted")
    saved = load_model(os.path.join(run_dir, "resnet8_last.pth")).state_dict()
    assert_same_weights(saved, w0, "rank 0's checkpoint")

    log = log_of(run_dir)                        # rank 0 alone writes: each line once
    assert log.count("Epoch 1:") == 1 and log.count("Epoch 2:") == 1 and log.count("resumed from") == 1
    assert "2 processes, global batch 64" in log
    records = assert_metrics_are_every_ranks(nodes, run_dir, 2)
    with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
        ref_records = [json.loads(line) for line in f if line.strip()]
    for a, b in zip(records, ref_records):
        assert {k: v for k, v in a.items() if k != "epoch_time"} == {k: v for k, v in b.items() if k != "epoch_time"}
    with open(os.path.join(run_dir, "run_info.json")) as f:
        assert len(json.load(f)["history"]) == 2             # the start and the resume

    # the test accuracy is that of the whole test set, evaluated once, in batches of a rank's 32
    import dataset
    from helper.evaluate import evaluate
    test = dataset.build_loaders("synthetic", batch_size=32, device="cpu", seed=0, synthetic_train=256,
                                 synthetic_test=75, synthetic_classes=10, synthetic_size=16).test
    model = build_model("resnet8", 10)
    model.load_state_dict(saved)
    alone = evaluate([model], test)
    assert records[-1]["test_acc"] == alone["top1"][0] and records[-1]["test_acc_top5"] == alone["top5"][0]
    assert records[-1]["test_loss"] == pytest.approx(alone["loss"][0], rel=1e-6)


def untrained_teachers(folder, k=2):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(k):
        torch.manual_seed(100 + i)
        paths.append(os.path.join(folder, f"t{i}.pth"))
        torch.save({"model": build_model("resnet8", 10).state_dict()}, paths[-1])
    return paths


@pytest.mark.slow
def test_two_nodes_train_a_group_of_students_and_resume_after_a_kill_of_both(tmp_path):
    """A group of two students (CAMKD and AVERAGE_LOSS, --distill hint: connectors) on two nodes,
    killed at the start of epoch 2 and resumed; reference: the CAMKD student alone on one node with
    two processes. Each member is a DDP run of its own: both ranks hold the same weights, the
    CAMKD member equals its solo run bit for bit, rank 0 alone wrote every member's folder."""
    ref, nodes = tmp_path / "ref", tmp_path / "nodes"
    teachers = untrained_teachers(str(tmp_path / "teachers"))
    argv = ["--model_s", "resnet8", "--path_t", *teachers, "--model_t", "resnet8", "--distill", "hint",
            "--beta_delay_epochs", "0", *SMALL_DATA]
    proc = torchrun(ref, "train_student", argv + ["--ensemble_method", "CAMKD", "--save_dir", str(ref / "save")], CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kill_and_resume(nodes, "train_student", argv + ["--ensemble_method", "CAMKD,AVERAGE_LOSS",
                                                    "--save_dir", str(nodes / "save")])

    [solo] = os.listdir(ref / "save" / "students")
    members = sorted(os.listdir(nodes / "save" / "students"))
    assert len(members) == 2 and solo in members
    for name in members:
        run_dir = str(nodes / "save" / "students" / name)
        w0, w1 = rank_weights(nodes, name)
        assert_same_weights(w0, w1, f"{name}: rank 1 against rank 0")
        log = log_of(run_dir)
        assert log.count("Epoch 1:") == 1 and log.count("Epoch 2:") == 1 and log.count("resumed from") == 1
        assert "in a group of 2 students" in log and "2 processes, global batch 64" in log
        assert_metrics_are_every_ranks(nodes, run_dir, 2)
        ckpt = torch.load(os.path.join(run_dir, "resnet8_last.pth"), map_location="cpu", weights_only=True)
        assert_same_weights(ckpt["model"], w0, f"{name}: rank 0's checkpoint")
    assert_same_weights(rank_weights(nodes, solo)[0], rank_weights(ref, solo)[0],
                        "the group's CAMKD student on two nodes, killed and resumed, against its solo run")
    with open(nodes / "save" / "students" / solo / "args.json") as f, open(ref / "save" / "students" / solo /
                                                                             "args.json") as g:
        grouped, alone = json.load(f), json.load(g)
    assert grouped["teacher_acc"] == alone["teacher_acc"]          # the teachers' sharded evaluation


@pytest.mark.slow
def test_crd_memory_banks_receive_every_ranks_rows(tmp_path, student_save_dir):
    """Every training image is in one rank's shard once per epoch; after one epoch every row of both
    banks has been written (a written row is unit-norm, an initial one is not), on both ranks alike."""
    proc = torchrun(tmp_path, "train_student", ["--dataset", "digits", "--save_dir", student_save_dir, "--quiet",
                                                "--model_s", "resnet8", "--teacher_num", "1", "--distill", "crd",
                                                "--nce_k", "64", "--epochs", "1", "--batch_size", "128",
                                                "--beta_delay_epochs", "0", "--skip_validation"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = os.path.join(student_save_dir, "students", os.listdir(os.path.join(student_save_dir, "students"))[0])
    ckpt = torch.load(os.path.join(run_dir, "resnet8_last.pth"), map_location="cpu", weights_only=True)
    banks = {k: v for k, v in ckpt["extra"]["distill"].items() if k.endswith(("memory_s", "memory_t"))}
    assert len(banks) == 2
    for name, bank in banks.items():
        assert bank.shape[0] == 1442
        norms = bank.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), (name, (norms - 1).abs().gt(1e-4).sum())



@pytest.mark.parametrize("preact", [False, True])
def test_fused_teacher_forward_equals_separate_forwards(preact):
    torch.manual_seed(0)
    models = [model_dict[a](num_classes=10) for a in ("resnet8", "wrn_16_1", "resnet8", "resnet8")]
    for m in models:        # non-trivial running statistics, so eval-mode BN matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 32, 32)
    separate = TeacherEnsemble(models, list("abcd"), fuse=False).outputs(x, preact)
    fused_ensemble = TeacherEnsemble(models, list("abcd"), fuse=True)
    assert fused_ensemble.groups() == [[0, 2, 3], [1]]
    fused = fused_ensemble.outputs(x, preact)
    for s, f in zip(separate, fused):
        assert torch.allclose(s.logits, f.logits, atol=1e-5, rtol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(s.feats, f.feats))


def test_amp_off_step_is_the_plain_step():
    """With --amp off the loop's autocast context is a no-op: the step equals a plain forward."""
    from helper.execution import autocast_context
    torch.manual_seed(0)
    model = model_dict["resnet8"](num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with autocast_context("cpu", False):
        a = model(x)
    assert torch.equal(a, model(x)) and a.dtype == torch.float32


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU node: a clear error, not torch.cuda.set_device's."""
    from helper import distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"process 1 on a node with 1 GPU\(s\); use --nproc_per_node 1"):
        distributed.rank_settings(distributed.context_from_env(), "cuda", 8)
