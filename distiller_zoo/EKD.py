"""EKD: "Evidential Knowledge Distillation" (Xiang, Gao, Xu, ICCV 2025), ``--distill ekd``.

Each network's logits ``z`` define a Dirichlet over the class probabilities (``distiller_zoo.dirichlet``),
prior ``c = exp(--ekd_prior)`` on every class. Per sample::

    L = w_ce * [psi(S) - psi(alpha_y)]                          evidential CE,  alpha = exp(z_s) + c
      + w_kd * T^2 * KL(pbar_t || pbar_s)                       first order,    alpha = exp(z / T) + c, pbar = alpha / S
      + ramp * w_dir * T^2 * KL(Dir(alpha_t) || Dir(alpha_s))   second order,   alpha = log1p(softplus(z / T)) + c

with ``ramp = min(epoch / --ekd_warmup, 1)`` (epochs count from 1) and the closed-form Dirichlet KL.
The batch mean of ``L`` is the authors' loss. What follows the authors' code and what is ours:

- From the official code (github.com/lyxiang-casia/EKD; the consistent
  ``tiny-transformers/pycls/models/distill.py`` and ``mdistiller/distillers/KD4eModel.py``): the
  three terms, both activations, the shared prior, the forward direction (teacher as reference),
  ``T^2`` on both distillation terms, the linear ramp of the second-order term, and the defaults of
  the CIFAR-100 config ``resnet32x4_resnet8x4.yaml``: ``--ekd_prior -1.22`` (c ~ 0.295),
  ``--ekd_T 1``, ``--ekd_w_ce 1``, ``--ekd_w_kd 4.5``, ``--ekd_w_dir 4.5``, ``--ekd_warmup 30`` (SGD
  lr 0.05, batch 64, 240 epochs, decay at 150/180/210, wd 5e-4 there).
- ``--ekd_reverse``: ``KL(Dir(alpha_s) || Dir(alpha_t))``, the direction of the authors' ImageNet
  distiller (``EKDIN.py``, "reverse_EKD"); that distiller's other changes (a learnable prior
  initialised near 70 on the second-order term, softplus first-order evidence) are not copied.
  ``--ekd_expectation``: the first-order term as the expected cross-entropy
  ``T^2 * sum_k pbar_t,k (psi(S_s) - psi(alpha_s,k))`` (``EKDIN.py``'s ``EXPECTATION`` switch).
  ``--ekd_activation`` picks the second-order evidence function (softplus, exp, relu; the authors
  offer the three, softplus in the CIFAR configs).
- The CE weight lives *in this loss* (``--ekd_w_ce``), because the evidential CE is not the
  softmax CE the student step adds with ``-r``; ``configure`` therefore sets ``-r`` to 0 unless it is
  given (give ``-r`` to add the softmax CE as well), and ``-a`` stays 1. Consequence: with several
  teachers this loss (CE included) is weighted per sample by the ensemble strategy, so the CE's
  effective weight is ``w_ce * sum_m w[m, i]``: 1 under AVERAGE_LOSS, AEKD and EVIDENTIAL, ``1/M``
  under CAMKD, ``(M-1)/M`` under EBKD.
- ``--logit-stand`` (Sun et al., CVPR 2024) Z-scores both logits in the first-order term only, at
  temperature ``--base-temp`` (the authors' ``KD4eModel.py`` standardizes there; their CE and
  second-order term read raw logits). No weight is changed by the flag.
- Not copied: the learnable prior of the authors' code (``LAMB == 0``), and their trainer's
  Gaussian noise on the student's classifier gradient.
- Numerics (ours): everything in float64 from log-parameters (``dirichlet.py``), finite for any
  logits and under autocast; no clamps on the logits.

Teachers may be plain (``--loss ce``) or evidential (``train_teacher.py --loss evidential``, the
authors' teachers); the loss reads their logits the same way. The student predicts ``argmax z``
(= ``argmax`` of its Dirichlet mean); its uncertainty is ``u = K c / S``.
"""
from __future__ import annotations

from .argtypes import finite_float, non_negative_float, positive_float
from .base import Configured, Distiller, TeacherLoss, add_argument_once
from .dirichlet import ACTIVATIONS, distribution_kl, evidential_ce, expected_ce, mean_kl
from .DKD import warmup_factor
from .KD import standardize
from .registry import register_distiller

