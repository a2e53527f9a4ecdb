"""A group of students trained in one process on the same batches, each a complete run.

``train_student.py --distill kd,dkd --ensemble_method AVERAGE_LOSS,CAMKD`` trains the cross
product of the lists (and ``--logit-stand both``) together: each batch is loaded and augmented
once per distinct set of views, the teachers run forward once per batch and view (their outputs
are shared: ``SharedTeachers``), and every student takes its own step on it with its own
connectors, optimiser, schedule, run folder and checkpoints (``helper.trainer.Trainer``); the loop
is ``helper.trainer.fit``, the one every run takes (a solo run is a group of one).

The promise: on the CPU a student trained in a group is bit-identical to the same student trained
alone with the same seed and flags. A solo run draws from three sources of randomness:

* the data loader's own ``torch.Generator``\\ s, seeded from ``(seed, epoch)`` (``dataset.loader``):
  order and augmentation. The augmentation stream is consumed view after view, so students whose
  losses ask for different views (MLKD's strong view) see different standard views too; the group
  keeps one loader per distinct tuple of views (students with the same views share it);
* the global torch RNG (CPU, and CUDA's), from ``torch.manual_seed(seed)``: the teachers'
  construction before their weights load, then the student's initial weights, its connectors,
  and every draw inside its losses (CRD's negatives, spot-adaptive sampling...);
* nothing else (teachers and evaluation draw nothing).

So each student owns an RNG stream (``RngStream``): the global state right after the shared
teachers are built, the point where a solo run builds its student, and the group swaps a
student's stream in around everything it does (build, init stage, each step, each epoch's end and
its checkpoint, whose ``rng`` is the student's own). Swapping states is a few kilobytes of copy per
student and step.

Under torchrun each student's objective is wrapped in its own DistributedDataParallel
(``StudentTask.distribute``); the members step in the same order on every rank, so their
collectives (gradient buckets, buffer averaging, metrics) pair up rank by rank.

``--cuda_graphs static|capture``: what the members share is prepared once per batch by the
``GroupStage`` (``helper.trainer.fit`` calls it before the members' steps): the batch copied into
static buffers that every member reads in place (``helper.cuda_graphs.StaticBatches``) and, under
``capture``, the teachers' forward on them as one CUDA graph, captured after the warm-up steps and
replayed once per batch; its outputs stay pinned in ``SharedTeachers``, and each member's step is
its own graph (``helper.cuda_graphs.GraphedStep``) that reads them from those static buffers. Why a
member's random draws inside its graph stay its own: ``helper.cuda_graphs``' docstring.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Dict, List, Sequence

import torch

from .checkpoint import rng_state, set_rng_state
from .cuda_graphs import WARMUP_STEPS, StaticBatches, flat_tensors, no_cache
from .errors import RunError
from .trainer import Member, member_step


def capturing(images) -> bool:
    """Whether a CUDA graph is being captured on the current stream (never on a CPU tensor)."""
    return images.is_cuda and torch.cuda.is_current_stream_capturing()


class SharedTeachers:
    """The run's ``TeacherEnsemble`` as every student of a group sees it: ``outputs(images,
    preact)`` is computed once per image tensor and ``preact`` until ``clear()`` (called once per
    batch), and otherwise delegates to the ensemble. The images tensor is held with its outputs, so
    the key (its identity) cannot be reused by another tensor in the meantime. Each caller gets
    its own list and ``NetOutput``\\ s (shallow copies): a loss that edits them edits nobody else's.

    Pinned outputs (``pin``: the static outputs of the group's teacher graph, for the static input
    buffers) survive ``clear()``; the graph rewrites them in place each batch. Inside the capture of
    a member's graph, outputs that are not pinned are computed into that graph and not cached: no
    other member may read a tensor that only one member's graph writes."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self._cache: Dict[tuple, tuple] = {}
        self._pinned: Dict[tuple, tuple] = {}
        self.forwards = 0                 # teacher forwards run (a test counts them)

    def __getattr__(self, name):
        return getattr(self.__dict__["ensemble"], name)

    def __len__(self):
        return len(self.ensemble)

    def outputs(self, images, preact: bool = False):
        key = (id(images), bool(preact))
        hit = self._pinned.get(key)
        if hit is None or hit[0] is not images:
            hit = self._cache.get(key)
        if hit is None or hit[0] is not images:
            hit = (images, self.ensemble.outputs(images, preact=preact))
            self.forwards += 1
            if not capturing(images):
                self._cache[key] = hit
        return [dataclasses.replace(o, feats=list(o.feats)) for o in hit[1]]

    def requested(self) -> List[tuple]:
        """``(images, preact)`` of every output cached since the last ``clear()``."""
        return [(images, preact) for (_, preact), (images, _) in self._cache.items()]

    def pin(self, images, preact: bool, outputs):
        """Serve ``outputs`` for ``(images, preact)`` until the run ends (static buffers)."""
        self._pinned[(id(images), bool(preact))] = (images, outputs)

    def clear(self):
        self._cache.clear()


