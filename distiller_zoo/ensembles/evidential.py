"""EVIDENTIAL: teachers combined as Dirichlet evidence (new in mtkd; the reasoning is in
``docs/evidential_ensemble.md``).

Each teacher ``m`` is read as an evidential classifier (Sensoy et al., NeurIPS 2018; the Dirichlet
of EKD, Xiang et al., ICCV 2025): per sample, evidence ``e_m = exp(beta_m zt_m / T_e)`` (``beta_m``:
calibration, below) with
``zt_m = z_m - mean_k z_m`` (``--evidential_gauge mean``, default: a softmax-trained teacher's logit
offset is arbitrary, so its evidence is fixed up to that gauge; ``raw`` keeps the logits as trained,
for evidential teachers, ``train_teacher.py --loss evidential``), Dirichlet ``alpha_m = e_m + c``,
``c = exp(--evidential_prior)``, precision ``S_m = sum_k alpha_m,k``, uncertainty mass
``u_m = K c / S_m`` in ``(0, 1]``.

Pool (``--evidential_mode pool``, default). The teachers' evidence is pooled into one Dirichlet::

    alpha_ens = c + sum_m r_m e_m,       r_m = 1/M (--evidential_pool mean) or 1 (sum)

Evidence adds up where confident teachers agree; a flat (uncertain) teacher has little evidence
and moves the pooled Dirichlet little. With ``mean`` the pooled Dirichlet keeps one teacher's scale
(one teacher pools to itself); ``sum`` is the Bayesian update with independent pseudo-counts,
whose precision grows with the number of agreeing teachers. The normalised pooled evidence is the
mixture of the teachers' predictions ``e_m / E_m = softmax(z_m / T_e)`` weighted by their share of
the evidence ``E_m / sum_m' E_m'`` (``E_m = sum_k e_m,k``; ``evidence_shares``); with ``mean`` the
pooled Dirichlet's mean is likewise the mixture of the teachers' Dirichlet means weighted by
``S_m / sum_m' S_m'``.

The student distils this Dirichlet through ONE virtual teacher (``pooled_teacher``) whose logits
are ``T_e * log(sum_m r_m e_m)`` = ``T_e * logsumexp_m(zt_m / T_e + log r_m)``, i.e. the virtual
teacher's own exponential evidence *is* the pooled evidence. Every logit loss reads it as it reads
a teacher:

- ``ekd`` (``--ekd_T`` = ``T_e``, ``--ekd_prior`` = ``--evidential_prior``, the defaults): its
  first-order Dirichlet ``exp(z_v / T) + c`` is exactly ``alpha_ens``, so the student matches the
  pooled Dirichlet mean; its second-order term sees ``log1p(softplus(z_v / T)) + c`` =
  ``log1p(log1p(e_ens)) + c`` (``e_ens = sum_m r_m e_m``), EKD's own bounded transform of the pooled
  evidence;
- ``kd``, ``dkd`` (and ``aekt``, ``ctkd``) at their temperature ``T``: ``softmax(z_v / T)``; at
  ``T = T_e`` this is the pooled evidence normalised (the pooled Dirichlet mean without the prior's
  ``c``), at larger ``T`` it is softened as a teacher's softmax is;
- with one teacher and the ``raw`` gauge the virtual teacher is that teacher (same logits) wherever
  calibration leaves it as it is (``beta = 1``: right on the batch, or ``--evidential_calibrate none``).

The term then has one loss (its first distiller against the virtual teacher) with weight 1.
Losses that ask for extra views (``mlkd``) and feature terms have no pooled target: there the
strategy uses its weights below.

Weight (``--evidential_mode weight``; also feature terms and multi-view losses under ``pool``).
Each teacher's loss is weighted per sample by its evidential certainty::

    w[m, i] = softmax_m(-u[m, i] / tau)        (--evidential_tau, default 0.05)

so a sample's weights sum to 1, as AVERAGE_LOSS's (``1/M`` each) do: the term's loss
``(1/B) sum_i sum_m w[m,i] loss[m,i]`` is a per-sample convex combination of the teachers' losses,
on the scale of one teacher's loss.

Calibration (``--evidential_calibrate batch``, default). Exponential evidence trusts a teacher's
confidence, and a network can be confidently wrong (a collapsed one-epoch network predicting one
class with large logits would take most of the pooled evidence). Before the exponential each
teacher's logits are multiplied by ``beta_m`` in ``[0, 1]``, the inverse temperature minimising
the NLL of the batch's labels under ``softmax(beta z_m)`` (temperature scaling, Guo et al., ICML
2017; ``calibrated_sharpness``): a teacher right on the batch keeps ``beta = 1``, a confidently
wrong one gets ``beta ~ 0`` (flat, evidence 1 per class). This reads the labels, as CA-MKD does;
``--evidential_calibrate none`` reads the logits as they are (uncertainty, not error, is discounted).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from ..argtypes import finite_float, positive_float
from ..base import EnsembleStrategy, NetOutput, add_argument_once
from ..registry import register_ensemble

EVIDENTIAL_PRIOR = -1.22     # log c, EKD's CIFAR prior


def calibrated_sharpness(teacher_logits, labels, iters: int = 30):
    """Per-teacher inverse temperature ``beta_m`` in ``[0, 1]`` ``[M]`` (float64, no gradient): the
    minimiser of the batch's negative log-likelihood ``mean_i [logsumexp_k(beta z_ik) - beta z_iy]``
    (temperature scaling, Guo et al., ICML 2017), restricted to ``beta <= 1`` so that calibration
    only ever takes evidence away from an over-confident teacher, never adds to a good one.

    The NLL is convex in ``beta``: its derivative ``mean_i (E_p[z_i] - z_iy)`` (``p`` the softmax at
    ``beta``) increases with ``beta``, so bisection on its sign over ``[0, 1]`` finds the minimiser
    (to ``2^-iters``), a boundary included, in a fixed number of steps (no host synchronisation)."""
    z = teacher_logits.detach().to(torch.float64)
    z = z - z.mean(dim=-1, keepdim=True)
    z_y = z.gather(-1, labels.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1)   # [M, B]

    def rising(beta):                      # d NLL / d beta > 0
        p = torch.softmax(beta[:, None, None] * z, dim=-1)
        return ((p * z).sum(-1) - z_y).mean(-1) > 0

    lo = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    hi = torch.ones_like(lo)
    at_one = ~rising(hi)                   # the minimiser is a boundary: return it exactly
    at_zero = rising(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        up = rising(mid)
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    beta = (lo + hi) / 2
    return torch.where(at_one, torch.ones_like(beta), torch.where(at_zero, torch.zeros_like(beta), beta))


def teacher_log_evidence(teacher_logits, T: float = 1.0, gauge: str = "mean", sharpness=None):
    """``log e_m = beta_m zt_m / T`` ``[M, B, C]``, in float64 (finite for any finite logits), no
    gradient; ``beta_m`` = ``sharpness`` ``[M]`` (``calibrated_sharpness``), 1 when None."""
    z = teacher_logits.detach().to(torch.float64)
    if gauge == "mean":
        z = z - z.mean(dim=-1, keepdim=True)
    elif gauge != "raw":
        raise ValueError(f"unknown evidential gauge {gauge!r}; expected mean or raw")
    if sharpness is not None:
        z = z * sharpness.to(z)[:, None, None]
    return z / T


def uncertainty(teacher_logits, lam: float = EVIDENTIAL_PRIOR, T: float = 1.0, gauge: str = "mean", sharpness=None):
    """``u[m, i] = K c / S[m, i]`` ``[M, B]``."""
    log_e = teacher_log_evidence(teacher_logits, T, gauge, sharpness)
    K = log_e.shape[-1]
    log_E = torch.logsumexp(log_e, dim=-1)
    log_Kc = float(lam) + math.log(K)
    return torch.exp(log_Kc - torch.logaddexp(log_E, torch.full_like(log_E, log_Kc)))


def certainty_weights(teacher_logits, lam: float = EVIDENTIAL_PRIOR, T: float = 1.0, tau: float = 0.05,
                      gauge: str = "mean", sharpness=None):
    """``w[m, i] = softmax_m(-u[m, i] / tau)`` ``[M, B]`` (float32); each sample's weights sum to 1."""
    return torch.softmax(-uncertainty(teacher_logits, lam, T, gauge, sharpness) / tau, dim=0).float()


