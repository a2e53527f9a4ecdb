"""AEKD: adaptive ensemble in gradient space (Du et al., "Agree to Disagree: Adaptive Ensemble
Knowledge Distillation in Gradient Space", NeurIPS 2020).

Each teacher's loss pulls the student in a direction ``v_m`` (its gradient w.r.t. the student
tensor the loss reads, averaged over the batch). The weights are the one-class-SVM dual on the
Gram matrix ``G = V V^T``: ``min 1/2 a^T G a`` with ``0 <= a_m <= 1/(nu M)``, ``sum a = 1``,
``nu = 1/(C M)`` clipped to ``[1/M, 1]`` (``-C``, default 0.6). With ``--svm_norm`` each ``v_m`` is
normalised first and the weights are then divided by ``||v_m||`` and renormalised, as the reference.

``--aekd_solver`` (``SOLVERS``) picks who solves that QP:

- ``exact`` (default): the exact optimum on the tensors' device (``distiller_zoo.qp``), no host
  round trip, capturable in a CUDA graph.
- ``libsvm``: what CA-MKD's reference (``helper/optimization.py``, ``find_optimal_svm``) does:
  scikit-learn's ``OneClassSVM(kernel="precomputed", nu=nu, tol=1e-6)`` fitted on the float32 Gram
  matrix copied to the CPU, weights ``dual_coef_ / (M nu)`` at the support vectors and 0 elsewhere
  (then divided by the norms and renormalised under ``--svm_norm``). It synchronises the host with
  the device every step (the Gram matrix is read back, the weights sent over), so the strategy then
  declares ``capturable = False`` and ``host_sync = True``.

Why the two differ: CA-MKD's ``scripts/run.sh`` runs AEKD without ``--svm_norm``, so libsvm sees
the raw Gram matrix, whose entries are tiny (KD gradients of order 1e-3, Gram entries 1e-7 to
1e-4), and its stopping rule (``tol=1e-6`` on the gradient of the dual) is met early. On a 100-class
batch of 64 it stops at its starting point, ``0.6 / 0.4 / 0`` for three teachers (the first
``nu M`` coordinates at the bound), against an optimum near ``0.36 / 0.25 / 0.39``; on 10 classes
the weights move with the gradients but stop short of the optimum (e.g. ``0 / 0.4 / 0.6`` against
``0.05 / 0.35 / 0.6``); with ``--svm_norm`` or larger gradients (few samples) the two agree to
about 0.01. CA-MKD's AEKD numbers come from the libsvm path of its code, without ``--svm_norm``.

Other differences from the reference scripts, on purpose (both solvers):
- For the KD term the gradient is the closed form ``T (softmax(s/T) - softmax(t/T)) / B`` (under
  ``--logit-stand`` taken at the standardized logits and chained through the standardization),
  not M extra backward passes; for other terms it is taken w.r.t. the loss's student anchor only.
  Either way it is the reference's ``vec_mean``: the batch mean of the gradient of the batch-mean
  loss.
- Feature terms (e.g. FitNet hints) always normalise, as the reference's hint path does
  (``is_norm=True`` there): feature gradients have arbitrary scales.
Weights are equal over the samples of a batch.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..argtypes import positive_float
from ..base import EnsembleStrategy, add_argument_once
from ..qp import solve_simplex_box_qp
from ..registry import register_ensemble

LIBSVM_TOL = 1e-6              # the reference's OneClassSVM tolerance


def aekd_nu(C: float, M: int) -> float:
    return min(max(1.0 / (C * M), 1.0 / M), 1.0)


def aekd_teacher_weights(grads, C=0.6, svm_norm=False):
    """``[M]`` AEKD weights from per-teacher gradient vectors ``[M, D]``: the exact QP optimum."""
    V = grads.detach().double().reshape(grads.shape[0], -1)
    M = V.shape[0]
    norms = V.norm(dim=1).clamp_min(1e-300)
    if svm_norm:
        V = V / norms[:, None]
    nu = aekd_nu(C, M)
    a = solve_simplex_box_qp(V @ V.T, upper=1.0 / (nu * M))
    if svm_norm:
        a = a / norms
        a = a / a.sum()
    return a.float()


def libsvm_teacher_weights(grads, C=0.6, svm_norm=False):
    """``[M]`` AEKD weights from ``[M, D]`` gradients the reference's way: scikit-learn's
    ``OneClassSVM`` (libsvm) on the CPU, see the module docstring. Reads the Gram matrix back to
    the host (a synchronisation on CUDA); the weights are returned on ``grads``' device."""
    from sklearn.svm import OneClassSVM        # imported here: only this solver needs it

    V = grads.detach().float().reshape(grads.shape[0], -1)
    M = V.shape[0]
    norms = V.norm(dim=1, keepdim=True)
    if svm_norm:
        V = V * (1 / norms)
    gram = (V @ V.T).cpu().numpy()
    nu = aekd_nu(C, M)
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=LIBSVM_TOL).fit(gram)
    a = np.zeros(M)
    a[svm.support_] = svm.dual_coef_[0] / (M * nu)
    if svm_norm:
        a = a * (1 / norms.squeeze(1).cpu().numpy())
        a = a / np.sum(a)
    return torch.from_numpy(a).float().to(grads.device)


@dataclass(frozen=True)
class Solver:
    weights: Callable                 # (grads [M, D], C, svm_norm) -> [M]
    host_sync: str = ""               # why it makes the host wait for the device; "" when it does not


SOLVERS = {
    "exact": Solver(aekd_teacher_weights),
    "libsvm": Solver(libsvm_teacher_weights,
                     "AEKD --aekd_solver libsvm solves on the CPU (scikit-learn): the Gram matrix is read "
                     "back to the host every step"),
}


@register_ensemble("AEKD")
class GradientSpace(EnsembleStrategy):
    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "-C", type=positive_float, default=0.6, dest="C",
                          help="AEKD tolerance for disagreement among teachers (nu = 1/(C*M))")
        add_argument_once(parser, "--svm_norm", action="store_true",
                          help="AEKD: normalise the teachers' gradients before the SVM")
        add_argument_once(parser, "--aekd_solver", type=str, default="exact", choices=tuple(SOLVERS),
                          help="AEKD: the QP's exact optimum on the device (exact, default) or scikit-learn's "
                               "OneClassSVM on the CPU as CA-MKD's reference (libsvm: its published numbers; "
                               "stops early without --svm_norm, synchronises every step)")

    def __init__(self, opt):
        super().__init__(opt)
        self.solver = SOLVERS[opt.aekd_solver]
        # a host-side solver cannot be captured in a CUDA graph, and the sync guard does not apply
        self.host_sync = bool(self.solver.host_sync)
        self.capturable = not self.host_sync
        self.not_capturable_because = self.solver.host_sync

    def weights(self, inputs):
        if inputs.gradients is None:
            raise ValueError("AEKD needs the loss's gradients w.r.t. the student (no anchor given)")
        C = self.opt.C
        svm_norm = bool(self.opt.svm_norm) or not inputs.is_logit_term
        w = self.solver.weights(inputs.gradients(), C=C, svm_norm=svm_norm)
        B = inputs.losses.shape[1]
        return w.to(inputs.losses.device)[:, None].expand(-1, B).contiguous()
