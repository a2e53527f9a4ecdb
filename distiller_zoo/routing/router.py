"""Spot-adaptive routing: per sample and per spot, distil from which teacher, or not at all.

Song, Chen, Ye, Song, "Spot-adaptive Knowledge Distillation", IEEE TIP 2022 (SAKD), generalised to
M teachers (``docs/spot_adaptive.md`` has the formulation). With M teachers every decision is a
choice among ``M + 1`` options, in this order: teacher 1, ..., teacher M, the student ("do not
distil"); with ``M = 1`` that is the reference's two-way decision with index 0 = "distil".

- ``SpotPolicy``: one linear layer on the detached pooled features of the teachers and the student
  (teachers first, the reference's order) -> logits ``[B, S, M + 1]``; decisions are hard
  Gumbel-softmax samples with straight-through gradients (``--policy_tau``, 5, not annealed).
- ``SpotRouter.graft``: the multi-path pass. Every network runs its stages between consecutive
  spots on its own stream; at a spot each stream continues from the chosen network's feature,
  mapped into its own space by an adapter (student -> teacher m: ``hints[k][m]``; teacher m ->
  student: ``anti_hints[k][m]``; teacher a -> teacher b: ``hints[k][b](anti_hints[k][a](.))``); the
  output mixes the networks' logits by the output decision. With M = 1 this is exactly the
  reference's ``x_t = (1-a) hint(h_s) + a h_t``, ``x_s = (1-a) h_s + a anti_hint(h_t)``.
- ``SpotRouter.policy_loss``: CE of the grafted logits, multiplied by ``--classify_weight`` when it
  is above the student's own CE and divided by it when below, plus the usage hinge
  ``max(0, B/2 - #samples distilled at the output spot)`` (counted in samples, as the reference).
- ``Routing.term_loss``: a term's loss with its masks. For sample i and row r (spot k) the strategy's
  weight ``w[m, i]`` is multiplied by ``mask_k[m, i] = sel_k[m, i] * M / max(1, sum_m' sel_k[m', i])``
  (``sel`` = 1 where teacher m is selected): the selected teachers share the mass of all M, so
  M = 1 is the paper (``w * a``), ``--spot_mode all`` is plain distillation, and uniformly random
  routing among teachers keeps every sample's expected weight. Losses are then
  ``(1/B) sum_r sum_i sum_m w mask L`` = the masked mean scaled by the selected fraction; an empty
  selection gives 0. Relational losses (``relational = True``) are evaluated per teacher on its
  routed sub-batch, as the reference does (reasons in ``docs/spot_adaptive.md``).

Modes (``--spot_mode``): ``adaptive`` (the policy), ``anti`` (the policy is trained the same way but
every teacher it picked is left out and every other teacher used: ``1 - a`` with one teacher),
``random`` (uniform among the M + 1 options, no policy, no graft pass), ``all`` (always distil
from every teacher, no policy, no graft pass: the unrouted run).

Fixed bugs of the reference: the start-up bias is added under ``no_grad`` (the reference edits a
trainable bias in place, an error in current PyTorch); the Gumbel noise is drawn on the device of
the logits (the reference hard-wires CUDA); a spot where no sample is selected contributes 0 (the
reference's FT then keeps the full-batch loss, and its AT/NST/KDSVD evaluate the criterion on
all-zero stand-in tensors); the policy and adapters are restored strictly on resume
(``helper/spot_adaptive.py``; the reference loads weights with ``strict=False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..base import Batch, NetOutput, combine
from .adapters import adapter
from .gumbel import gumbel_softmax
from .spots import SpotPlan

MODES = ("adaptive", "all", "random", "anti")
FAVOUR_BIAS = 10.0          # the reference's start-up bias towards "distil" (same-family pairs)


class SpotPolicy(nn.Module):
    """Linear(sum of pooled widths -> S * (M + 1)) on ``cat(teacher pooled..., student pooled)``."""

    def __init__(self, teacher_dims: Sequence[int], student_dim: int, num_spots: int):
        super().__init__()
        self.num_spots, self.num_options = int(num_spots), len(teacher_dims) + 1
        self.fc = nn.Linear(int(sum(teacher_dims)) + int(student_dim), self.num_spots * self.num_options)

    def forward(self, student_pooled: Tensor, teacher_pooled: Sequence[Tensor]) -> Tensor:
        x = torch.cat([t.detach().flatten(1).float() for t in teacher_pooled]
                      + [student_pooled.detach().flatten(1).float()], 1)
        return self.fc(x).view(x.shape[0], self.num_spots, self.num_options)

    @torch.no_grad()
    def favour(self, teachers: Sequence[int], value: float = FAVOUR_BIAS):
        """Start towards distilling from these teachers at every spot (the reference's ``homo``)."""
        bias = self.fc.bias.view(self.num_spots, self.num_options)
        for m in teachers:
            bias[:, m] += value


@dataclass
class Decision:
    """One step's routing. ``y``: ``[B, S, M+1]`` straight-through one-hot (None without a policy);
    ``choice``: ``[B, S]`` option index (M = student); ``selected``: ``[S, M, B]`` 0/1;
    ``masks``: ``[S, M, B]`` the factors applied to the strategy's weights."""
    y: Optional[Tensor]
    choice: Optional[Tensor]
    selected: Tensor
    masks: Tensor


def _mix(weight: Tensor, x: Tensor) -> Tensor:
    return weight.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) * x


