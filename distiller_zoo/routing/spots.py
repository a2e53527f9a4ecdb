"""Where each distillation loss reads: the spots of spot-adaptive distillation.

A spot is a place where the student may be distilled and where the graft pass may switch between
networks: a feature index of the ``ZooModel`` contract (``feats[0..K-1]`` the stage outputs,
``feats[K]`` the pooled vector) on the student's side and on every teacher's side, or the output
(the logits). Routing needs no table of loss names: every distiller says where it reads.

- A loss with several rows (``TeacherLoss.per_layer``, ``[L, B]``) names the student feature of each
  row in ``layer_ids`` and its student/teacher feature pairs in ``pairs`` (AT, NST, KDSVD: one row
  per paired layer, KDSVD's rows belong to the deeper map of two consecutive pairs), or only
  ``pairs`` when there is one row per pair (VID, AB), or only ``layer_ids`` when the teacher's
  feature has the student's index (FSP: row k relates maps k-1 and k of both networks).
- A ``kind = "logit"`` loss reads the output.
- Any other loss is asked by running it once on random features (a deep copy, no gradient, the
  random state kept) and recording which entries of ``s.feats`` and ``t.feats`` it reads; it must
  read exactly one student feature (FitNet, SP, FT, RKD, PKT, CC, CRD, CA-MKD's ``inter``).
  A loss that reads several student features in one per-sample value without saying which row is
  which (FSP, AB) cannot be routed, and says so.

``relational`` (a class attribute, default False) marks losses whose per-sample values depend on
the other samples of the batch (SP, RKD, PKT, CC); routing evaluates them on the routed sub-batch
(``distiller_zoo.routing.router``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..base import Batch, NetOutput

OUTPUT = -1        # the student index of the output spot


@dataclass(frozen=True)
class Spot:
    student: int                     # student feature index; OUTPUT for the logits
    teachers: Tuple[int, ...]        # each teacher's feature index (OUTPUT for the logits)
    label: str                       # "f<i>" (a map), "pool" (the pooled vector), "out"

    @property
    def is_output(self) -> bool:
        return self.student == OUTPUT


@dataclass
class SpotPlan:
    """The run's spots (feature spots by student index, then the output) and, for every term, the
    spot of each of its rows."""
    spots: List[Spot]
    term_rows: Dict[str, List[int]] = field(default_factory=dict)   # term key -> spot position per row
    relational: Dict[str, bool] = field(default_factory=dict)

    @property
    def feature_spots(self) -> List[Spot]:
        return [s for s in self.spots if not s.is_output]


class _Reads(list):
    """A list that records which of its entries are read (index, slice or iteration)."""

    def __init__(self, items, seen: set):
        super().__init__(items)
        self._seen = seen

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            self._seen.update(range(n)[key])
        else:
            self._seen.add(int(key) % n)
        return super().__getitem__(key)

    def __iter__(self):
        self._seen.update(range(len(self)))
        return super().__iter__()


def probe_reads(distiller: nn.Module, s_shapes, t_shapes, num_classes: int, image_size: int = 32,
                student: Optional[nn.Module] = None, teacher: Optional[nn.Module] = None,
                batch_size: int = 4) -> Tuple[List[int], List[int]]:
    """``(student feature indices, teacher feature indices)`` a loss reads, from one run on random
    features. The distiller, the models' modes and the random state are left as they were."""
    tensors = list(distiller.parameters()) + list(distiller.buffers())
    if student is not None:
        tensors += list(student.parameters())
    device = tensors[0].device if tensors else torch.device("cpu")
    probe = copy.deepcopy(distiller).eval()
    s_seen, t_seen = set(), set()
    modes = [(m, m.training) for m in (student, teacher) if m is not None]
    B = batch_size
    try:
        for m, _ in modes:
            m.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            def out(shapes, seen, model):
                feats = _Reads([torch.randn(B, *sh, device=device) for sh in shapes], seen)
                return NetOutput(feats=feats, logits=torch.randn(B, num_classes, device=device),
                                 head=None if model is None else model.head, model=model)
            s, t = out(s_shapes, s_seen, student), out(t_shapes, t_seen, teacher)
            batch = Batch(images=torch.randn(B, 3, image_size, image_size, device=device),
                          labels=torch.arange(B, device=device) % num_classes,
                          index=torch.arange(B, device=device), epoch=1)
            probe(s, t, batch)
    finally:
        for m, mode in modes:
            m.train(mode)
    return sorted(s_seen), sorted(t_seen)


