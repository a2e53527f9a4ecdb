"""Dirichlet math shared by the evidential losses (``ekd``), the evidential teacher loss
(``train_teacher.py --loss evidential``) and the evidential ensemble strategy (``EVIDENTIAL``).

A network's logits ``z`` ``[B, K]`` give Dirichlet *evidence* ``e = act(z / T)`` and parameters
``alpha = e + c``, with one prior ``c = exp(lam)`` for every class (EKD: Xiang, Gao, Xu,
"Evidential Knowledge Distillation", ICCV 2025; the evidential loss of Sensoy, Kaplan, Kandemir,
"Evidential Deep Learning to Quantify Classification Uncertainty", NeurIPS 2018, with ``c`` in
place of 1). ``S = sum_k alpha_k`` is the precision, ``alpha / S`` the mean (the prediction) and
``u = K c / S`` the uncertainty mass of subjective logic.

Numerics. Everything is computed in float64 with autocast off (inputs in half precision,
bfloat16 or float32 are promoted; results come back in the input's float dtype, at least
float32), so the terms are the same under ``--amp``. With the exponential activation the
parameters can be astronomically large (``exp(1000)``), so those quantities never form ``alpha``:
they work from ``log alpha = logaddexp(z / T, lam)`` and use ``psi(x) = log x + h(x)`` with
``h(x) = psi(x) - log x`` evaluated from ``log x`` (the asymptotic series for ``x >= 10``,
``digamma`` below), which is finite and smooth for every input. The closed-form Dirichlet KL is
used with the bounded second-order activation ``log1p(act(z / T)) + c`` (values in
``[c, ~710]`` for any finite float64 input), in float64 so that near-identical Dirichlets do not
lose the value to cancellation; it is clamped at 0 against rounding.
"""
from __future__ import annotations

import contextlib
import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("softplus", "exp", "relu")
_SERIES_FROM = 10.0
_LOG_SERIES_FROM = math.log(_SERIES_FROM)


def out_dtype(z: Tensor) -> torch.dtype:
    """The dtype results come back in: the input's, at least float32."""
    return z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32


def finish(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float64) in ``dtype``: a value beyond ``dtype``'s finite range (a loss of 1e39 from
    logits near float32's limit) is clamped to it, its gradient passed through unchanged."""
    big = torch.finfo(dtype).max
    if dtype != x.dtype:
        x = x - (x - x.clamp(-big, big)).detach()
    return x.to(dtype)


def work(z: Tensor) -> Tensor:
    """Float64 copy of ``z`` for the Dirichlet math (gradients flow through the cast)."""
    return z.to(torch.float64)


def no_autocast(z: Tensor):
    """A context with autocast off on ``z``'s device type (the math must not be downcast)."""
    kind = z.device.type
    if kind in ("cuda", "cpu", "xpu"):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def prior(lam: Union[float, Tensor]) -> float:
    """``c = exp(lam)``."""
    return math.exp(float(lam))


# -- digamma from logarithms ----------------------------------------------------------------------
def digamma_minus_log(log_x: Tensor) -> Tensor:
    """``h(x) = psi(x) - log(x)`` from ``log x``, finite (and with finite gradients) for every
    finite ``log x``: the asymptotic series ``-1/(2x) - 1/(12x^2) + 1/(120x^4) - 1/(252x^6) +
    1/(240x^8) - 1/(132x^10) + 691/(32760x^12)`` for ``x >= 10`` (truncation error below 1e-14),
    ``digamma(x) - log x`` below.
    Each branch sees a clamped input, so the unused branch never produces inf/nan gradients."""
    big = log_x >= _LOG_SERIES_FROM
    inv = torch.exp(-log_x.clamp_min(_LOG_SERIES_FROM))          # 1/x <= 0.1
    inv2 = inv * inv
    series = -0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (
        1.0 / 240 - inv2 * (1.0 / 132 - inv2 * 691.0 / 32760)))))
    small_log = log_x.clamp_max(_LOG_SERIES_FROM)
    direct = torch.digamma(torch.exp(small_log)) - small_log
    return torch.where(big, series, direct)


def digamma_from_log(log_x: Tensor) -> Tensor:
    """``psi(x)`` from ``log x`` (see ``digamma_minus_log``)."""
    return log_x + digamma_minus_log(log_x)


# -- the exponential-evidence Dirichlet (first order, evidential CE, the ensemble) -----------------
def log_alpha_exp(z: Tensor, lam: float, T: float = 1.0) -> Tensor:
    """``log(exp(z / T) + exp(lam))`` ``[B, K]`` in float64, for any logits."""
    z = work(z)
    return torch.logaddexp(z / T, torch.full_like(z, float(lam)))


def log_mean_exp(log_alpha: Tensor) -> Tensor:
    """``log(alpha / S)``: the log of the Dirichlet mean from log-parameters."""
    return log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)


def evidential_ce(z: Tensor, labels: Tensor, lam: float, T: float = 1.0) -> Tensor:
    """Per-sample evidential cross-entropy ``[B]``: ``psi(S) - psi(alpha_y)`` with
    ``alpha = exp(z / T) + exp(lam)`` (the expected cross-entropy ``E_{p ~ Dir(alpha)}[-log p_y]``;
    EKD's CE term and its teachers' training loss). Finite for any logits; ``->`` softmax CE as the
    logits grow (``psi(x) ~ log x``)."""
    with no_autocast(z):
        log_a = log_alpha_exp(z, lam, T)
        log_S = torch.logsumexp(log_a, dim=-1)
        log_ay = log_a.gather(1, labels.view(-1, 1)).squeeze(1)
        loss = (log_S - log_ay) + digamma_minus_log(log_S) - digamma_minus_log(log_ay)
    return finish(loss, out_dtype(z))


