"""On CUDA, the student step (forward of teachers and student, every term with its ensemble weights,
backward, optimiser step) never waits for the device: a few steps of every strategy run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call. The
exceptions the README names (spot-adaptive routing of relational losses, CRD under torchrun) are
not run here, and a strategy that declares ``host_sync`` (AEKD's ``--aekd_solver libsvm``, which
solves on the CPU as its reference does) is skipped. The CUDA test is skipped without CUDA
(scripts/gpu_check.sh runs the suite on a GPU); the same steps run on the CPU under
``sync_guard.NoHostSync``, which fails on the calls known to synchronise, so CI catches most of
them first."""
import pytest
import torch

from builders import step_config, student_task
from distiller_zoo import get_strategy
from sync_guard import HostSync, NoHostSync

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

STRATEGIES = pytest.mark.parametrize("method, extra", [("AVERAGE_LOSS", {}), ("EBKD", {}), ("CAMKD", {}), ("AEKD", {}),
                                           ("EVIDENTIAL", {"evidential_mode": "pool"}),
                                           ("EVIDENTIAL", {"evidential_mode": "weight"}),
                                           ("AEKD", {"aekd_solver": "libsvm"})])


def skip_if_it_syncs_by_design(method, args):
    strategy = get_strategy(method, args)
    if strategy.host_sync:
        pytest.skip(f"{method} declares a host sync: {strategy.not_capturable_because}")


LOSSES = pytest.mark.parametrize("distill, beta", [("kd", 0.0), ("inter", 50.0), ("attention", 1000.0)])


@needs_cuda
@STRATEGIES
@LOSSES
def test_student_step_never_synchronises(method, extra, distill, beta):
    args = step_config(distill=distill, ensemble_method=method, beta=beta, beta_delay_epochs=0, teacher_num=3,
                       device="cuda", **extra)
    skip_if_it_syncs_by_design(method, args)
    task = student_task(args, ("resnet8", "resnet14", "resnet8"))
    task.model.cuda()
    task.terms.cuda()
    task.teachers.to("cuda")
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, device="cuda", generator=g),
                torch.randint(0, 10, (16,), device="cuda", generator=g)) for _ in range(3)]
    task.train_mode()
    task.epoch_begin(1, 2)
    task.train_step(batches[0], 1, optimizer)            # first step: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            out = task.train_step(batch, 1, optimizer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item()


@pytest.mark.parametrize("method, extra, distill, beta", [
    *[(m, e, "inter", 50.0) for m, e in STRATEGIES.args[1]],  # every strategy on the kd + hint objective
    ("CAMKD", {}, "attention", 1000.0)])
def test_student_step_calls_nothing_that_synchronises(method, extra, distill, beta):
    """The CPU twin of the test above, under ``NoHostSync`` (fewer cases: CI's time is short; every
    strategy, the logit and a feature term, and a map loss)."""
    torch.manual_seed(0)
    args = step_config(distill=distill, ensemble_method=method, beta=beta, beta_delay_epochs=0, teacher_num=3,
                       **extra)
    skip_if_it_syncs_by_design(method, args)
    task = student_task(args, ("resnet8", "resnet14", "resnet8"))
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    task.train_mode()
    task.epoch_begin(1, 2)
    task.train_step(batches[0], 1, optimizer)            # first step: lazy initialisation may sync
    with NoHostSync():
        out = task.train_step(batches[1], 1, optimizer)
    assert torch.isfinite(out.loss).all()


def test_the_guard_catches_what_synchronises():
    x = torch.randn(4, 4)
    for call in (lambda: x.sum().item(), lambda: x[x > 0], lambda: torch.linalg.pinv(x), lambda: bool(x[0, 0] > 0),
                 lambda: torch.linalg.solve(x, x), lambda: torch.nonzero(x)):
        with NoHostSync(), pytest.raises(HostSync):
            call()
    with NoHostSync():                                   # and lets the sync-free forms through
        torch.linalg.solve_ex(x, x, check_errors=False)
        torch.where(x > 0, x, torch.zeros_like(x))