def subset_output(out: NetOutput, keep: Tensor) -> NetOutput:
    return NetOutput(feats=[f[keep] for f in out.feats], logits=out.logits[keep], head=out.head, model=out.model)


def subset_batch(batch: Batch, keep: Tensor) -> Batch:
    return Batch(images=batch.images[keep], labels=batch.labels[keep],
                 index=None if batch.index is None else batch.index[keep], epoch=batch.epoch,
                 view_outputs=[(subset_output(s, keep), [subset_output(t, keep) for t in ts])
                               for s, ts in batch.view_outputs])


class SpotRouter(nn.Module):
    """The policy, the adapters and the graft pass for one run (see the module docstring)."""

    def __init__(self, plan: SpotPlan, student_shapes, teacher_shapes: Sequence, mode: str = "adaptive",
                 tau: float = 5.0, classify_weight: float = 1.0, favour: Sequence[int] = ()):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown spot mode {mode!r}; expected one of {', '.join(MODES)}")
        if tau <= 0 or classify_weight <= 0:
            raise ValueError("the policy temperature and the classify weight must be positive")
        self.plan, self.mode, self.tau, self.classify_weight = plan, mode, float(tau), float(classify_weight)
        self.num_teachers = M = len(teacher_shapes)
        self.labels = [s.label for s in plan.spots]
        self.policy = SpotPolicy([t[-1][0] for t in teacher_shapes], student_shapes[-1][0], len(plan.spots))
        self.favoured = sorted(int(m) for m in favour)
        self.policy.favour(self.favoured)
        self.hints = nn.ModuleList()
        self.anti_hints = nn.ModuleList()
        for spot in plan.feature_spots:
            s_shape = student_shapes[spot.student]
            self.hints.append(nn.ModuleList([adapter(s_shape, teacher_shapes[m][spot.teachers[m]]) for m in range(M)]))
            self.anti_hints.append(nn.ModuleList([adapter(teacher_shapes[m][spot.teachers[m]], s_shape)
                                                  for m in range(M)]))

    @property
    def learns(self) -> bool:
        """Whether the policy decides (and is trained by the graft pass)."""
        return self.mode in ("adaptive", "anti")

    # -- decisions ----------------------------------------------------------------------------
    def decide(self, s_out: NetOutput, t_outs: Sequence[NetOutput], noise: Optional[Tensor] = None) -> Decision:
        B, S, M = s_out.logits.shape[0], len(self.plan.spots), self.num_teachers
        device = s_out.logits.device
        y = choice = None
        if self.learns:
            logits = self.policy(s_out.feats[-1], [t.feats[-1] for t in t_outs])
            y = gumbel_softmax(logits, self.tau, hard=True, noise=noise)
            choice = y.detach().argmax(-1)
        elif self.mode == "random":
            choice = torch.randint(0, M + 1, (B, S), device=device)
        return self.decision(choice, y, batch_size=B, device=device)

    def decision(self, choice: Optional[Tensor], y: Optional[Tensor] = None, batch_size: int = 0,
                 device=None) -> Decision:
        """The masks of the options ``choice`` ``[B, S]`` under this router's mode (``all``:
        ``choice`` is None and every teacher is selected)."""
        S, M = len(self.plan.spots), self.num_teachers
        if choice is None:
            selected = torch.ones(S, M, batch_size, device=device)
        else:
            onehot = F.one_hot(choice, M + 1)[..., :M].permute(1, 2, 0).float()   # [S, M, B]
            selected = 1.0 - onehot if self.mode == "anti" else onehot
        masks = selected * M / selected.sum(1, keepdim=True).clamp_min(1.0)
        return Decision(y, choice, selected, masks)

    def usage(self, decision: Decision) -> Dict[str, Tensor]:
        """Fraction of the batch distilled at each spot (from any teacher; and per teacher when
        there are several)."""
        sel = decision.selected
        out = {f"spot_{label}": (sel[k].sum(0) > 0).float().mean() for k, label in enumerate(self.labels)}
        if self.num_teachers > 1:
            for k, label in enumerate(self.labels):
                for m in range(self.num_teachers):
                    out[f"spot_{label}_t{m}"] = sel[k, m].mean()
        return out

    # -- the graft (multi-path) pass --------------------------------------------------------------
    @staticmethod
    def _segment(net: nn.Module, x: Tensor, begin: int, index: int) -> Tensor:
        """Stages ``begin .. index`` of ``net`` (its feature ``index``); the pooled feature when
        ``index`` is the pooled vector's."""
        if index >= net.num_stages:
            return net.pool(net.run_stages(x, begin, net.num_stages))
        return net.run_stages(x, begin, index + 1)

    @staticmethod
    def _finish(net: nn.Module, x: Tensor, last: int) -> Tensor:
        if last >= net.num_stages:
            return net.classify(x)
        return net.head(net.run_stages(x, last + 1, net.num_stages))

    def graft(self, images: Tensor, y: Tensor, student: nn.Module, teachers: Sequence[nn.Module]) -> Tensor:
        """Grafted logits ``[B, C]`` for decisions ``y`` ``[B, S, M+1]``. The student runs in eval
        mode (BN running statistics, as the reference), restored afterwards; the teachers are
        frozen but pass gradients on to the adapters."""
        M = self.num_teachers
        nets = list(teachers) + [student]
        was_training = student.training
        student.eval()
        try:
            streams = [images] * (M + 1)
            last = [-1] * (M + 1)
            for k, spot in enumerate(self.plan.feature_spots):
                index = list(spot.teachers) + [spot.student]
                h = [self._segment(nets[n], streams[n], last[n] + 1, index[n]) for n in range(M + 1)]
                last = index
                yk = y[:, k]
                to_student = [self.anti_hints[k][m](h[m]) for m in range(M)] + [h[M]]
                new = []
                for n in range(M + 1):
                    parts = []
                    for c in range(M + 1):
                        if c == n:
                            v = h[n]
                        elif n == M:
                            v = to_student[c]
                        else:
                            v = self.hints[k][n](to_student[c])
                        parts.append(_mix(yk[:, c], v))
                    new.append(sum(parts))
                streams = new
            logits = [self._finish(nets[n], streams[n], last[n]).float() for n in range(M + 1)]
        finally:
            student.train(was_training)
        y_out = y[:, -1]
        return sum(_mix(y_out[:, c], logits[c]) for c in range(M + 1))

    def policy_loss(self, graft_logits: Tensor, labels: Tensor, student_logits: Tensor, y: Tensor):
        """``(L_p, metrics)``: the graft CE scaled by ``classify_weight`` (x above the student's CE,
        / below), plus ``max(0, B/2 - sum_b a_out,b)``."""
        ce_graft = F.cross_entropy(graft_logits.float(), labels)
        ce_student = F.cross_entropy(student_logits.detach().float(), labels)
        g = self.classify_weight
        scale = torch.where(ce_graft > ce_student, torch.full_like(ce_graft, g),
                            torch.where(ce_graft < ce_student, torch.full_like(ce_graft, 1.0 / g),
                                        torch.ones_like(ce_graft))).detach()
        distilled_out = 1.0 - y[:, -1, -1]                        # any teacher chosen at the output
        hinge = (labels.shape[0] / 2.0 - distilled_out.sum()).clamp_min(0.0)
        loss = ce_graft * scale + hinge
        return loss, {"policy_loss": loss.detach(), "graft_ce": ce_graft.detach(), "usage_hinge": hinge.detach()}

    def step(self, decision: Decision) -> "Routing":
        return Routing(self, decision)


