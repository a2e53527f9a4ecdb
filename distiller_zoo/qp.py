"""The small quadratic program behind AEKD, solved exactly on the tensors' device.

    minimise 1/2 a^T G a   subject to   0 <= a_m <= u,  sum_m a_m = 1

with G = V V^T positive semi-definite and M (the number of teachers) small. This is the dual of
the one-class SVM with a precomputed kernel that AEKD solves with scikit-learn (libsvm) on the CPU
every step. Its solution does not depend on the scale of G, which matters: AEKD's raw Gram entries
are tiny (about 1e-7), and libsvm's stopping rule is then met at its starting point.

Method: every optimum lies on a face of the box where each coordinate is at 0, at u, or free; on
that face the free coordinates solve an equality-constrained QP, i.e. a linear KKT system. We solve
the KKT system of every face at once (3^M faces, one batched LU solve), keep the feasible
solutions and return the one with the lowest objective. Because the problem is convex, that is a
global optimum. A face whose KKT system is singular (G rank-deficient along it, e.g. two identical
teachers) gives no finite solution and is dropped: a vertex of the set of minimisers is the
unique minimiser on its own face, whose KKT system is then non-singular, so an optimum always
comes from a non-singular face. The solve is ``linalg.solve_ex`` without error checks: no host
read of LU's ``info`` (``pinv`` and ``solve`` synchronise the device, and a CUDA graph cannot
capture them; seen on an H200 with torch 2.11). Exact up to floating point, no iterations, no host round trip.
For M > ``max_exact`` (3^M faces become many) a projected-gradient method with many iterations is
used instead.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=None)
def _face_patterns(m: int, device: torch.device):
    """All assignments of each coordinate to {0: at zero, 1: free, 2: at the upper bound}, kept
    on the device (no host-to-device copy per training step)."""
    return torch.tensor(list(itertools.product((0, 1, 2), repeat=m)), dtype=torch.int64, device=device)


def solve_simplex_box_qp(G: Tensor, upper: float, max_exact: int = 8, tol: float = 1e-9) -> Tensor:
    """Exact minimiser of ``1/2 a^T G a`` over ``{0 <= a <= upper, sum(a) = 1}`` (float64 inside)."""
    m = G.shape[0]
    if upper * m < 1 - 1e-12:
        raise ValueError(f"infeasible QP: upper bound {upper} times {m} teachers is below 1")
    G = G.detach().double()
    G = 0.5 * (G + G.T)
    scale = G.diagonal().abs().max().clamp_min(1e-300)
    G = G / scale                                   # the minimiser is scale-invariant
    if m == 1:
        return torch.ones(1, dtype=G.dtype, device=G.device)
    if m > max_exact:
        return _projected_gradient(G, upper)

    patterns = _face_patterns(m, G.device)          # [P, m]
    free = patterns == 1
    at_upper = (patterns == 2).to(G.dtype)
    n_free = free.sum(1)
    budget = 1.0 - at_upper.sum(1) * upper          # what the free coordinates must sum to
    # a face with no free coordinate is a candidate only if its fixed ones already sum to 1; the
    # others are ruled out below by a mask, not removed (boolean indexing would wait for the device)
    keep = (n_free > 0) | (budget.abs() < 1e-12)
    P = patterns.shape[0]
    freef = free.to(G.dtype)

    # KKT system per face, with fixed coordinates pinned by identity rows:
    #   free rows:  G_row . a + lam = 0 ;  fixed rows: a_j = value_j ;  last row: sum(a) = 1
    K = torch.zeros(P, m + 1, m + 1, dtype=G.dtype, device=G.device)
    rhs = torch.zeros(P, m + 1, dtype=G.dtype, device=G.device)
    eye = torch.eye(m, dtype=G.dtype, device=G.device)
    K[:, :m, :m] = freef[:, :, None] * G[None] + (1 - freef)[:, :, None] * eye[None]
    K[:, :m, m] = freef
    K[:, m, :m] = 1.0
    rhs[:, :m] = (1 - freef) * at_upper * upper
    rhs[:, m] = 1.0
    sol, _ = torch.linalg.solve_ex(K, rhs, check_errors=False)
    a = sol[:, :m]
    residual = ((K @ sol[..., None])[..., 0] - rhs).abs().amax(1)
    # NaN or inf (a singular face) fails every comparison below, so the face is not a candidate
    feasible = keep & (a >= -tol).all(1) & (a <= upper + tol).all(1) & (residual < 1e-7)
    objective = 0.5 * torch.einsum("pi,ij,pj->p", a, G, a)
    objective = torch.where(feasible, objective, torch.full_like(objective, float("inf")))
    best = a[objective.argmin()]
    return _clip_to_feasible(best, upper)


def _clip_to_feasible(a: Tensor, upper: float) -> Tensor:
    a = a.clamp(0.0, upper)
    return a / a.sum()


def _project(a: Tensor, upper: float) -> Tensor:
    """Euclidean projection onto {0 <= a <= upper, sum(a) = 1} by bisection on the shift."""
    lo, hi = (a - upper).min() - 1, a.max() + 1
    for _ in range(100):
        mid = (lo + hi) / 2
        above = (a - mid).clamp(0, upper).sum() > 1     # on the device: no host round trip
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (a - (lo + hi) / 2).clamp(0, upper)


def _projected_gradient(G: Tensor, upper: float, iters: int = 5000) -> Tensor:
    m = G.shape[0]
    step = 1.0 / torch.linalg.eigvalsh(G).max().clamp_min(1e-12)
    a = torch.full((m,), 1.0 / m, dtype=G.dtype, device=G.device)
    for _ in range(iters):
        a = _project(a - step * (G @ a), upper)
    return a


def qp_objective(G: Tensor, a: Tensor) -> Tensor:
    G, a = G.double(), a.double()
    return 0.5 * a @ G @ a