class GroupStage:
    """What the members of a group share in a step, made once per batch before their steps
    (``helper.trainer.fit`` calls ``prepare``), by ``--cuda_graphs`` mode (``cuda_graphs.stage_mode``):

    * ``off``: the loader's batches; the teachers' outputs are computed at the first member's
      request and shared (``SharedTeachers``, cleared per batch);
    * ``static``: the batches copied into static buffers (``cuda_graphs.StaticBatches``) that every
      member's step reads in place; the teachers as under ``off`` (what the CPU tests compare with
      the eager group, bit for bit);
    * ``capture``: as ``static``, and once ``warmup`` batches have run eagerly (the members' warm-up
      steps, which ask for the teacher outputs they need), the teachers' forward on the static
      buffers is captured as one graph, its outputs pinned, and the graph replayed at each batch
      before the members' steps. ``ready`` is what the members' captures wait for. A capture that
      fails is one line; the teachers and members then run eagerly.

    A batch that does not fit the static buffers (a last partial batch) is handed on as it is, and
    every step runs eagerly on it."""

    def __init__(self, teachers: SharedTeachers, mode: str = "off", log=print,
                 autocast=contextlib.nullcontext(), warmup: int = WARMUP_STEPS):
        if mode not in ("off", "static", "capture"):
            raise ValueError(f"GroupStage: mode {mode!r}; expected off, static or capture")
        self.teachers, self.mode, self.log, self.autocast, self.warmup = teachers, mode, log, autocast, warmup
        self.buffers = StaticBatches()
        self.graph = None
        self.failed = False
        self.static_batches = 0           # batches served from the static buffers so far
        self.replays = 0

    def ready(self) -> bool:
        """Whether the teachers' outputs come from the teacher graph's static buffers."""
        return self.graph is not None

    def prepare(self, batches: Dict[tuple, Any]) -> Dict[tuple, Any]:
        """This batch as the members' steps take it (see the class docstring)."""
        requested = self.teachers.requested()
        self.teachers.clear()
        if self.mode == "off":
            return batches
        batches = self.buffers(batches)
        if self.mode == "capture" and self.buffers.holds(batches):
            if self.graph is None and not self.failed and self.static_batches >= self.warmup:
                self._capture(requested)
            if self.graph is not None:
                self.graph.replay()
                self.replays += 1
            self.static_batches += 1
        return batches

    def _capture(self, requested):
        static = [(images, preact) for images, preact in requested
                  if any(images is t for b in self.buffers.buffers.values() for t in flat_tensors(b))]
        if not static:
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with no_cache(self.autocast), torch.cuda.graph(graph):
                outs = [self.teachers.ensemble.outputs(images, preact=preact) for images, preact in static]
        except Exception as exc:      # an op that cannot be captured: say which, then run eagerly
            self.failed = True
            torch.cuda.synchronize()
            self.log(f"--cuda_graphs capture: the teachers' forward could not be captured ({type(exc).__name__}: "
                     f"{(str(exc).splitlines() or [''])[0][:200]}); teachers and students run eagerly")
            return
        for (images, preact), out in zip(static, outs):
            self.teachers.pin(images, preact, out)
        self.graph = graph
        self.log(f"--cuda_graphs capture: the teachers' forward on the group's static batch is one graph "
                 f"({len(static)} image tensor(s) x preact), replayed once per batch before the students' steps")

    def end_epoch(self):
        self.teachers.clear()


class RngStream:
    """One student's share of the global RNG (CPU and CUDA states): ``with stream:`` makes its
    state the global one and keeps what the block leaves."""

    def __init__(self, state: Dict[str, Any]):
        self.state = state

    def __enter__(self):
        set_rng_state(self.state)
        return self

    def __exit__(self, *exc):
        self.state = rng_state()
        return False


def students_that_fit(total: int, base: int, peaks: Sequence[int]) -> int:
    """How many students fit in ``total`` bytes of device memory, from the memory in use before the
    group's first step (``base``: teachers, data) and the peak after each student's first step
    (``peaks``, cumulative): the average increment per student so far. 0 when not even the
    increments measured leave room."""
    if not peaks:
        return 0
    per = max((max(peaks) - base) / len(peaks), 1)
    return max(int(math.floor((total - base) / per)), 0)


def describe_memory(device, peaks: Sequence[int], base: int) -> str:
    """The log line of the group's peak device memory after the first step."""
    dev = torch.device(device)
    if dev.type != "cuda":
        try:
            import resource
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux
            return (f"==> group of {len(peaks)} students: device memory n/a on {dev.type} (no allocator "
                    f"statistics); this process's peak resident memory {rss:.0f} MiB after the first step")
        except (ImportError, OSError):
            return f"==> group of {len(peaks)} students: device memory n/a on {dev.type}"
    mib = 1 << 20
    peak = max(peaks)
    return (f"==> group of {len(peaks)} students: peak device memory {peak / mib:.0f} MiB after the first step "
            f"(teachers and data {base / mib:.0f} MiB, about {(peak - base) / max(len(peaks), 1) / mib:.0f} MiB "
            f"per student)")


class GroupOutOfMemory(RunError):
    """The group's first step ran out of device memory; the message says how many would fit."""


def measured_first_step(active: List[Member], batches, step: int, epoch: int, device, log):
    """The group's first step, measured: peak device memory after each student's step; on CUDA an
    out-of-memory error becomes ``GroupOutOfMemory`` saying how many students would fit."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    peaks = []
    for m in active:
        try:
            member_step(m, batches, step, epoch)
        except torch.cuda.OutOfMemoryError:
            total = torch.cuda.get_device_properties(device).total_memory
            fit = students_that_fit(total, base, peaks)
            raise GroupOutOfMemory(
                f"the group of {len(active)} students does not fit in device memory ({total / (1 << 30):.1f} GiB): "
                f"out of memory in the first step of student {len(peaks) + 1} ({m.name}); about {fit} would "
                f"fit (teachers and data {base / (1 << 20):.0f} MiB"
                + (f", about {(max(peaks) - base) / len(peaks) / (1 << 20):.0f} MiB per student" if peaks else "")
                + "): train fewer students per group") from None
        peaks.append(torch.cuda.max_memory_allocated(device) if cuda else 0)
    log(describe_memory(device, peaks, base))