def pool_log_weights(M: int, pool: str = "mean") -> float:
    if pool == "mean":
        return -math.log(M)
    if pool == "sum":
        return 0.0
    raise ValueError(f"unknown evidential pooling {pool!r}; expected mean or sum")


def pooled_log_evidence(teacher_logits, T: float = 1.0, gauge: str = "mean", pool: str = "mean", sharpness=None):
    """``log(sum_m r_m e_m)`` ``[B, C]``."""
    log_e = teacher_log_evidence(teacher_logits, T, gauge, sharpness)
    return torch.logsumexp(log_e, dim=0) + pool_log_weights(log_e.shape[0], pool)


def pooled_logits(teacher_logits, T: float = 1.0, gauge: str = "mean", pool: str = "mean", sharpness=None):
    """The virtual teacher's logits ``T_e * log(sum_m r_m e_m)`` ``[B, C]``, float32 (clamped to
    its finite range: only logits near float32's limit can reach it)."""
    big = torch.finfo(torch.float32).max
    return (T * pooled_log_evidence(teacher_logits, T, gauge, pool, sharpness)).clamp(-big, big).float()


def pooled_alpha(teacher_logits, lam: float = EVIDENTIAL_PRIOR, T: float = 1.0, gauge: str = "mean",
                 pool: str = "mean", sharpness=None):
    """``alpha_ens = c + sum_m r_m e_m`` ``[B, C]`` (for inspection and tests; may overflow for
    huge logits, the virtual logits never do)."""
    return pooled_log_evidence(teacher_logits, T, gauge, pool, sharpness).exp() + math.exp(lam)


