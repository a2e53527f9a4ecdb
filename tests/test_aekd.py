"""``--aekd_solver libsvm``: AEKD's weights as CA-MKD's reference computes them (issue 27 item 5).

The reference (``helper/optimization.py`` ``find_optimal_svm`` of github.com/Rorozhl/CA-MKD) is
re-written here on its own from its description: per-teacher gradients ``[M, B, C]`` of the
batch-mean KD loss w.r.t. the student logits (taken by backward, as its hooks do), their batch mean,
optionally normalised, the float32 Gram matrix on the CPU, ``OneClassSVM(kernel="precomputed",
nu=nu, tol=1e-6)``, weights ``dual_coef_ / (M nu)`` at the support vectors. The libsvm path must
give the same weights on the same gradients; the exact path is unchanged."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import ENSEMBLES, ensemble_weights, get_strategy, default_options
from distiller_zoo.base import EnsembleInputs
from distiller_zoo.ensembles.aekd import SOLVERS, aekd_nu, aekd_teacher_weights, libsvm_teacher_weights
from helper import cuda_graphs

from builders import as_if_on, random_batch, step_config, student_task

sklearn_svm = pytest.importorskip("sklearn.svm")


def reference_weights(per_sample_grads, C, is_norm):
    """CA-MKD's ``find_optimal_svm`` on ``[M, B, ...]`` gradients, nu as its train_student.py sets it."""
    m = per_sample_grads.shape[0]
    nu = 1 / (C * m)
    nu = 1.0 if nu > 1 else (1 / m if nu < 1 / m else nu)
    vec_mean = per_sample_grads.reshape(m, per_sample_grads.shape[1], -1).mean(dim=1)
    vec_norm = vec_mean.norm(dim=1, keepdim=True)
    if is_norm:
        vec_mean = vec_mean * (1 / vec_norm)
    G = torch.matmul(vec_mean, vec_mean.permute(1, 0)).detach().numpy()
    svm = sklearn_svm.OneClassSVM(kernel="precomputed", nu=nu, tol=1e-6)
    svm.fit(G)
    ret = np.zeros(m)
    ret[svm.support_] = svm.dual_coef_ / (m * nu)
    if is_norm:
        ret = ret * (1 / vec_norm.squeeze().detach().numpy())
        ret = ret / np.sum(ret)
    return torch.from_numpy(ret).float()


def kd_batch(seed, M=3, B=64, C=100, T=4.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g)
    t = torch.randn(M, B, C, generator=g) * 3
    y = torch.randint(0, C, (B,), generator=g)
    return s, t, y


def backward_grads(s, t, T=4.0):
    """``[M, B, C]``: the gradient of each teacher's batch-mean KD loss w.r.t. the student logits."""
    grads = []
    for t_m in t:
        s_ = s.clone().requires_grad_(True)
        loss = F.kl_div(F.log_softmax(s_ / T, 1), F.softmax(t_m / T, 1), reduction="batchmean") * T * T
        grads.append(torch.autograd.grad(loss, s_)[0])
    return torch.stack(grads)


def strategy(**options):
    return get_strategy("AEKD", default_options(**options))


def weights_of(strat, grads_md, is_logit_term=True, B=4):
    inputs = EnsembleInputs(teacher_logits=torch.zeros(grads_md.shape[0], B, 3), labels=torch.zeros(B, dtype=torch.long),
                            student_logits=torch.zeros(B, 3), losses=torch.zeros(grads_md.shape[0], B),
                            gradients=lambda: grads_md, is_logit_term=is_logit_term)
    return strat.weights(inputs)


@pytest.mark.parametrize("seed, M, B, C, svm_norm", [(0, 3, 64, 100, False), (1, 3, 64, 10, False),
                                                     (2, 3, 64, 10, False), (3, 3, 16, 10, False),
                                                     (4, 2, 32, 100, False), (5, 4, 64, 100, False),
                                                     (6, 3, 64, 100, True)])
def test_libsvm_reproduces_the_reference_on_the_same_gradients(seed, M, B, C, svm_norm):
    s, t, _ = kd_batch(seed, M, B, C)
    grads = backward_grads(s, t)
    expected = reference_weights(grads, C=0.6, is_norm=svm_norm)
    w = weights_of(strategy(aekd_solver="libsvm", svm_norm=svm_norm), grads.mean(1))
    assert w.shape == (M, 4) and torch.equal(w, expected[:, None].expand(M, 4))
    assert torch.equal(libsvm_teacher_weights(grads.mean(1), C=0.6, svm_norm=svm_norm), expected)


def test_ensemble_weights_with_libsvm_match_the_reference_on_kd_gradients():
    s, t, y = kd_batch(7, B=64, C=10)
    w = ensemble_weights("AEKD", t, y, s, kd_T=4.0, aekd_solver="libsvm")
    expected = reference_weights(backward_grads(s, t), C=0.6, is_norm=False)
    assert torch.allclose(w[:, 0], expected, atol=1e-4) and torch.equal(w[:, 0:1].expand_as(w), w)


