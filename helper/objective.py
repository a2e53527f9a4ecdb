"""The student's objective as the user writes it: the ``--distill`` grammar, the terms' weights and
their schedule, and the lists that make a group of students.

    total = gamma * CE(student, y) + sum_k weight_k * (1/B) sum_i sum_m W_k[m, i] * L_k[m, i]

The objective is a list of named, weighted terms written in ``--distill``:

    --distill kd+attention:1000+crd:0.8@AEKD

Terms are joined by ``+`` (a comma separates the students of a group); each is
``LOSS[:WEIGHT][@STRATEGY]``: a registered loss (``DISTILLERS``), its weight, and the ensemble
strategy that combines its teachers (default ``--ensemble_method``). A logit term (``kd``,
``dkd``...) without a weight takes ``-a``; a feature term (``hint``, ``inter``...) takes ``-b``
(default: the usual weight of the first feature loss). An objective with no logit term gets ``kd``
weighted by ``-a`` first, so RepDistiller's and CA-MKD's ``--distill X -r -a -b`` keep their
meaning: ``kd`` alone or ``X`` alone for a logit loss, ``kd`` (-a) + ``X`` (-b) for a feature loss.
CA-MKD's schedule applies per kind: ``--distill_decay`` decays the logit terms,
``--beta_delay_epochs`` delays the feature terms (``ObjectiveSchedule``).

``objective_terms`` is the one place that knows this layout; everything here is pure (it reads a
configuration and returns values, ``resolve_objective`` a new configuration).
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

from distiller_zoo.registry import DISTILLERS, ENSEMBLES

_TERM = re.compile(r"^(?P<loss>[^:@]+)(?::(?P<weight>[^@]*))?(?:@(?P<ensemble>.*))?$")


def parse_distill(text: str) -> List[Tuple[str, Optional[float], Optional[str]]]:
    """``[(loss, weight or None, strategy or None)]`` from one student's ``--distill`` value; a
    ``ValueError`` with a one-line message for anything else."""
    if "," in text:
        raise ValueError(f"--distill {text!r}: join terms with '+' (a comma separates students, not supported "
                         f"here)")
    out, seen = [], {}
    for part in text.split("+"):
        m = _TERM.match(part.strip())
        if m is None:
            raise ValueError(f"--distill {text!r}: term {part!r} is not LOSS[:WEIGHT][@STRATEGY]")
        loss = m["loss"].strip()
        if loss not in DISTILLERS:
            raise ValueError(f"--distill: unknown loss {loss!r}; expected one of: {', '.join(sorted(DISTILLERS))}")
        weight = None
        if m["weight"] is not None:
            try:
                weight = float(m["weight"])
            except ValueError:
                weight = float("nan")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"--distill: weight of {loss} is {m['weight']!r}; expected a non-negative number")
        ensemble = m["ensemble"]
        if ensemble is not None and ensemble not in ENSEMBLES:
            raise ValueError(f"--distill: unknown ensemble strategy {ensemble!r} for {loss}; expected one of: "
                             f"{', '.join(sorted(ENSEMBLES))}")
        if DISTILLERS[loss] in seen:
            raise ValueError(f"--distill: {loss} appears twice (as {seen[DISTILLERS[loss]]!r} and {part!r})")
        seen[DISTILLERS[loss]] = part
        out.append((loss, weight, ensemble))
    return out


def objective_losses(distill: str) -> List[str]:
    """The losses of the run's terms, in order: those of ``--distill``, after ``kd`` when none of
    them is a logit loss."""
    names = [loss for loss, _, _ in parse_distill(distill)]
    return names if any(DISTILLERS[n].kind == "logit" for n in names) else ["kd"] + names


def loader_views(distill: str, train_view: str) -> Tuple[Tuple[str, ...], bool]:
    """The views the training loader yields for this objective (the training view, then those the
    losses ask for) and whether it yields the samples' index."""
    classes = [DISTILLERS[n] for n in objective_losses(distill)]
    views = (train_view,) + tuple(dict.fromkeys(v for cls in classes for v in cls.views if v != train_view))
    return views, any(cls.needs_index for cls in classes)


@dataclass(frozen=True)
class TermSpec:
    """One term of the objective, resolved: loss name, base weight, ensemble strategy, and the
    loss's kind ("logit" terms follow ``-a``'s schedule, "feature" terms ``-b``'s)."""
    loss: str
    weight: float
    ensemble: str
    kind: str


def objective_terms(config) -> List[TermSpec]:
    """The run's terms from ``--distill``, ``-a``, ``-b`` and ``--ensemble_method`` (once
    ``resolve_objective`` has filled the weights): the one place that knows the layout."""
    parsed = parse_distill(config.distill)
    if not any(DISTILLERS[loss].kind == "logit" for loss, _, _ in parsed):
        parsed = [("kd", None, None)] + parsed
    terms = []
    for loss, weight, ensemble in parsed:
        kind = DISTILLERS[loss].kind
        if weight is None:
            weight = config.alpha if kind == "logit" else config.beta
        terms.append(TermSpec(loss, weight, ensemble or config.ensemble_method, kind))
    return terms


