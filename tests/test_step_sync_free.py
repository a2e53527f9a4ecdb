"""On CUDA, the student step (forward of teachers and student, every term with its ensemble weights,
backward, optimiser step) never waits for the device: a few steps of every strategy run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call. The
exceptions the README names (spot-adaptive routing of relational losses, CRD under torchrun) are
not run here. Skipped without CUDA (scripts/gpu_check.sh runs the suite on a GPU)."""
import pytest
import torch

from conftest import build_student_task, student_options

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method, extra", [("AVERAGE_LOSS", {}), ("EBKD", {}), ("CAMKD", {}), ("AEKD", {}),
                                           ("EVIDENTIAL", {"evidential_mode": "pool"}),
                                           ("EVIDENTIAL", {"evidential_mode": "weight"})])
@pytest.mark.parametrize("distill, beta", [("kd", 0.0), ("inter", 50.0), ("attention", 1000.0)])
def test_student_step_never_synchronises(method, extra, distill, beta):
    args = student_options(distill=distill, ensemble_method=method, beta=beta, beta_delay_epochs=0,
                           device="cuda", **extra)
    task = build_student_task(args, ("resnet8", "resnet14", "resnet8"))
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
