"""The student step: teachers once, student once, every distillation term per teacher, weighted
by its ensemble strategy.

    total = gamma * CE(student, y) + sum_k weight_k * (1/B) sum_i sum_m W_k[m, i] * L_k[m, i]

A term is one ``--distill`` loss applied to every teacher (one distiller, with its own
connectors, per teacher) and combined by one strategy. ``--distill kd`` and the other logit losses
make one term weighted by ``-a``; a feature loss (``hint``, ``inter``, ...) makes a second term
weighted by ``-b`` next to the KD term, as in RepDistiller and CA-MKD. Nothing here branches on a
method's name: the registries resolved them when the run was built.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo.base import Batch, BuildContext, EnsembleInputs, NetOutput, combine
from distiller_zoo.registry import DISTILLERS, ENSEMBLES

from .distributed import average_gradients
from .loop import StepOutput, Task
from .teachers import TeacherEnsemble


class DistillTerm(nn.Module):
    """One loss for every teacher, combined by one ensemble strategy."""

    def __init__(self, key: str, slot: str, distillers: Sequence[nn.Module], strategy):
        super().__init__()
        self.key, self.slot = key, slot          # slot: "alpha" (logit losses) or "beta" (feature)
        self.distillers = nn.ModuleList(distillers)
        self.strategy = strategy

    def forward(self, s: NetOutput, teachers: List[NetOutput], batch: Batch, routing=None):
        """``(loss, weights [M, B], results)``. ``routing`` (spot-adaptive distillation, see
        ``distiller_zoo.routing``) multiplies its per-sample masks into the strategy's weights."""
        pooled = self.strategy.pooled_teacher(teachers, batch, "logit" if self.slot == "alpha" else "feature")
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
                confidence_logits=confidence, gradients=gradients, is_logit_term=self.slot == "alpha"))
        weights = weights.detach().to(losses.dtype)
        if routing is not None:
            loss, weights = routing.term_loss(self, results, weights, s, teachers, batch)
            return loss, weights, results
        return combine(weights, losses), weights, results

    def epoch_begin(self, epoch: int, epochs: int):
        for d in self.distillers:
            d.epoch_begin(epoch, epochs)


def build_terms(args, student: nn.Module, teachers: TeacherEnsemble, num_classes: int, num_data: int,
                image_size: int, train_labels=None) -> nn.ModuleList:
    """Build the run's terms from ``--distill`` and ``--ensemble_method`` (after a dry forward)."""
    distill_cls = DISTILLERS[args.distill]
    kd_cls = DISTILLERS["kd"]
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

    strategy_cls = ENSEMBLES[args.ensemble_method]
    if distill_cls.kind == "logit":
        specs = [(args.distill, "alpha", distill_cls)]
    else:
        specs = [("kd", "alpha", kd_cls), (args.distill, "beta", distill_cls)]
    return nn.ModuleList([DistillTerm(key, slot, make(cls), strategy_cls(args)) for key, slot, cls in specs])


def loss_weights(args, epoch: int) -> Dict[str, float]:
    """gamma (CE), alpha (logit term), beta (feature term) for an epoch.

    CA-MKD's schedule: the beta term is left out for the first ``--beta_delay_epochs`` epochs
    (1 in the reference scripts); ``--distill_decay`` decays alpha linearly to 0 over the second
    half of training while gamma becomes 1 - alpha, beta unchanged."""
    gamma, alpha, beta = args.gamma, args.alpha, args.beta
    if args.distill_decay and epoch > args.epochs / 2:
        alpha = int(args.epochs - epoch) / int(args.epochs / 2) * args.alpha
        gamma = 1 - alpha
    if epoch <= args.beta_delay_epochs:
        beta = 0.0
    return {"gamma": gamma, "alpha": alpha, "beta": beta}


class _Objective(nn.Module):
    """The student step as a module (student + terms), so DistributedDataParallel can wrap it and
    see every trainable parameter's gradient through one forward."""

    def __init__(self, task: "StudentTask"):
        super().__init__()
        self.trainable = task.trainable()
        self.__dict__["task"] = task          # a plain reference, not a submodule

    def forward(self, images, labels, index, epoch: int):
        out = self.task.compute(images, labels, index, epoch)
        return out.loss, out.logits, out.metrics


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
        self._objective = _Objective(self)
        self._runner = self._objective        # or its DistributedDataParallel wrapper

    def distribute(self, ctx, device, sync_bn=False):
        from .distributed import wrap
        self._runner = wrap(self._objective, ctx, device, sync_bn)

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

    def step(self, batch, epoch):
        labels = batch[1]
        loss, logits, metrics = self._runner(batch[0], labels, batch[2] if len(batch) > 2 else None, epoch)
        return StepOutput(loss, logits, labels, metrics)

    def compute(self, images, labels, index, epoch) -> StepOutput:
        """The objective of one batch (called through ``_Objective``, possibly under DDP)."""
        views = list(images) if isinstance(images, (tuple, list)) else [images]
        s_out, t_outs = self.forward_all(views[0])
        b = Batch(images=views[0], labels=labels, index=index, epoch=epoch,
                  view_outputs=[self.forward_all(v) for v in views[1:]])
        logits = s_out.logits

        w = loss_weights(self.args, epoch)
        # A loss that asks for extra views trains the student's classifier on them too (MLKD).
        loss_cls = sum(F.cross_entropy(o.logits.float(), labels) for o in [s_out] + [v[0] for v in b.view_outputs])
        total = w["gamma"] * loss_cls
        metrics = {"loss_cls": loss_cls.detach()}
        routing = self.route(s_out, t_outs, b)
        for term in self.terms:
            if w[term.slot] == 0:
                continue
            loss, weights, results = term(s_out, t_outs, b, routing)
            total = total + w[term.slot] * loss
            metrics[f"loss_{term.key}"] = loss.detach()
            for m, r in enumerate(results):       # a distiller's own figures (e.g. a learned temperature)
                for name, value in r.metrics.items():
                    metrics[f"{term.key}_t{m}_{name}"] = torch.as_tensor(value).detach().float()
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
        """Called after the student's loss is built, before the loop's backward."""
        return out

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
        return {"distill": self.terms.state_dict()}

    def load_extra_state(self, state):
        if "distill" in state:
            self.terms.load_state_dict(state["distill"])


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