def distiller_rows(distiller: nn.Module, s_shapes, t_shapes, name: str = "", **probe_kw) -> List[Tuple[int, int]]:
    """``[(student index, teacher index)]``, one per row of the loss (``per_layer`` rows, or the one
    ``per_sample`` row), indices non-negative; ``[(OUTPUT, OUTPUT)]`` for a loss on the logits."""
    name = name or type(distiller).__name__
    ns, nt = len(s_shapes), len(t_shapes)
    pairs = getattr(distiller, "pairs", None)
    layer_ids = getattr(distiller, "layer_ids", None)
    if pairs is not None or layer_ids is not None:
        if pairs is None:       # rows named by layer_ids alone read the same index on both sides (FSP)
            pairs = [(int(i), int(i)) for i in layer_ids]
        pairs = [(int(i) % ns, int(j) % nt) for i, j in pairs]
        teacher_of = dict(pairs)
        ids = [int(i) % ns for i in layer_ids] if layer_ids is not None else [i for i, _ in pairs]
        missing = [i for i in ids if i not in teacher_of]
        if missing:
            raise ValueError(f"{name}: rows at student features {missing} have no teacher pair")
        return [(i, teacher_of[i]) for i in ids]
    if getattr(distiller, "kind", "feature") == "logit":
        return [(OUTPUT, OUTPUT)]
    try:
        s_read, t_read = probe_reads(distiller, s_shapes, t_shapes, **probe_kw)
    except Exception as exc:     # a loss that cannot run on random features cannot be located
        raise ValueError(f"cannot tell where {name} reads ({type(exc).__name__}: {exc})") from None
    if not s_read:
        return [(OUTPUT, OUTPUT)]
    if len(s_read) != 1 or len(t_read) != 1:
        raise ValueError(f"{name} reads student features {s_read} and teacher features {t_read} in one "
                         f"per-sample loss without naming a row per feature (per_layer + layer_ids/pairs), "
                         f"so it cannot be routed per spot")
    return [(s_read[0], t_read[0])]


def spot_label(index: int, shapes) -> str:
    if index == OUTPUT:
        return "out"
    return "pool" if len(shapes[index]) == 1 else f"f{index}"


def plan_spots(term_rows: Dict[str, List[List[Tuple[int, int]]]], relational: Dict[str, bool],
               s_shapes, t_shapes: Sequence) -> SpotPlan:
    """Merge every term's rows (``term_rows[key][m]``: teacher m's distiller's rows) into one
    ordered list of spots, feature spots by student index then the output spot (always present,
    as in the reference), and check that the graft pass can follow them."""
    M = len(t_shapes)
    teacher_index: Dict[int, List[int]] = {}
    for key, per_teacher in term_rows.items():
        if len(per_teacher) != M:
            raise ValueError(f"term {key}: {len(per_teacher)} distillers for {M} teachers")
        students = [[s for s, _ in rows] for rows in per_teacher]
        if any(s != students[0] for s in students):
            raise ValueError(f"{key}: the teachers' losses read different student features "
                             f"({students}); routing needs the same rows for every teacher "
                             f"(try another --feat_pairing)")
        for r, s_idx in enumerate(students[0]):
            if s_idx == OUTPUT:
                continue
            t_idx = [per_teacher[m][r][1] for m in range(M)]
            if teacher_index.setdefault(s_idx, t_idx) != t_idx:
                raise ValueError(f"student feature {s_idx} is paired with teacher features "
                                 f"{teacher_index[s_idx]} by one loss and {t_idx} by another")
    order = sorted(teacher_index)
    for m in range(M):
        t_seq = [teacher_index[s][m] for s in order]
        if any(b <= a for a, b in zip(t_seq, t_seq[1:])):
            raise ValueError(f"teacher {m}'s spots {t_seq} do not follow the student's order {order}; "
                             f"the graft pass cannot run them")
    spots = [Spot(s, tuple(teacher_index[s]), spot_label(s, s_shapes)) for s in order]
    spots.append(Spot(OUTPUT, (OUTPUT,) * M, "out"))
    position = {sp.student: k for k, sp in enumerate(spots)}
    rows = {key: [position[s] for s, _ in per_teacher[0]] for key, per_teacher in term_rows.items()}
    return SpotPlan(spots, rows, dict(relational))
