"""AEKD (distiller_zoo/ensembles/aekd.py, qp.py): the exact QP, its weights against sklearn, --aekd_solver libsvm."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo import ENSEMBLES, default_options, ensemble_weights, get_strategy
from distiller_zoo.base import EnsembleInputs
from distiller_zoo.ensembles.aekd import SOLVERS, aekd_nu, aekd_teacher_weights, libsvm_teacher_weights
from distiller_zoo.qp import qp_objective, solve_simplex_box_qp
from helper import cuda_graphs

from builders import as_if_on, random_batch, step_config, student_task
from logit_cases import make_inputs

sklearn_svm = pytest.importorskip("sklearn.svm")


# ---- the exact solver: the QP and its weights -----------------------------------------------------
def kd_grads(t, s, T):
    """Independent gradient of batchmean T^2 KL w.r.t. the student logits, by autograd."""
    grads = []
    for m in range(t.shape[0]):
        ss = s.clone().requires_grad_(True)
        loss = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(ss / T, 1), torch.softmax(t[m] / T, 1)) * T * T
        loss.backward()
        grads.append(ss.grad.mean(0))
    return torch.stack(grads)


def random_feasible(M, upper, n, rng):
    pts = []
    while len(pts) < n:
        x = rng.dirichlet(np.ones(M) * rng.uniform(0.2, 3))
        if (x <= upper + 1e-12).all():
            pts.append(x)
    return np.array(pts)


@pytest.mark.parametrize("M", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qp_solution_is_feasible_and_optimal(M, seed):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(M, max(M - 1, 2)))          # rank-deficient Gram for M = 5
    G = torch.tensor(V @ V.T) * 1e-7                   # tiny entries, as AEKD's raw Gram
    C = 0.6
    upper = 1 / (aekd_nu(C, M) * M)
    a = solve_simplex_box_qp(G, upper)
    assert a.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert (a >= -1e-12).all() and (a <= upper + 1e-12).all()
    best = qp_objective(G, a).item()
    others = random_feasible(M, upper, 4000, rng)
    obj = 0.5 * np.einsum("pi,ij,pj->p", others, G.numpy(), others)
    assert best <= obj.min() * (1 + 1e-9) + 1e-30


@pytest.mark.parametrize("dup", [(0, 1), (0, 2)])
def test_qp_with_identical_teachers_splits_their_weight(dup):
    """Two identical teachers make G singular on every face that frees both: those faces give no
    solution, and the optimum comes from the others (hand-derived: teachers i, j identical with
    gradient g, teacher k with h orthogonal to g and |h| = |g|: the objective is
    1/2 (|g|^2 (a_i + a_j)^2 + |h|^2 a_k^2), minimal at a_i + a_j = a_k = 1/2)."""
    g, h = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    k = ({0, 1, 2} - set(dup)).pop()
    V = torch.stack([g if m in dup else h for m in range(3)])
    a = solve_simplex_box_qp((V @ V.T) * 1e-7, upper=1.0)
    assert torch.isfinite(a).all()
    assert a[k].item() == pytest.approx(0.5, abs=1e-9)
    assert (a[dup[0]] + a[dup[1]]).item() == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_aekd_matches_sklearn_on_well_scaled_gram(M):
    sklearn_svm = pytest.importorskip("sklearn.svm")
    T = 4.0
    t, s, y = make_inputs(M, B=64, C=100, seed=M)
    V = kd_grads(t, s, T).double()
    G = (V @ V.T).numpy()
    G_scaled = G / np.abs(np.diag(G)).max()          # libsvm converges on a well-scaled Gram
    nu = aekd_nu(0.6, M)
    svm = sklearn_svm.OneClassSVM(kernel="precomputed", nu=nu, tol=1e-10).fit(G_scaled)
    expected = np.zeros(M)
    expected[svm.support_] = svm.dual_coef_.ravel() / (M * nu)
    w = ensemble_weights("AEKD", t, y, s, kd_T=T, C=0.6)
    assert torch.allclose(w[:, 0].double(), torch.tensor(expected), atol=1e-4)
    assert torch.allclose(w, w[:, :1].expand_as(w))   # equal over samples


def test_aekd_svm_norm_divides_by_gradient_norm_and_renormalises():
    sklearn_svm = pytest.importorskip("sklearn.svm")
    M, T = 3, 4.0
    t, s, y = make_inputs(M, B=64, C=100, seed=7)
    V = kd_grads(t, s, T).double()
    norms = V.norm(dim=1)
    Vn = V / norms[:, None]
    nu = aekd_nu(0.6, M)
    svm = sklearn_svm.OneClassSVM(kernel="precomputed", nu=nu, tol=1e-10).fit((Vn @ Vn.T).numpy())
    a = np.zeros(M)
    a[svm.support_] = svm.dual_coef_.ravel() / (M * nu)
    expected = a / norms.numpy()
    expected = expected / expected.sum()
    w = ensemble_weights("AEKD", t, y, s, kd_T=T, svm_norm=True)
    assert torch.allclose(w[:, 0].double(), torch.tensor(expected), atol=1e-4)


def test_aekd_nu_clipping():
    assert aekd_nu(0.6, 3) == pytest.approx(1 / 1.8)
    assert aekd_nu(0.1, 3) == 1.0                     # 1/(0.1*3) > 1 -> clipped to 1
    assert aekd_nu(5.0, 3) == pytest.approx(1 / 3)    # below 1/M -> clipped to 1/M
    # nu = 1: upper bound 1/M, the only feasible point is uniform
    g = torch.randn(3, 10, dtype=torch.float64)
    w = aekd_teacher_weights(g, C=0.1)
    assert torch.allclose(w.double(), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-6)


def test_aekd_not_stuck_where_reference_libsvm_is():
    """On raw (tiny) Gram matrices libsvm stops at 0.6/0.4/0; the exact optimum differs."""
    sklearn_svm = pytest.importorskip("sklearn.svm")
    M, T = 3, 4.0
    t, s, y = make_inputs(M, B=64, C=100, seed=3)
    V = kd_grads(t, s, T).double()
    G = (V @ V.T)
    nu = aekd_nu(0.6, M)
    raw = sklearn_svm.OneClassSVM(kernel="precomputed", nu=nu, tol=1e-6).fit(G.numpy())
    stuck = np.zeros(M)
    stuck[raw.support_] = raw.dual_coef_.ravel() / (M * nu)
    ours = ensemble_weights("AEKD", t, y, s, kd_T=T)[:, 0].double()
    assert qp_objective(G, ours).item() <= qp_objective(G, torch.tensor(stuck)).item()
    assert (ours > 0.05).all()                        # every teacher is heard


# ---- ``--aekd_solver libsvm``: AEKD's weights as CA-MKD's reference computes them (issue 27 item 5)
# The reference (``helper/optimization.py`` ``find_optimal_svm`` of github.com/Rorozhl/CA-MKD) is
# re-written here on its own from its description: per-teacher gradients ``[M, B, C]`` of the
# batch-mean KD loss w.r.t. the student logits (taken by backward, as its hooks do), their batch mean,
# optionally normalised, the float32 Gram matrix on the CPU, ``OneClassSVM(kernel="precomputed",
# nu=nu, tol=1e-6)``, weights ``dual_coef_ / (M nu)`` at the support vectors. The libsvm path must
# give the same weights on the same gradients; the exact path is unchanged.
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
