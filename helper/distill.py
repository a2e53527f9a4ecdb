"""The student's objective and its step: teachers once, student once, every distillation term
per teacher, weighted by its ensemble strategy.

    total = gamma * CE(student, y) + sum_k weight_k * (1/B) sum_i sum_m W_k[m, i] * L_k[m, i]

The objective is a list of named, weighted terms written in ``--distill``:

    --distill kd+attention:1000+crd:0.8@AEKD

Terms are joined by ``+`` (a comma is kept for several students); each is ``LOSS[:WEIGHT][@STRATEGY]``:
a registered loss (``DISTILLERS``), its weight, and the ensemble strategy that combines its
teachers (default ``--ensemble_method``). A term is that loss applied to every teacher (one
distiller, with its own connectors, per teacher). A logit term (``kd``, ``dkd``...) without a
weight takes ``-a``; a feature term (``hint``, ``inter``...) takes ``-b`` (default: the usual weight
of the first feature loss). An objective with no logit term gets ``kd`` weighted by ``-a`` first,
so RepDistiller's and CA-MKD's ``--distill X -r -a -b`` keep their meaning: ``kd`` alone or ``X``
alone for a logit loss, ``kd`` (-a) + ``X`` (-b) for a feature loss. CA-MKD's schedule applies per
kind: ``--distill_decay`` decays the logit terms, ``--beta_delay_epochs`` delays the feature terms.

``objective_terms`` is the one place that knows this layout. Nothing here branches on a
method's name: the registries resolved them when the run was built.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo.base import Batch, BuildContext, EnsembleInputs, NetOutput, combine
from distiller_zoo.registry import DISTILLERS, ENSEMBLES

from .distributed import average_gradients
from .loop import StepOutput, Task, backward_and_step
from .teachers import TeacherEnsemble


_TERM = re.compile(r"^(?P<loss>[^:@]+)(?::(?P<weight>[^@]*))?(?:@(?P<ensemble>.*))?$")


def parse_distill(text: str) -> List[Tuple[str, Optional[float], Optional[str]]]:
    """``[(loss, weight or None, strategy or None)]`` from a ``--distill`` value; a ``ValueError``
    with a one-line message for anything else."""
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


@dataclass(frozen=True)
class TermSpec:
    """One term of the objective, resolved: loss name, base weight, ensemble strategy, and the
    loss's kind ("logit" terms follow ``-a``'s schedule, "feature" terms ``-b``'s)."""
    loss: str
    weight: float
    ensemble: str
    kind: str


def objective_terms(args) -> List[TermSpec]:
    """The run's terms from ``--distill``, ``-a``, ``-b`` and ``--ensemble_method`` (after
    ``resolve_objective`` filled the weights): the one place that knows the layout."""
    parsed = parse_distill(args.distill)
    if not any(DISTILLERS[loss].kind == "logit" for loss, _, _ in parsed):
        parsed = [("kd", None, None)] + parsed
    terms = []
    for loss, weight, ensemble in parsed:
        kind = DISTILLERS[loss].kind
        if weight is None:
            weight = args.alpha if kind == "logit" else args.beta
        terms.append(TermSpec(loss, weight, ensemble or args.ensemble_method, kind))
    return terms


def resolve_objective(args, given: set) -> List[str]:
    """Fill the loss weights the user did not give and describe the objective.

    Lets each loss class of the run adjust defaults first (``Distiller.configure``, e.g. under
    ``--logit-stand``); ``given`` holds the weight flags typed (``"gamma"``, ``"alpha"``, ``"beta"``).
    Sets ``args.objective`` (the formula, e.g. ``1*CE + 1*kd + 50*inter [CAMKD]``) and
    ``args.objective_terms`` (one dict per term) so that ``args.json`` records them; returns notes
    for the log."""
    notes = []
    losses = objective_losses(args.distill)
    for cls in dict.fromkeys(DISTILLERS[n] for n in losses):
        notes += cls.configure(args, given)
    if args.gamma is None:
        args.gamma = 1.0
    if args.alpha is None:
        args.alpha = 1.0
    if args.beta is None:
        first = next((n for n, w, _ in parse_distill(args.distill)
                      if DISTILLERS[n].kind == "feature" and w is None), None)
        usual = DISTILLERS[first].default_weight if first is not None else None
        args.beta = usual if usual is not None else 0.0
        if first is not None:
            notes.append(f"-b not given: using {first}'s usual weight {args.beta}")
    terms = objective_terms(args)
    args.objective = objective_formula(args, terms)
    args.objective_terms = [asdict(t) for t in terms]
    return notes