EKD_PRIOR = -1.22          # log c of the authors' CIFAR CNN configs (c ~ 0.295)


def ekd_terms(s, t, labels, lam=EKD_PRIOR, T=1.0, activation="softplus", reverse=False, expectation=False,
              logit_stand=False, base_temp=2.0):
    """Per-sample ``(ce, first, second)``, each ``[B]`` (first and second already times ``T^2``),
    unweighted and unramped. ``s``/``t``: student/teacher logits ``[B, K]``."""
    ce = evidential_ce(s, labels, lam)
    s1, t1, T1 = s, t.detach(), T
    if logit_stand:
        s1, t1, T1 = standardize(s), standardize(t.detach()), base_temp
    first = (expected_ce if expectation else mean_kl)(s1, t1, lam, T1)
    second = distribution_kl(s, t, lam, T, activation, reverse)
    return ce, first, second


@register_distiller("ekd")
class EKD(Distiller):
    kind = "logit"

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--ekd_prior", type=finite_float, default=EKD_PRIOR,
                          help="EKD: log of the Dirichlet prior c on every class (c = exp(value); authors' CIFAR: -1.22)")
        add_argument_once(parser, "--ekd_T", type=positive_float, default=1.0, help="EKD temperature (authors' CIFAR: 1)")
        add_argument_once(parser, "--ekd_w_ce", type=non_negative_float, default=1.0,
                          help="EKD: weight of the evidential CE inside the loss (sets -r 0 unless -r is given)")
        add_argument_once(parser, "--ekd_w_kd", type=non_negative_float, default=4.5,
                          help="EKD: weight of the first-order term (KL between Dirichlet means; authors: 4.5)")
        add_argument_once(parser, "--ekd_w_dir", type=non_negative_float, default=4.5,
                          help="EKD: weight of the second-order term (KL between Dirichlets; authors: 4.5)")
        add_argument_once(parser, "--ekd_warmup", type=non_negative_float, default=30,
                          help="EKD: epochs over which the second-order term ramps in (authors' CIFAR: 30)")
        add_argument_once(parser, "--ekd_reverse", action="store_true",
                          help="EKD: KL(student || teacher) in the second-order term (authors' ImageNet variant)")
        add_argument_once(parser, "--ekd_expectation", action="store_true",
                          help="EKD: first-order term as the expected CE under the student's Dirichlet")
        add_argument_once(parser, "--ekd_activation", type=str, default="softplus", choices=ACTIVATIONS,
                          help="EKD: second-order evidence, alpha = log1p(act(z/T)) + c (authors: softplus)")

    @classmethod
    def configure(cls, opts, given):
        if float(opts.ekd_w_ce) <= 0:
            return Configured()
        if "gamma" in given:
            return Configured(notes=[f"ekd: evidential CE (--ekd_w_ce {opts.ekd_w_ce}) in the loss, softmax CE "
                                     f"-r {opts.gamma} as given"])
        return Configured({"gamma": 0.0}, [f"ekd: evidential CE (--ekd_w_ce {opts.ekd_w_ce}) in the loss replaces "
                                           f"the softmax CE: -r = 0"])

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        self.lam = float(opt.ekd_prior)
        self.T = float(opt.ekd_T)
        self.w_ce = float(opt.ekd_w_ce)
        self.w_kd = float(opt.ekd_w_kd)
        self.w_dir = float(opt.ekd_w_dir)
        self.warmup = float(opt.ekd_warmup)
        self.reverse = bool(opt.ekd_reverse)
        self.expectation = bool(opt.ekd_expectation)
        self.activation = opt.ekd_activation
        self.logit_stand = bool(opt.logit_stand)
        self.base_temp = float(opt.base_temp)

    def forward(self, s, t, batch):
        ramp = warmup_factor(batch.epoch, self.warmup)
        ce, first, second = ekd_terms(s.logits, t.logits, batch.labels, self.lam, self.T, self.activation,
                                      self.reverse, self.expectation, self.logit_stand, self.base_temp)
        loss = self.w_ce * ce + self.w_kd * first + (ramp * self.w_dir) * second
        metrics = {"ce": ce.detach().mean(), "first": first.detach().mean(), "second": second.detach().mean()}
        return TeacherLoss(loss, anchor=s.logits, metrics=metrics)
