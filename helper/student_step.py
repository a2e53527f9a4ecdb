"""The student's step: teachers once, student once, every distillation term per teacher, weighted by
its ensemble strategy, then backward and the optimiser.

    total = gamma * CE(student, y) + sum_k weight_k * (1/B) sum_i sum_m W_k[m, i] * L_k[m, i]

``StudentTask.train_step`` is the step and ``StudentObjective.forward`` its forward, read top to
bottom; the terms (``DistillTerm``) put one registered loss per teacher together with one
ensemble strategy (``distiller_zoo``); the weights' schedule and the term grammar are
``helper.objective``. Spot-adaptive routing (``helper.spot_adaptive``) is an optional object
passed in: it decides per-sample masks before the terms and trains its policy after the forward.
Nothing here branches on a method's name: the registries resolved them when the run was built.
"""
from __future__ import annotations

import contextlib
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo.base import Batch, BuildContext, EnsembleInputs, NetOutput, combine
from distiller_zoo.defaults import option_names
from distiller_zoo.registry import DISTILLERS, ENSEMBLES

from .distributed import wrap
from .execution import compile_in_place
from .objective import ObjectiveSchedule, TermSpec, objective_terms
from .task import StepOutput, Task, backward_and_step
from .teachers import TeacherEnsemble


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


def loss_options(config):
    """What a run's distillers and strategies are given as ``opt``: the loss and strategy flags
    (``distiller_zoo.defaults.option_names``), as ``default_options`` gives them outside a run."""
    return config.subset(option_names())


def build_terms(config, student: nn.Module, teachers: TeacherEnsemble, num_classes: int, num_data: int,
                image_size: int, train_labels=None) -> nn.ModuleList:
    """The run's terms (``objective_terms``), each distiller built from the networks' feature
    shapes (a dry forward) and the loss options."""
    s_shapes = student.feature_shapes(image_size)
    t_shapes = [t.feature_shapes(image_size) for t in teachers.models]
    opt, M = loss_options(config), len(teachers)

    def make(cls):
        shared = {}                            # the term's distillers share it (AEKT's shared layer)
        return [cls(BuildContext(opt=opt, student_shapes=s_shapes, teacher_shapes=t_shapes[m],
                                 num_classes=num_classes, num_data=num_data, train_labels=train_labels,
                                 teacher_index=m, num_teachers=M, student=student,
                                 teacher=teachers.models[m], shared=shared))
                for m in range(M)]

    return nn.ModuleList([DistillTerm(spec, make(DISTILLERS[spec.loss]), ENSEMBLES[spec.ensemble](opt))
                          for spec in objective_terms(config)])


def term_figures(key: str, results, device) -> dict:
    """A term's distillers' own figures per teacher (e.g. a learned temperature), for the metrics."""
    return {f"{key}_t{m}_{name}": torch.as_tensor(value, device=device).detach().float()
            for m, r in enumerate(results) for name, value in r.metrics.items()}