class Routing:
    """One step's routing as the student step sees it (``DistillTerm.forward(..., routing)``)."""

    def __init__(self, router: SpotRouter, decision: Decision):
        self.router, self.decision = router, decision

    def term_loss(self, term, results, weights: Tensor, s: NetOutput, teachers: List[NetOutput], batch: Batch):
        """``(loss, effective weights [M, B])`` of a term under this step's masks."""
        plan = self.router.plan
        rows = plan.term_rows[term.key]
        relational = plan.relational.get(term.key, False)
        masks = self.decision.masks.to(weights.dtype)
        M, B = weights.shape
        total = weights.new_zeros(())
        effective = torch.zeros_like(weights)
        for r, k in enumerate(rows):
            if relational:
                L = self._relational_row(term, r, len(rows), masks[k], s, teachers, batch, weights)
            else:
                L = torch.stack([_row(res, r, len(rows)) for res in results]).to(weights.dtype)
            w = weights * masks[k]
            total = total + combine(w, torch.where(w > 0, L, torch.zeros_like(L)))
            effective = effective + w
        return total, effective / len(rows)

    @staticmethod
    def _relational_row(term, r, num_rows, mask, s, teachers, batch, weights):
        """Row r of each teacher's loss evaluated on that teacher's routed samples, 0 elsewhere."""
        M, B = weights.shape
        rows = []
        for m, (d, t) in enumerate(zip(term.distillers, teachers)):
            keep = mask[m] > 0
            full = weights.new_zeros(B)
            if bool(keep.any()):
                res = d(subset_output(s, keep), subset_output(t, keep), subset_batch(batch, keep))
                full = full.index_put((keep.nonzero().squeeze(1),), _row(res, r, num_rows).to(weights.dtype))
            rows.append(full)
        return torch.stack(rows)


def _row(result, r: int, num_rows: int) -> Tensor:
    if num_rows == 1 and result.per_layer is None:
        return result.per_sample.float()
    if result.per_layer is None or result.per_layer.shape[0] != num_rows:
        raise ValueError(f"a routed loss with {num_rows} rows must return per_layer [{num_rows}, B]")
    return result.per_layer[r].float()
