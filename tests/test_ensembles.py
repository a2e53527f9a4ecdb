"""Ensemble strategies against the formulas of shared/specs/multi_teacher_ensembles.md, computed
independently here (plain loops / numpy), never by calling the code under test."""
import math

import numpy as np
import pytest
import torch

from distiller_zoo import ensemble_weights, kd_loss
from distiller_zoo.ensembles.aekd import aekd_nu, aekd_teacher_weights
from distiller_zoo.qp import qp_objective, solve_simplex_box_qp


def make_inputs(M, B=16, C=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(M, B, C, generator=g) * 3
    s = torch.randn(B, C, generator=g) * 3
    y = torch.randint(0, C, (B,), generator=g)
    return t, s, y


def softmax_np(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def kl_np(t, s, T):
    pt, ps = softmax_np(t / T), softmax_np(s / T)
    return T * T * float(np.sum(pt * (np.log(pt) - np.log(ps))))


def test_kd_loss_per_sample_matches_hand_formula_and_batchmean():
    t, s, y = make_inputs(1, B=5, C=7)
    T = 4.0
    per = kd_loss(s, t[0], T)
    expected = [kl_np(t[0, i].double().numpy(), s[i].double().numpy(), T) for i in range(5)]
    assert per.shape == (5,)
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-5)
    batchmean = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s / T, 1), torch.softmax(t[0] / T, 1)) * T * T
    assert per.mean().item() == pytest.approx(batchmean.item(), rel=1e-5)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_average_weights(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("AVERAGE_LOSS", t, y, s)
    assert torch.allclose(w, torch.full_like(w, 1.0 / M))


@pytest.mark.parametrize("M", [2, 3, 5])
def test_ebkd_weights_match_entropy_formula(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("EBKD", t, y, s)
    B = t.shape[1]
    for i in range(B):
        H = []
        for m in range(M):
            p = softmax_np(t[m, i].double().numpy())
            H.append(-float(np.sum(p * np.log(p))))
        for m in range(M):
            assert w[m, i].item() == pytest.approx((1 - H[m] / sum(H)) / M, rel=1e-5, abs=1e-6)
    # a sample's weights sum to (M - 1) / M
    assert torch.allclose(w.sum(0), torch.full((B,), (M - 1) / M), atol=1e-6)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_camkd_weights_match_confidence_formula(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("CAMKD", t, y, s)
    B = t.shape[1]
    for i in range(B):
        ce = [-math.log(softmax_np(t[m, i].double().numpy())[y[i]]) for m in range(M)]
        soft = softmax_np(np.array(ce))
        for m in range(M):
            assert w[m, i].item() == pytest.approx((1 - soft[m]) / ((M - 1) * M), rel=1e-5, abs=1e-6)
    assert torch.allclose(w.sum(0), torch.full((B,), 1.0 / M), atol=1e-6)


def test_camkd_ensemble_loss_equals_reference_expression():
    """sum_{m,i} w_ref[m,i] KL[m,i] / (B*M) with w_ref = (1 - softmax(CE)) / (M - 1)."""
    M, T = 3, 4.0
    t, s, y = make_inputs(M)
    B = t.shape[1]
    w = ensemble_weights("CAMKD", t, y, s, kd_T=T)
    L = torch.stack([kd_loss(s, t[m], T) for m in range(M)])
    ours = (w * L).sum() / B
    ce = torch.stack([torch.nn.functional.cross_entropy(t[m], y, reduction="none") for m in range(M)])
    w_ref = (1 - torch.softmax(ce, 0)) / (M - 1)
    assert ours.item() == pytest.approx(((w_ref * L).sum() / (B * M)).item(), rel=1e-6)


def test_camkd_needs_two_teachers():
    t, s, y = make_inputs(1)
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_weights("CAMKD", t, y, s)


def test_unknown_method_is_one_line_error():
    t, s, y = make_inputs(2)
    with pytest.raises(ValueError, match="unknown ensemble method 'FOO'") as e:
        ensemble_weights("FOO", t, y, s)
    assert "\n" not in str(e.value)


# ---- AEKD --------------------------------------------------------------------------------------

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


def test_ensemble_weights_use_the_command_line_defaults():
    """``ensemble_weights`` builds its strategy from the parser's defaults (one source of truth), and
    its keyword options are those flags: EVIDENTIAL's certainty weights follow --evidential_tau."""
    import train_student
    from distiller_zoo import ENSEMBLES, default_options
    from distiller_zoo.base import EnsembleInputs
    t, s, y = make_inputs(3, seed=4)
    run_defaults = ENSEMBLES["EVIDENTIAL"](train_student.build_parser().parse_args([]))
    losses = torch.stack([kd_loss(s, tm, 4.0) for tm in t])
    expected = run_defaults.weights(EnsembleInputs(teacher_logits=t, labels=y, student_logits=s, losses=losses))
    assert torch.equal(ensemble_weights("EVIDENTIAL", t, y, s), expected)
    sharper = ensemble_weights("EVIDENTIAL", t, y, s, evidential_tau=0.01)
    assert not torch.allclose(sharper, expected, atol=1e-3)
    assert (sharper.max(0).values > expected.max(0).values).all()        # smaller tau: sharper weights
    with pytest.raises(TypeError, match="evidential_tua"):
        default_options(evidential_tua=1.0)
