"""torchrun with 2 CPU processes (gloo): both ranks keep identical weights, only rank 0 writes, and
its checkpoint loads; also the fused (vmap) teacher forward equals separate forwards."""
import glob
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helper.teachers import TeacherEnsemble
from models import model_dict
from models.checkpoint import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRAPPER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    import torch
    import torch.distributed as dist
    from helper.trainer import Trainer
    import {script} as script

    original_finish = Trainer.finish

    def finish(self):                     # each rank's final weights, for the test to compare
        summary = original_finish(self)
        torch.save(self.task.model.state_dict(), os.path.join({out!r}, f"rank{{dist.get_rank()}}.pt"))
        return summary

    Trainer.finish = finish
    sys.exit(script.main({argv!r}))
""")


# Two processes need two GPUs for NCCL (the default device on a GPU machine); with fewer, the
# same tests run on the CPU with gloo.
DEVICE = [] if torch.cuda.device_count() >= 2 else ["--device", "cpu"]


def torchrun(tmp_path, script, argv):
    argv = list(argv) + DEVICE
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(repo=REPO, script=script, out=str(tmp_path), argv=argv))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(wrapper)]
    return subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_keep_identical_weights_and_rank0_writes(tmp_path):
    save = str(tmp_path / "save")
    proc = torchrun(tmp_path, "train_teacher", ["--model", "resnet8", "--dataset", "digits", "--epochs", "2",
                                                "--batch_size", "128", "--save_dir", save, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", map_location="cpu", weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    [run_dir] = glob.glob(os.path.join(save, "teachers", "resnet8_digits_lr_0.05_decay_0.0005_trial_0*"))
    model = load_model(os.path.join(run_dir, "resnet8_last.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, a[key]), key
    with open(os.path.join(run_dir, "log.txt")) as f:
        log = f.read()
    assert "2 processes, global batch 128" in log and log.count("Epoch 2:") == 1   # rank 0 alone writes


@pytest.mark.slow
def test_student_under_torchrun_with_connectors(tmp_path, student_save_dir):
    proc = torchrun(tmp_path, "train_student", ["--dataset", "digits", "--save_dir", student_save_dir, "--quiet",
                                                "--model_s", "resnet8", "--teacher_num", "2", "--distill", "hint",
                                                "--ensemble_method", "CAMKD", "--epochs", "1", "--batch_size", "128",
                                                "--beta_delay_epochs", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


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