def objective_formula(args, terms: Sequence[TermSpec]) -> str:
    """``1*CE + 1*kd + 50*inter [CAMKD]``: the weighted sum, the strategy in brackets (per term
    when they differ), then the schedule when it changes a weight."""
    strategies = {t.ensemble for t in terms}
    parts = [f"{args.gamma:g}*CE"] + [f"{t.weight:g}*{t.loss}" + ("" if len(strategies) == 1 else f"[{t.ensemble}]")
                                      for t in terms]
    text = " + ".join(parts) + (f" [{terms[0].ensemble}]" if len(strategies) == 1 else "")
    kinds = {t.kind for t in terms if t.weight}
    if args.beta_delay_epochs > 0 and "feature" in kinds:
        text += f"; feature terms from epoch {args.beta_delay_epochs + 1}"
    if args.distill_decay:
        text += f"; logit terms decay to 0 over the second half (CE weight 1 - decayed -a)"
    return text


def term_weights(args, terms: Sequence[TermSpec], epoch: int) -> Tuple[float, List[float]]:
    """The CE weight and each term's weight at an epoch (CA-MKD's schedule).

    ``--beta_delay_epochs``: feature terms are left out for the first epochs (1 in the reference
    scripts). ``--distill_decay``: over the second half of training logit terms decay linearly to
    0 and the CE weight becomes ``1 - `` the decayed ``-a``; feature terms are unchanged."""
    gamma, decay = args.gamma, None
    if args.distill_decay and epoch > args.epochs / 2:
        decay = int(args.epochs - epoch) / int(args.epochs / 2)
        gamma = 1 - decay * args.alpha
    weights = []
    for t in terms:
        w = t.weight
        if t.kind == "logit" and decay is not None:
            w = decay * w
        if t.kind == "feature" and epoch <= args.beta_delay_epochs:
            w = 0.0
        weights.append(w)
    return gamma, weights


class DistillTerm(nn.Module):
    """One term of the objective: one loss for every teacher, combined by one ensemble strategy."""

    def __init__(self, spec: TermSpec, distillers: Sequence[nn.Module], strategy):
        super().__init__()
        self.spec = spec
        self.key, self.kind = spec.loss, spec.kind     # key: the term's name in logs and metrics
        self.distillers = nn.ModuleList(distillers)
        self.strategy = strategy

    def forward(self, s: NetOutput, teachers: List[NetOutput], batch: Batch, routing=None):
        """``(loss, weights [M, B], results)``. ``routing`` (spot-adaptive distillation, see
        ``distiller_zoo.routing``) multiplies its per-sample masks into the strategy's weights."""
        pooled = self.strategy.pooled_teacher(teachers, batch, self.kind)
        if pooled is not None:                  # one fused target: distil it alone, weight 1
            result = self.distillers[0](s, pooled, batch)
            weights = torch.ones_like(result.per_sample.float())[None]
            return combine(weights, result.per_sample.float()[None]), weights, [result]
        results = [d(s, t, batch) for d, t in zip(self.distillers, teachers)]
        losses = torch.stack([r.per_sample.float() for r in results])             # [M, B]
        confidence = None
        if all(r.confidence_logits is not None for r in results):
            confidence = torch.stack([r.confidence_logits.detach().float() for r in results])

        def gradients():
            if all(r.anchor_grad is not None for r in results):
                grads = [r.anchor_grad for r in results]
            else:
                if any(r.anchor is None for r in results):
                    raise ValueError(f"{self.key}: this loss names no student tensor to take gradients at")
                with torch.enable_grad():      # called from inside the strategy's no_grad
                    grads = [torch.autograd.grad(r.per_sample.mean(), r.anchor, retain_graph=True)[0]
                             for r in results]
            return torch.stack([g.detach().float().mean(0).flatten() for g in grads])

        with torch.no_grad():
            weights = self.strategy.weights(EnsembleInputs(
                teacher_logits=torch.stack([t.logits.detach().float() for t in teachers]),
                labels=batch.labels, student_logits=s.logits.detach().float(), losses=losses.detach(),
                confidence_logits=confidence, gradients=gradients, is_logit_term=self.kind == "logit"))
        weights = weights.detach().to(losses.dtype)
        if routing is not None:
            loss, weights = routing.term_loss(self, results, weights, s, teachers, batch)
            return loss, weights, results
        return combine(weights, losses), weights, results

    def epoch_begin(self, epoch: int, epochs: int):
        for d in self.distillers:
            d.epoch_begin(epoch, epochs)
        self.strategy.epoch_begin(epoch, epochs)