class StudentObjective(nn.Module):
    """Everything trained (the student and the terms' connectors) and the objective's forward, as
    one module, so that DistributedDataParallel can wrap it and see every trainable parameter's
    gradient through one forward. The teachers, the schedule and the routing are not modules of it
    (nothing of theirs is trained by the main optimiser or saved as the student)."""

    def __init__(self, student: nn.Module, terms: nn.ModuleList, teachers: TeacherEnsemble,
                 schedule: ObjectiveSchedule, routing=None, preact: bool = False):
        super().__init__()
        self.student, self.terms = student, terms
        self.teachers, self.schedule, self.routing = teachers, schedule, routing
        self.specs = [term.spec for term in terms]
        self.preact = bool(preact) or any(d.needs_preact for term in terms for d in term.distillers)

    def outputs(self, images):
        """Student and teacher outputs on one view."""
        t_outs = self.teachers.outputs(images, preact=self.preact)
        feats, logits = self.student(images, is_feat=True, preact=self.preact)
        return NetOutput(feats=feats, logits=logits, head=self.student.head, model=self.student), t_outs

    def forward(self, images, labels, index=None, epoch: int = 1) -> StepOutput:
        """The loss of one batch (``images``: a tensor, or the loader's views, the training view first)."""
        views = list(images) if isinstance(images, (tuple, list)) else [images]
        s_out, t_outs = self.outputs(views[0])                                  # teachers, student
        batch = Batch(images=views[0], labels=labels, index=index, epoch=epoch,
                      view_outputs=[self.outputs(v) for v in views[1:]])        # a loss's extra views
        gamma, weights = self.schedule.weights(self.specs, epoch)               # CA-MKD's schedule
        # a loss that asks for extra views trains the student's classifier on them too (MLKD)
        ce = sum(F.cross_entropy(o.logits.float(), labels) for o in [s_out] + [v[0] for v in batch.view_outputs])
        total, metrics, shares = gamma * ce, {"loss_cls": ce.detach()}, {}
        routing = self.routing.decide(s_out, t_outs, batch) if self.routing is not None else None
        for term, w in zip(self.terms, weights):
            if w == 0:
                continue
            loss, ensemble_weights, results = term(s_out, t_outs, batch, routing)   # [M, B] weights
            total = total + w * loss
            metrics[f"loss_{term.key}"] = loss.detach()
            metrics.update(term_figures(term.key, results, s_out.logits.device))
            share = ensemble_weights.mean(1)
            shares[term.key] = (share / share.sum().clamp_min(1e-12)).detach()
        out = StepOutput(total, s_out.logits, labels, metrics, shares=shares)
        if routing is not None:                  # the graft pass and the policy's loss
            self.routing.finish(out, routing, s_out, batch, self.student, self.teachers)
        return out


class StudentTask(Task):
    """The loop's task for a student: the objective above, its optimiser step, and the state a
    checkpoint keeps (the terms' connectors and memory banks, the strategies', the routing's)."""

    def __init__(self, objective: StudentObjective):
        self.objective = objective
        self.model = objective.student
        self.teachers, self.terms, self.routing = objective.teachers, objective.terms, objective.routing
        self.runner = objective               # or its DistributedDataParallel wrapper

    def train_step(self, batch, epoch, optimizer, scaler=None, autocast=contextlib.nullcontext()) -> StepOutput:
        """One optimisation step on the loader's ``batch`` = ``(images, labels[, index])``."""
        images, labels, index = batch[0], batch[1], batch[2] if len(batch) > 2 else None
        with autocast:      # teachers, student, every term with its ensemble weights (under DDP if distributed)
            out = self.runner(images, labels, index, epoch)
        if self.routing is not None:
            self.routing.update_policy(out)     # the policy's own backward and step, outside DDP's forward
        optimizer.zero_grad(set_to_none=True)   # (also drops what the policy loss left on the student)
        backward_and_step(out.loss, optimizer, scaler)
        return out

    def distribute(self, dist_ctx, device, sync_bn=False):
        self.runner = wrap(self.objective, dist_ctx, device, sync_bn)

    def compile(self, log, mode=None):
        """``--compile``: the student (compiled in place, so it stays the module that is saved) and
        the teachers; ``--cuda_graphs compile``: the student with ``mode`` ("reduce-overhead")."""
        compile_in_place(self.model, log, "the student", **({"mode": mode} if mode else {}))
        if mode is None:
            self.teachers.compile(log)

    def trainable(self):
        return self.objective

    def train_mode(self):
        self.objective.train()
        self.teachers.eval()
        if self.routing is not None:
            self.routing.train()

    def epoch_begin(self, epoch, epochs):
        for term in self.terms:
            term.epoch_begin(epoch, epochs)
        if self.routing is not None:
            self.routing.epoch_begin(epoch)

    def step_objects(self):
        return [self] + [o for term in self.terms for o in list(term.distillers) + [term.strategy]] \
            + ([self.routing] if self.routing is not None else [])

    def extra_state(self):
        state = {"distill": self.terms.state_dict(),
                 "strategies": {term.key: term.strategy.state_dict() for term in self.terms}}
        if self.routing is not None:
            state.update(self.routing.state())
        return state

    def load_extra_state(self, state):
        if "distill" in state:
            self.terms.load_state_dict(state["distill"])
        for term in self.terms:         # checkpoints from before strategies kept state have none
            term.strategy.load_state_dict(state.get("strategies", {}).get(term.key, {}))
        if self.routing is not None:
            self.routing.load_state(state)