def evidence_shares(teacher_logits, T: float = 1.0, gauge: str = "mean", sharpness=None):
    """Each teacher's share ``r_m E_m / sum_m' r_m' E_m'`` ``[M, B]`` of the pooled evidence (``r_m``
    is the same for every teacher, so it cancels): the weight of its prediction in the virtual
    teacher's ``softmax(z_v / T_e)``."""
    log_E = torch.logsumexp(teacher_log_evidence(teacher_logits, T, gauge, sharpness), dim=-1)
    return torch.softmax(log_E, dim=0).float()


@register_ensemble("EVIDENTIAL")
class Evidential(EnsembleStrategy):
    min_teachers = 1

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--evidential_mode", type=str, default="pool", choices=("pool", "weight"),
                          help="EVIDENTIAL: distil one pooled Dirichlet (pool) or weight each teacher's loss "
                               "per sample by its certainty (weight)")
        add_argument_once(parser, "--evidential_prior", type=finite_float, default=EVIDENTIAL_PRIOR,
                          help="EVIDENTIAL: log of the Dirichlet prior c per class (EKD's -1.22)")
        add_argument_once(parser, "--evidential_T", type=positive_float, default=1.0,
                          help="EVIDENTIAL: evidence temperature, e = exp(z / T)")
        add_argument_once(parser, "--evidential_tau", type=positive_float, default=0.05,
                          help="EVIDENTIAL: sharpness of the certainty weights softmax_m(-u_m / tau)")
        add_argument_once(parser, "--evidential_pool", type=str, default="mean", choices=("mean", "sum"),
                          help="EVIDENTIAL: pooled evidence is the teachers' mean (one teacher's scale) or sum")
        add_argument_once(parser, "--evidential_gauge", type=str, default="mean", choices=("mean", "raw"),
                          help="EVIDENTIAL: centre each teacher's logits per sample before exp (mean, for "
                               "softmax teachers) or use them as trained (raw, evidential teachers)")
        add_argument_once(parser, "--evidential_calibrate", type=str, default="batch", choices=("batch", "none"),
                          help="EVIDENTIAL: temper each teacher's evidence by the temperature (>= 1) that "
                               "fits the batch's labels best (batch), or read the logits as they are (none)")

    def __init__(self, opt):
        super().__init__(opt)
        self.mode = opt.evidential_mode
        self.lam = float(opt.evidential_prior)
        self.T = float(opt.evidential_T)
        self.tau = float(opt.evidential_tau)
        self.pool = opt.evidential_pool
        self.gauge = opt.evidential_gauge
        self.calibrate = opt.evidential_calibrate
        if self.calibrate not in ("batch", "none"):
            raise ValueError(f"--evidential_calibrate must be batch or none, got {self.calibrate!r}")
        if self.T <= 0 or self.tau <= 0:
            raise ValueError("--evidential_T and --evidential_tau must be positive")

    def sharpness(self, teacher_logits, labels):
        return calibrated_sharpness(teacher_logits, labels) if self.calibrate == "batch" else None

    def weights(self, inputs):
        logits = inputs.teacher_logits
        return certainty_weights(logits, self.lam, self.T, self.tau, self.gauge,
                                 self.sharpness(logits, inputs.labels))

    def pooled_teacher(self, teachers: List[NetOutput], batch, kind: str) -> Optional[NetOutput]:
        if self.mode != "pool" or kind != "logit" or batch.view_outputs:
            return None
        logits = torch.stack([t.logits.detach() for t in teachers])
        return NetOutput(feats=[], logits=pooled_logits(logits, self.T, self.gauge, self.pool,
                                                        self.sharpness(logits, batch.labels)))
