"""Spot-adaptive distillation in the student step (``train_student.py --spot_adaptive``).

Song, Chen, Ye, Song, "Spot-adaptive Knowledge Distillation", IEEE TIP 2022 (SAKD): for every
training sample, at every iteration, a small policy decides at which spots (stage outputs and the
logits) the student is distilled; the policy and the adapters of a "graft" pass, in which the
student's and the teacher's stages are mixed by those decisions, are trained by their own
optimiser on the classification loss of the grafted output. Here it works for one teacher (the
paper) or several (each decision picks a teacher or none); ``distiller_zoo.routing`` has the
pieces and ``docs/spot_adaptive.md`` the formulation.

One step (``helper.student_step`` with a ``SpotRouting``; the order is the reference's):
  1. teachers and student forward, the policy's decisions (``SpotRouting.decide``);
  2. every term's loss with the routing masks multiplied into its ensemble weights, then the
     graft pass and the policy loss ``L_p`` (``finish``): the end of the forward;
  3. the policy optimiser: ``zero_grad``, ``backward(L_p)``, ``step`` (``update_policy``, outside
     DistributedDataParallel's forward);
  4. the main optimiser: ``zero_grad`` (dropping the student gradients that ``L_p`` left),
     ``backward`` of the student loss, ``step``. All four are ``StudentTask.train_step``.
The student loss never reaches the policy or the adapters (the masks are detached) and ``L_p``
only reaches the student through gradients the loop discards; the teachers never get any.
The policy optimiser is SGD with the main momentum, ``--policy_weight_decay`` (1e-3) and the main
schedule's learning rate times ``--policy_lr_ratio`` (0.5), set every epoch.

Deliberate differences from the reference (besides those listed in ``distiller_zoo.routing.router``):
``--policy_homo auto`` decides the start-up bias from the architectures (same family in
``models.registry`` and the same feature shapes, which reproduces the ``homo`` flag of all ten
CIFAR-100 configurations) instead of a per-config flag; the policy, the adapters and the policy
optimiser are saved in the checkpoint and restored strictly on ``--resume``; under AMP the policy
loss is back-propagated without a gradient scaler.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from distiller_zoo.argtypes import non_negative_float, positive_float
from distiller_zoo.routing import MODES, SpotRouter, distiller_rows, plan_spots
from distiller_zoo.routing.router import FAVOUR_BIAS

from .distributed import average_gradients
from .errors import ResumeError
from .schedule import LRSchedule, lr_at


def add_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("spot-adaptive distillation (Song et al., TIP 2022)")
    g.add_argument("--spot_adaptive", action="store_true",
                   help="route every sample per spot (stage outputs read by the loss, and the logits): "
                        "distil from which teacher, or not at all, decided by a policy trained through a "
                        "graft pass of student and teacher stages")
    g.add_argument("--spot_mode", type=str, default="adaptive", choices=MODES,
                   help="adaptive (the policy), all (always distil), random (uniform decisions), "
                        "anti (the reverse of the policy)")
    g.add_argument("--policy_tau", type=positive_float, default=5.0, help="Gumbel-softmax temperature of the policy (5)")
    g.add_argument("--policy_lr_ratio", type=positive_float, default=0.5,
                   help="policy and adapter learning rate = the student's scheduled rate times this (0.5)")
    g.add_argument("--policy_weight_decay", type=non_negative_float, default=1e-3, help="weight decay of the policy optimiser")
    g.add_argument("--classify_weight", type=positive_float, default=1.0,
                   help="policy loss: the graft CE is multiplied by this when above the student's CE and "
                        "divided by it when below (the reference's configs: 2 for AT, RKD, VID; 1 otherwise)")
    g.add_argument("--policy_homo", type=str, default="auto", choices=("auto", "yes", "no"),
                   help="start the policy distilling everywhere (+10 bias) from: teachers of the student's "
                        "family with its feature shapes (auto), every teacher (yes), none (no)")


def same_family(student, teacher, student_shapes=None, teacher_shapes=None) -> bool:
    """Same registry family and the same feature shapes (the reference's ``homo`` pairs: its ten
    CIFAR-100 configurations set ``homo`` exactly for these, e.g. not for resnet32x4 -> resnet32)."""
    from models.registry import imagenet_model_cfg, model_cfg
    cfg_s = model_cfg.get(student.arch) or imagenet_model_cfg.get(student.arch)
    cfg_t = model_cfg.get(teacher.arch) or imagenet_model_cfg.get(teacher.arch)
    if cfg_s is None or cfg_t is None or cfg_s.family != cfg_t.family:
        return False
    student_shapes = student.feature_shapes() if student_shapes is None else student_shapes
    teacher_shapes = teacher.feature_shapes() if teacher_shapes is None else teacher_shapes
    return [tuple(s) for s in student_shapes] == [tuple(t) for t in teacher_shapes]


def build_router(options, student, teachers, terms, num_classes: int, image_size: int) -> SpotRouter:
    """The run's spots (from where its losses read), policy and adapters."""
    s_shapes = student.feature_shapes(image_size)
    t_shapes = [t.feature_shapes(image_size) for t in teachers.models]
    term_rows, relational = {}, {}
    for term in terms:
        term_rows[term.key] = [
            distiller_rows(d, s_shapes, t_shapes[m], name=f"--distill {term.key}", num_classes=num_classes,
                           image_size=image_size, student=student, teacher=teachers.models[m])
            for m, d in enumerate(term.distillers)]
        relational[term.key] = any(getattr(d, "relational", False) for d in term.distillers)
    plan = plan_spots(term_rows, relational, s_shapes, t_shapes)
    homo = options.homo
    favour = [m for m, t in enumerate(teachers.models)
              if homo == "yes" or (homo == "auto" and same_family(student, t, s_shapes, t_shapes[m]))]
    param = next(student.parameters())
    return SpotRouter(plan, s_shapes, t_shapes, mode=options.mode, tau=options.tau,
                      classify_weight=options.classify_weight, favour=favour).to(param.device)