def resolve_objective(config, given: set):
    """The loss weights the user did not give, and the objective described: ``(config, notes)``.

    Each loss class of the run decides the defaults that depend on other flags first
    (``Distiller.configure``, e.g. under ``--logit-stand``); ``given`` holds the weight flags typed
    (``"gamma"``, ``"alpha"``, ``"beta"``). The new configuration has every weight, ``objective``
    (the formula, e.g. ``1*CE + 1*kd + 50*inter [CAMKD]``) and ``objective_terms`` (one dict per
    term), which ``args.json`` records; ``notes`` are the lines the log prints after the formula."""
    notes = []
    for cls in dict.fromkeys(DISTILLERS[n] for n in objective_losses(config.distill)):
        decided = cls.configure(config, given)
        config = config.replace(**decided.changes)
        notes += decided.notes
    weights = {"gamma": 1.0 if config.gamma is None else config.gamma,
               "alpha": 1.0 if config.alpha is None else config.alpha}
    if config.beta is None:
        first = next((n for n, w, _ in parse_distill(config.distill)
                      if DISTILLERS[n].kind == "feature" and w is None), None)
        usual = DISTILLERS[first].default_weight if first is not None else None
        weights["beta"] = usual if usual is not None else 0.0
        if first is not None:
            notes.append(f"-b not given: using {first}'s usual weight {weights['beta']}")
    config = config.replace(**weights)
    terms = objective_terms(config)
    return config.replace(objective=objective_formula(ObjectiveSchedule.of(config), terms),
                          objective_terms=[asdict(t) for t in terms]), notes


@dataclass(frozen=True)
class ObjectiveSchedule:
    """CA-MKD's schedule of the loss weights over the epochs.

    ``--beta_delay_epochs``: feature terms are left out for the first epochs (1 in the reference
    scripts). ``--distill_decay``: over the second half of training logit terms decay linearly to
    0 and the CE weight becomes ``1 - `` the decayed ``-a``; feature terms are unchanged."""
    gamma: float
    alpha: float
    epochs: int
    distill_decay: bool
    beta_delay_epochs: int

    @classmethod
    def of(cls, config) -> "ObjectiveSchedule":
        return cls(config.gamma, config.alpha, config.epochs, config.distill_decay, config.beta_delay_epochs)

    def weights(self, terms: Sequence[TermSpec], epoch: int) -> Tuple[float, List[float]]:
        """The CE weight and each term's weight at ``epoch``."""
        gamma, decay = self.gamma, None
        if self.distill_decay and epoch > self.epochs / 2:
            decay = int(self.epochs - epoch) / int(self.epochs / 2)
            gamma = 1 - decay * self.alpha
        weights = []
        for t in terms:
            w = t.weight
            if t.kind == "logit" and decay is not None:
                w = decay * w
            if t.kind == "feature" and epoch <= self.beta_delay_epochs:
                w = 0.0
            weights.append(w)
        return gamma, weights


def objective_formula(schedule: ObjectiveSchedule, terms: Sequence[TermSpec]) -> str:
    """``1*CE + 1*kd + 50*inter [CAMKD]``: the weighted sum, the strategy in brackets (per term
    when they differ), then the schedule when it changes a weight."""
    strategies = {t.ensemble for t in terms}
    parts = [f"{schedule.gamma:g}*CE"] + [f"{t.weight:g}*{t.loss}" + ("" if len(strategies) == 1 else
                                                                       f"[{t.ensemble}]") for t in terms]
    text = " + ".join(parts) + (f" [{terms[0].ensemble}]" if len(strategies) == 1 else "")
    kinds = {t.kind for t in terms if t.weight}
    if schedule.beta_delay_epochs > 0 and "feature" in kinds:
        text += f"; feature terms from epoch {schedule.beta_delay_epochs + 1}"
    if schedule.distill_decay:
        text += "; logit terms decay to 0 over the second half (CE weight 1 - decayed -a)"
    return text


# -- the students of a group -------------------------------------------------------------------------

def split_list(flag: str, text: str) -> List[str]:
    """The students' values of a comma-separated flag; a ``ValueError`` (one line) for an empty
    item or a duplicate."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"{flag} {text!r}: an empty name in the list; expected names separated by ','")
    twice = sorted({item for item in items if items.count(item) > 1})
    if twice:
        raise ValueError(f"{flag} {text!r} lists {', '.join(twice)} more than once; each student once")
    return items


def split_logit_stand(argv: Sequence[str]):
    """``argv`` without ``--logit-stand both`` (a group: each student without and with logit
    standardization), and ``[False, True]`` when it was there, else None."""
    out, values, i = [], None, 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a in ("--logit-stand", "--logit_stand") and i + 1 < len(argv) and argv[i + 1] == "both":
            values, i = [False, True], i + 2
            continue
        if a in ("--logit-stand=both", "--logit_stand=both"):
            values, i = [False, True], i + 1
            continue
        out.append(a)
        i += 1
    return out, values


def student_choices(distill: str, ensemble_method: Optional[str], logit_stand: bool,
                    stand_values=None) -> List[Tuple[str, Optional[str], bool]]:
    """``(distill, ensemble_method, logit_stand)`` of every student: the cross product of the
    ``--distill`` list, the ``--ensemble_method`` list and ``--logit-stand both``, in that order
    (one triple for a solo run); ``ValueError`` for a bad list or name."""
    methods = split_list("--ensemble_method", ensemble_method) if ensemble_method else [None]
    for method in methods:
        if method is not None and method not in ENSEMBLES:
            raise ValueError(f"--ensemble_method: unknown strategy {method!r}; expected one of: "
                             f"{', '.join(sorted(ENSEMBLES))}")
    distills = split_list("--distill", distill)
    for one in distills:
        parse_distill(one)
    return [(d, m, s) for d in distills for m in methods for s in (stand_values or [logit_stand])]