def test_libsvm_stops_early_without_norm_where_the_exact_optimum_does_not():
    """100 classes, batch 64: libsvm's starting point 0.6 / 0.4 / 0; the optimum is elsewhere. On
    10 classes its weights move with the gradients but stop short of the optimum."""
    s, t, y = kd_batch(0, B=64, C=100)
    lib = ensemble_weights("AEKD", t, y, s, aekd_solver="libsvm")[:, 0]
    exact = ensemble_weights("AEKD", t, y, s)[:, 0]
    assert lib.tolist() == pytest.approx([0.6, 0.4, 0.0], abs=1e-6)
    assert exact.min() > 0.2 and (lib - exact).abs().max() > 0.15
    moved = set()
    for seed in (0, 1, 2):
        s, t, y = kd_batch(seed, B=64, C=10)
        moved.add(tuple(np.round(ensemble_weights("AEKD", t, y, s, aekd_solver="libsvm")[:, 0].tolist(), 3)))
    assert len(moved) == 3                                                  # not one fixed answer
    s, t, y = kd_batch(2, B=64, C=10)
    gap = (ensemble_weights("AEKD", t, y, s, aekd_solver="libsvm") - ensemble_weights("AEKD", t, y, s)).abs().max()
    assert 0.01 < gap < 0.2


def test_feature_terms_normalise_under_libsvm_too():
    g = torch.Generator().manual_seed(8)
    grads = torch.randn(3, 50, generator=g) * torch.tensor([[1e-4], [1.0], [30.0]])
    w = weights_of(strategy(aekd_solver="libsvm"), grads, is_logit_term=False)[:, 0]
    expected = reference_weights(grads[:, None, :], C=0.6, is_norm=True)
    assert torch.equal(w, expected)


def test_exact_stays_the_default_and_unchanged():
    s, t, y = kd_batch(0, B=64, C=100)
    assert default_options().aekd_solver == "exact" and set(SOLVERS) == {"exact", "libsvm"}
    w = ensemble_weights("AEKD", t, y, s, kd_T=4.0)
    V = torch.stack([((F.softmax(s / 4, 1) - F.softmax(t_m / 4, 1)) * 4 / 64).mean(0) for t_m in t])
    assert torch.allclose(w[:, 0], aekd_teacher_weights(V), atol=1e-6)
    # optimality (KKT of min 1/2 a^T G a on the simplex with 0 <= a <= u): one multiplier lam with
    # grad = lam on free coordinates, >= lam at 0, <= lam at u
    G = (V.double() @ V.double().T).numpy()
    a, u = w[:, 0].double().numpy(), 1 / (aekd_nu(0.6, 3) * 3)
    grad, tol = G @ a, 1e-4 * np.abs(G @ a).max()
    free = (a > 1e-5) & (a < u - 1e-5)
    assert free.any()
    lam = grad[free].mean()
    assert np.abs(grad[free] - lam).max() < tol
    assert (grad[a <= 1e-5] >= lam - tol).all() and (grad[a >= u - 1e-5] <= lam + tol).all()
    assert strategy().solver.weights is aekd_teacher_weights


def test_libsvm_declares_its_host_sync_and_is_not_captured():
    lib, exact = strategy(aekd_solver="libsvm"), strategy()
    assert (lib.host_sync, lib.capturable, exact.host_sync, exact.capturable) == (True, False, False, True)
    assert "libsvm" in lib.not_capturable_because and "host" in lib.not_capturable_because
    assert not any(getattr(cls, "host_sync") for cls in ENSEMBLES.values())          # class defaults
    args = as_if_on(step_config(distill="kd", ensemble_method="AEKD", aekd_solver="libsvm", teacher_num=2), "cuda")
    task = student_task(args, ("resnet8", "resnet8"))
    reasons = cuda_graphs.capture_blockers(task, None, args)
    assert any(r.startswith("GradientSpace: AEKD --aekd_solver libsvm") for r in reasons), reasons
    task.terms[0].strategy = exact
    assert not any("GradientSpace" in r for r in cuda_graphs.capture_blockers(task, None, args))


def test_a_student_step_under_libsvm_uses_its_weights():
    from conftest import recording_term_weights
    args = step_config(distill="kd", ensemble_method="AEKD", aekd_solver="libsvm", beta_delay_epochs=0, teacher_num=3)
    task = student_task(args, ("resnet8", "resnet8", "resnet8"))
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.01)
    x, y = random_batch(B=8)
    task.train_mode()
    task.epoch_begin(1, 2)
    with torch.no_grad():
        s_logits = task.model(x)
        t_logits = torch.stack([m(x) for m in task.teachers.models])
    with recording_term_weights(task) as seen:
        out = task.train_step((x, y), 1, optimizer)
    assert torch.isfinite(out.loss).all()
    (w,) = seen["kd"]
    expected = reference_weights(backward_grads(s_logits, t_logits), C=args.C, is_norm=False)
    assert torch.allclose(w[:, 0], expected, atol=1e-4), (w[:, 0], expected)