def mean_kl(z_s: Tensor, z_t: Tensor, lam: float, T: float = 1.0) -> Tensor:
    """Per-sample ``T^2 * KL(pbar_t || pbar_s)`` ``[B]`` between the Dirichlet means
    ``pbar = alpha / S``, ``alpha = exp(z / T) + exp(lam)`` (EKD's first-order term); the teacher
    side carries no gradient."""
    with no_autocast(z_s):
        lp_s = log_mean_exp(log_alpha_exp(z_s, lam, T))
        lp_t = log_mean_exp(log_alpha_exp(z_t.detach(), lam, T))
        loss = (lp_t.exp() * (lp_t - lp_s)).sum(-1) * (T * T)
    return finish(loss, out_dtype(z_s))


def expected_ce(z_s: Tensor, z_t: Tensor, lam: float, T: float = 1.0) -> Tensor:
    """Per-sample ``T^2 * sum_k pbar_t,k (psi(S_s) - psi(alpha_s,k))`` ``[B]``: the expected
    cross-entropy of the student's Dirichlet against the teacher's mean (the first-order term of
    EKD's ImageNet distiller, ``EXPECTATION`` on)."""
    with no_autocast(z_s):
        log_a_s = log_alpha_exp(z_s, lam, T)
        log_S_s = torch.logsumexp(log_a_s, dim=-1, keepdim=True)
        p_t = log_mean_exp(log_alpha_exp(z_t.detach(), lam, T)).exp()
        psi_gap = (log_S_s - log_a_s) + digamma_minus_log(log_S_s) - digamma_minus_log(log_a_s)
        loss = (p_t * psi_gap).sum(-1) * (T * T)
    return finish(loss, out_dtype(z_s))


def uncertainty_exp(z: Tensor, lam: float, T: float = 1.0) -> Tensor:
    """Subjective-logic uncertainty mass ``u = K c / S`` ``[B]`` (in ``(0, 1]``) of
    ``alpha = exp(z / T) + c``, from logarithms."""
    with no_autocast(z):
        K = z.shape[-1]
        log_S = torch.logsumexp(log_alpha_exp(z, lam, T), dim=-1)
        u = torch.exp(float(lam) + math.log(K) - log_S)
    return finish(u, out_dtype(z))


# -- the bounded second-order Dirichlet and the closed-form KL ------------------------------------
def evidence(x: Tensor, activation: str = "softplus") -> Tensor:
    """``act(x)`` for ``activation`` in ``softplus``, ``exp``, ``relu`` (EKD's choices)."""
    if activation == "softplus":
        return F.softplus(x)
    if activation == "exp":
        return torch.exp(x)
    if activation == "relu":
        return F.relu(x)
    raise ValueError(f"unknown evidence activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


def second_order_alpha(z: Tensor, lam: float, T: float = 1.0, activation: str = "softplus") -> Tensor:
    """EKD's distribution-term parameters ``log1p(act(z / T)) + c`` ``[B, K]`` in float64
    (``log1p(exp(x))`` is taken as ``softplus(x)``, so every activation is finite for any input)."""
    x = work(z) / T
    e = F.softplus(x) if activation == "exp" else torch.log1p(evidence(x, activation))
    return e + prior(lam)


def dirichlet_kl(alpha_p: Tensor, alpha_q: Tensor) -> Tensor:
    """Closed-form ``KL(Dir(alpha_p) || Dir(alpha_q))`` per row ``[B]``:
    ``lgamma(S_p) - lgamma(S_q) - sum_k [lgamma(p_k) - lgamma(q_k)] + sum_k (p_k - q_k)(psi(p_k) - psi(S_p))``.
    Computed in float64 and clamped at 0 (rounding); exactly 0 for identical parameters. Result in
    the inputs' float dtype (at least float32)."""
    dtype = out_dtype(alpha_p)
    with no_autocast(alpha_p):
        p, q = work(alpha_p), work(alpha_q)
        S_p, S_q = p.sum(-1), q.sum(-1)
        kl = (torch.lgamma(S_p) - torch.lgamma(S_q) - (torch.lgamma(p) - torch.lgamma(q)).sum(-1)
              + ((p - q) * (torch.digamma(p) - torch.digamma(S_p)[:, None])).sum(-1))
        kl = kl.clamp_min(0.0)
    return finish(kl, dtype)


def distribution_kl(z_s: Tensor, z_t: Tensor, lam: float, T: float = 1.0, activation: str = "softplus",
                    reverse: bool = False) -> Tensor:
    """Per-sample ``T^2 * KL(Dir(alpha_t) || Dir(alpha_s))`` ``[B]`` (``reverse``: ``KL(student ||
    teacher)``, EKD's ImageNet direction) on the second-order parameters
    ``log1p(act(z / T)) + exp(lam)``; the teacher side carries no gradient."""
    with no_autocast(z_s):
        a_s = second_order_alpha(z_s, lam, T, activation)
        a_t = second_order_alpha(z_t.detach(), lam, T, activation)
        kl = dirichlet_kl(a_s, a_t) if reverse else dirichlet_kl(a_t, a_s)
    return finish(kl * (T * T), out_dtype(z_s))