def build_terms(args, student: nn.Module, teachers: TeacherEnsemble, num_classes: int, num_data: int,
                image_size: int, train_labels=None) -> nn.ModuleList:
    """Build the run's terms (``objective_terms``) after a dry forward."""
    s_shapes = student.feature_shapes(image_size)
    t_shapes = [t.feature_shapes(image_size) for t in teachers.models]
    M = len(teachers)

    def make(cls):
        shared = {}                            # the term's distillers share it (AEKT's shared layer)
        return [cls(BuildContext(opt=args, student_shapes=s_shapes, teacher_shapes=t_shapes[m],
                                 num_classes=num_classes, num_data=num_data, train_labels=train_labels,
                                 teacher_index=m, num_teachers=M, student=student,
                                 teacher=teachers.models[m], shared=shared))
                for m in range(M)]

    return nn.ModuleList([DistillTerm(spec, make(DISTILLERS[spec.loss]), ENSEMBLES[spec.ensemble](args))
                          for spec in objective_terms(args)])


class _Objective(nn.Module):
    """The student's forward as a module that owns everything trained (student + terms), so
    DistributedDataParallel can wrap it and see every trainable parameter's gradient through one
    forward. The task that computes the objective is an argument of ``forward``, not an attribute
    (no reference cycle, nothing hidden from ``state_dict``)."""

    def __init__(self, trainable: nn.Module):
        super().__init__()
        self.trainable = trainable

    def forward(self, task: "StudentTask", images, labels, index, epoch: int):
        out = task.compute(images, labels, index, epoch)
        return out.loss, out.logits, out.metrics, out.aux_losses


class StudentTask(Task):
    """The loop's task for a student: the distillation objective above."""

    def __init__(self, student: nn.Module, teachers: TeacherEnsemble, terms: nn.ModuleList, args):
        self.model = student
        self.teachers = teachers
        self.terms = terms
        self.args = args
        self.preact = bool(args.preact) or any(d.needs_preact for term in terms for d in term.distillers)
        self.extra_views = extra_views(terms)
        self._modules = nn.ModuleList([student, terms])
        self._weight_sums: Dict[str, torch.Tensor] = {}
        self._steps = 0
        self.student_fn = student             # the student's forward: the model or its compiled form
        self._objective = _Objective(self._modules)
        self._runner = self._objective        # or its DistributedDataParallel wrapper

    def distribute(self, dist_ctx, device, sync_bn=False):
        from .distributed import wrap
        self._runner = wrap(self._objective, dist_ctx, device, sync_bn)

    def compile(self, log):
        from .loop import maybe_compile
        self.student_fn = maybe_compile(self.model, log, "the student")
        self.teachers.compile(log)

    def trainable(self):
        return self._modules

    def train_mode(self):
        self._modules.train()
        self.teachers.eval()

    def epoch_begin(self, epoch, epochs):
        for term in self.terms:
            term.epoch_begin(epoch, epochs)
        self._weight_sums, self._steps = {}, 0

    def forward_all(self, images):
        """Student and teacher outputs on one view."""
        t_outs = self.teachers.outputs(images, preact=self.preact)
        feats, logits = self.student_fn(images, is_feat=True, preact=self.preact)
        return NetOutput(feats=feats, logits=logits, head=self.model.head, model=self.model), t_outs

    def train_step(self, data, epoch, optimizer, scaler=None, autocast=contextlib.nullcontext()) -> StepOutput:
        """One optimisation step of the student on the loader's ``data`` = ``(images, labels[, index])``,
        top to bottom."""
        with autocast:
            # forward (under DDP when distributed): teachers, student, every term with its ensemble
            # weights, and the losses of modules with their own optimiser (the routing policy)
            out = self.step(data, epoch)
        self.update_policy(out)                 # spot-adaptive routing: the policy's backward and step
        optimizer.zero_grad(set_to_none=True)   # (also drops what the policy loss left on the student)
        backward_and_step(out.loss, optimizer, scaler)
        return out

    def step(self, data, epoch):
        """The forward of the loader's ``data`` = ``(images, labels[, index])`` (the distillers get a
        ``Batch``)."""
        labels = data[1]
        loss, logits, metrics, aux = self._runner(self, data[0], labels, data[2] if len(data) > 2 else None, epoch)
        return StepOutput(loss, logits, labels, metrics, aux)

    def compute(self, images, labels, index, epoch) -> StepOutput:
        """The objective of one batch (called through ``_Objective``, possibly under DDP)."""
        views = list(images) if isinstance(images, (tuple, list)) else [images]
        s_out, t_outs = self.forward_all(views[0])
        b = Batch(images=views[0], labels=labels, index=index, epoch=epoch,
                  view_outputs=[self.forward_all(v) for v in views[1:]])
        logits = s_out.logits

        gamma, term_w = term_weights(self.args, [term.spec for term in self.terms], epoch)
        # A loss that asks for extra views trains the student's classifier on them too (MLKD).
        loss_cls = sum(F.cross_entropy(o.logits.float(), labels) for o in [s_out] + [v[0] for v in b.view_outputs])
        total = gamma * loss_cls
        metrics = {"loss_cls": loss_cls.detach()}
        routing = self.route(s_out, t_outs, b)
        for term, w in zip(self.terms, term_w):
            if w == 0:
                continue
            loss, weights, results = term(s_out, t_outs, b, routing)
            total = total + w * loss
            metrics[f"loss_{term.key}"] = loss.detach()
            for m, r in enumerate(results):       # a distiller's own figures (e.g. a learned temperature)
                for name, value in r.metrics.items():
                    metrics[f"{term.key}_t{m}_{name}"] = torch.as_tensor(value, device=logits.device).detach().float()
            share = weights.mean(1)
            self._accumulate(term.key, share / share.sum().clamp_min(1e-12))
        self._steps += 1
        return self.finish_step(StepOutput(total, logits, labels, metrics), routing, s_out, t_outs, b)

    # -- hooks for spot-adaptive routing (helper/spot_adaptive.py); plain distillation has none ----
    def route(self, s_out: NetOutput, t_outs: List[NetOutput], batch: Batch):
        """Per-sample routing decisions for this step, or None (every term as usual)."""
        return None

    def finish_step(self, out: StepOutput, routing, s_out: NetOutput, t_outs: List[NetOutput],
                    batch: Batch) -> StepOutput:
        """The end of the forward, after the student's loss is built (the routing policy's loss)."""
        return out

    def update_policy(self, out: StepOutput):
        """After the forward, before the student's backward: train modules with their own optimiser
        on ``out.aux_losses`` (the routing policy). Plain distillation has none."""

    def _accumulate(self, key, shares):
        self._weight_sums[key] = self._weight_sums.get(key, 0) + shares.detach()

    def epoch_metrics(self):
        """Each teacher's share of each term's ensemble weight, averaged over the epoch's steps."""
        out = {}
        for key, total in self._weight_sums.items():
            for m, value in enumerate((total / max(self._steps, 1)).tolist()):
                out[f"weight_{key}_t{m}"] = value
        return out

    def extra_state(self):
        return {"distill": self.terms.state_dict(),
                "strategies": {term.key: term.strategy.state_dict() for term in self.terms}}

    def load_extra_state(self, state):
        if "distill" in state:
            self.terms.load_state_dict(state["distill"])
        for term in self.terms:         # checkpoints from before strategies kept state have none
            term.strategy.load_state_dict(state.get("strategies", {}).get(term.key, {}))