class SpotRouting:
    """Spot-adaptive routing for the student's step (``helper.student_step``): the policy network
    and its adapters (``SpotRouter``), its own optimiser, and the three points where it joins the
    step (see the module docstring): ``decide`` before the terms, ``finish`` at the end of the
    forward, ``update_policy`` before the student's backward."""

    # --cuda_graphs capture (helper/cuda_graphs.py) steps eagerly for routing, and says so: a
    # relational loss is evaluated on each teacher's routed samples (boolean-mask subsets: shapes
    # that depend on the data, and a host read of ``keep.any()``), and the policy has its own
    # optimiser step between the forward and the student's backward (not verified under capture).
    capturable = False
    not_capturable_because = ("spot-adaptive routing evaluates relational losses on data-dependent "
                              "subsets and steps the policy's own optimiser (not captured)")

    def __init__(self, router: SpotRouter, options: RoutingOptions):
        self.router, self.options = router, options
        self.policy_optimizer = torch.optim.SGD(router.parameters(), lr=options.schedule.learning_rate
                                                * options.policy_lr_ratio, momentum=options.momentum,
                                                weight_decay=options.policy_weight_decay)

    def describe(self) -> str:
        plan, r, o = self.router.plan, self.router, self.options
        rows = "; ".join(f"{key}: " + ", ".join(plan.spots[k].label for k in ks) for key, ks in plan.term_rows.items())
        return (f"==> spot-adaptive ({r.mode}, {r.num_teachers} teacher(s), {r.num_teachers + 1} options per "
                f"decision): spots {', '.join(r.labels)} ({rows}); policy tau {r.tau}, classify weight "
                f"{r.classify_weight}, start-up bias +{FAVOUR_BIAS:g} towards teachers {r.favoured or 'none'}; "
                f"policy lr x{o.policy_lr_ratio}, weight decay {o.policy_weight_decay}")

    def train(self):
        self.router.train()

    def epoch_begin(self, epoch: int):
        lr = lr_at(self.options.schedule, epoch) * self.options.policy_lr_ratio
        for group in self.policy_optimizer.param_groups:
            group["lr"] = lr

    def decide(self, s_out, t_outs, batch):
        """Per-sample routing decisions for this step (the masks the terms multiply in)."""
        return self.router.step(self.router.decide(s_out, t_outs))

    def finish(self, out, routing, s_out, batch, student, teachers):
        """The end of the forward: the spots' usage figures, and (when the policy learns) the graft
        pass and the policy loss, which ``update_policy`` trains on."""
        decision = routing.decision
        out.metrics.update({k: v.detach() for k, v in self.router.usage(decision).items()})
        if self.router.learns:
            graft_logits = self.router.graft(batch.images, decision.y, student, teachers.models)
            policy_loss, figures = self.router.policy_loss(graft_logits, batch.labels, s_out.logits, decision.y)
            out.aux_losses["policy"] = policy_loss
            out.metrics.update(figures)

    def update_policy(self, out):
        """The policy optimiser's step on the policy loss, outside DDP's forward."""
        if "policy" not in out.aux_losses:
            return
        self.policy_optimizer.zero_grad(set_to_none=True)
        # gradients for the policy and adapters only: the student's come from its own loss
        # (this also keeps DistributedDataParallel's gradient hooks out of the policy step)
        params = [p for p in self.router.parameters() if p.requires_grad]
        out.aux_losses["policy"].backward(inputs=params)
        average_gradients(params)         # across ranks in a distributed run; a no-op otherwise
        self.policy_optimizer.step()

    def state(self):
        return {"spot_router": self.router.state_dict(), "spot_optimizer": self.policy_optimizer.state_dict()}

    def load_state(self, state):
        if "spot_router" not in state or "spot_optimizer" not in state:
            raise ResumeError("--resume: the checkpoint has no spot-adaptive policy (it was not saved by a "
                              "--spot_adaptive run)")
        try:
            self.router.load_state_dict(state["spot_router"], strict=True)
        except RuntimeError as exc:
            raise ResumeError(f"--resume: the checkpoint's spot-adaptive policy does not fit this run: "
                              f"{str(exc).splitlines()[0]}") from None
        self.policy_optimizer.load_state_dict(state["spot_optimizer"])


@dataclass(frozen=True)
class RoutingOptions:
    """What the routing reads of the run configuration."""
    mode: str
    tau: float
    classify_weight: float
    homo: str
    policy_lr_ratio: float
    policy_weight_decay: float
    momentum: float
    schedule: LRSchedule

    @classmethod
    def of(cls, config) -> "RoutingOptions":
        return cls(config.spot_mode, config.policy_tau, config.classify_weight, config.policy_homo,
                   config.policy_lr_ratio, config.policy_weight_decay, config.momentum, LRSchedule.of(config))


def build_routing(config, student, teachers, terms, num_classes: int, image_size: int) -> SpotRouting:
    """The run's routing: its spots (from where its losses read), policy, adapters and optimiser."""
    options = RoutingOptions.of(config)
    return SpotRouting(build_router(options, student, teachers, terms, num_classes, image_size), options)
