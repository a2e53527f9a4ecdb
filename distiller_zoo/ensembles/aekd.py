"""AEKD: adaptive ensemble in gradient space (Du et al., "Agree to Disagree: Adaptive Ensemble
Knowledge Distillation in Gradient Space", NeurIPS 2020).

Each teacher's loss pulls the student in a direction ``v_m`` (its gradient w.r.t. the student
tensor the loss reads, averaged over the batch). The weights are the one-class-SVM dual on the
Gram matrix ``G = V V^T``: ``min 1/2 a^T G a`` with ``0 <= a_m <= 1/(nu M)``, ``sum a = 1``,
``nu = 1/(C M)`` clipped to ``[1/M, 1]`` (``-C``, default 0.6). With ``--svm_norm`` each ``v_m`` is
normalised first and the weights are then divided by ``||v_m||`` and renormalised, as the reference.

Differences from the reference scripts, on purpose:
- For the KD term the gradient is the closed form ``T (softmax(s/T) - softmax(t/T)) / B`` (under
  ``--logit-stand`` taken at the standardized logits and chained through the standardization),
  not M extra backward passes; for other terms it is taken w.r.t. the loss's student anchor only.
- The QP is solved exactly on the device (``distiller_zoo.qp``) instead of scikit-learn's
  OneClassSVM on the CPU. Without ``--svm_norm`` the reference's libsvm stops at its starting
  point because the Gram entries are tiny (about 1e-7): its weights are then always 0.6/0.4/0
  for three teachers, whatever the gradients. Ours are the true optimum.
- Feature terms (e.g. FitNet hints) always normalise, as the reference's hint path does
  (``is_norm=True`` there): feature gradients have arbitrary scales.
Weights are equal over the samples of a batch.
"""
import torch

from ..argtypes import positive_float
from ..base import EnsembleStrategy, add_argument_once
from ..qp import solve_simplex_box_qp
from ..registry import register_ensemble


def aekd_nu(C: float, M: int) -> float:
    return min(max(1.0 / (C * M), 1.0 / M), 1.0)


def aekd_teacher_weights(grads, C=0.6, svm_norm=False):
    """``[M]`` AEKD weights from per-teacher gradient vectors ``[M, D]``."""
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


@register_ensemble("AEKD")
class GradientSpace(EnsembleStrategy):
    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "-C", type=positive_float, default=0.6, dest="C",
                          help="AEKD tolerance for disagreement among teachers (nu = 1/(C*M))")
        add_argument_once(parser, "--svm_norm", action="store_true",
                          help="AEKD: normalise the teachers' gradients before the SVM")

    def weights(self, inputs):
        if inputs.gradients is None:
            raise ValueError("AEKD needs the loss's gradients w.r.t. the student (no anchor given)")
        C = self.opt.C
        svm_norm = bool(self.opt.svm_norm) or not inputs.is_logit_term
        w = aekd_teacher_weights(inputs.gradients(), C=C, svm_norm=svm_norm)
        B = inputs.losses.shape[1]
        return w.to(inputs.losses.device)[:, None].expand(-1, B).contiguous()