def extra_views(terms) -> tuple:
    """The extra augmented views the run's losses ask for, in first-asked order."""
    names = []
    for term in terms:
        for d in term.distillers:
            names += [v for v in d.views if v not in names]
    return tuple(names)


INIT_STAGE_EPOCH_BASE = 1_000_000   # loader epochs of the init stage: distinct from training epochs


def run_init_stage(task: StudentTask, loader, args, log) -> None:
    """Pre-train connectors before distillation (RepDistiller's ``--init_epochs`` stage for FT's
    paraphraser and AB's/FSP's connectors): every teacher's distiller that has an init stage is
    trained on its ``init_stage_loss``, all teachers at once, with SGD at the distiller's init
    learning rate. The student runs in eval mode except for modules a distiller trains."""
    pairs = [(m, d) for term in task.terms for m, d in enumerate(term.distillers)
             if d.init_stage_modules(task.model) is not None]
    if not pairs or args.init_epochs <= 0:
        return
    modules = []
    for _, d in pairs:
        modules += [mod for mod in d.init_stage_modules(task.model) if all(mod is not x for x in modules)]
    params, seen = [], set()
    for mod in modules:
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    lr = min(d.init_stage_lr(args, task.model) for _, d in pairs)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    log(f"==> init stage: {args.init_epochs} epochs training {type(pairs[0][1]).__name__} connectors "
        f"for {len(pairs)} teacher(s), lr {lr}")
    for epoch in range(1, args.init_epochs + 1):
        task.model.eval()
        for mod in modules:
            mod.train()
        loader.set_epoch(INIT_STAGE_EPOCH_BASE + epoch)
        sums = torch.zeros(len(pairs), dtype=torch.float64, device=args.device)
        n = 0
        for batch in loader:
            images = batch[0][0] if isinstance(batch[0], (tuple, list)) else batch[0]
            b = Batch(images=images, labels=batch[1], index=batch[2] if len(batch) > 2 else None, epoch=0)
            s_out, t_outs = task.forward_all(images)
            losses = torch.stack([d.init_stage_loss(s_out, t_outs[m], b) for m, d in pairs])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            average_gradients(params)        # the same connectors on every rank under torchrun
            optimizer.step()
            sums += losses.detach().double() * images.shape[0]
            n += images.shape[0]
        values = (sums / max(n, 1)).tolist()
        if not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
            raise ValueError(f"init stage: non-finite loss at epoch {epoch}")
        log(f" * init epoch {epoch}/{args.init_epochs}: loss " + ", ".join(
            f"teacher {m}: {v:.4f}" for (m, _), v in zip(pairs, values)))
