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

Not for groups (one-line errors): torchrun, ``--cuda_graphs`` other than off (a captured step would
have to replay the shared teacher forward; a group step captured as one graph is the way there:
teachers once, then each student's step, with per-student generator states registered to the graph).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Sequence

import torch

from .checkpoint import rng_state, set_rng_state
from .errors import RunError
from .trainer import Member, member_step


class SharedTeachers:
    """The run's ``TeacherEnsemble`` as every student of a group sees it: ``outputs(images,
    preact)`` is computed once per image tensor and ``preact`` until ``clear()`` (called once per
    batch), and otherwise delegates to the ensemble. The images tensor is held with its outputs, so
    the key (its identity) cannot be reused by another tensor in the meantime. Each caller gets
    its own list and ``NetOutput``\\ s (shallow copies): a loss that edits them edits nobody else's."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self._cache: Dict[tuple, tuple] = {}
        self.forwards = 0                 # teacher forwards run (a test counts them)

    def __getattr__(self, name):
        return getattr(self.__dict__["ensemble"], name)

    def __len__(self):
        return len(self.ensemble)

    def outputs(self, images, preact: bool = False):
        key = (id(images), bool(preact))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not images:
            hit = (images, self.ensemble.outputs(images, preact=preact))
            self._cache[key] = hit
            self.forwards += 1
        return [dataclasses.replace(o, feats=list(o.feats)) for o in hit[1]]

    def clear(self):
        self._cache.clear()


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
