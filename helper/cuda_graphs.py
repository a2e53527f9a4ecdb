"""Whole-step CUDA graphs: capture a task's training step once, replay it for every batch.

At batch 64 a distillation step is bound by launching hundreds of small kernels from Python, not
by the GPU (issue 18). PyTorch's whole-network capture (``torch.cuda.graph``, "CUDA Graphs" in the
PyTorch docs) records the step -- teachers' forward, the student's forward and backward, the
ensemble weights, the optimiser step -- once and replays it with one launch:

* static input buffers: each batch is copied into the same tensors the graph was captured on;
* the learning rate is a device tensor (``DeviceLRSGD``) that the schedule fills in place, so a
  schedule change needs no re-capture (``helper.schedule.set_lr``);
* warm-up steps run eagerly on a side stream before capture (cuDNN autotuning, the optimiser's
  momentum buffers, autograd's streams), each on a real batch: no batch is trained twice;
* the graph is re-captured at each epoch, because the objective reads the epoch as a Python value
  (CA-MKD's ``--beta_delay_epochs``/``--distill_decay`` weights, DKD's warm-up...);
* the trainer accumulates the step's outputs (losses, accuracy, the teachers' weight shares) on
  the device after each replay (``helper.trainer.EpochAccumulator``).

``--cuda_graphs`` modes:
  off      the plain eager step (the default);
  static   the step as restructured for capture (static buffers, device-tensor learning rate),
           run eagerly: what the CPU tests check against ``off``, bit for bit;
  capture  CUDA-graph capture and replay (CUDA only);
  compile  ``torch.compile(mode="reduce-overhead")`` of the networks (CUDA graphs through
           Inductor) instead of a hand-made capture.

The default stays ``off`` until ``scripts/gpu_check.sh`` has verified capture on a GPU
(``benchmarks/compare_graphs.py``); it then becomes ``capture`` for CUDA.

A group of students (``helper.group``) is captured per member: each batch is copied once into
static buffers that every member's step reads in place (``StaticBatches``, ``shared_inputs``), the
teachers' forward on them is one graph of its own, replayed once per batch before the members'
steps (``helper.group.GroupStage``), and each member's step is its own graph reading the teachers'
outputs from that graph's static outputs. Random draws inside a member's graph (a ViT's drop path)
come from the member's own stream: PyTorch registers the default CUDA generator to every graph it
captures, and a replay reads that generator's seed and offset *at replay time* and advances the
offset by what the graph consumes; the member's ``RngStream`` swaps its own state in around the
replay and keeps the advanced state, so a member's captured draws are those of its eager steps.

Where a run cannot be captured -- not CUDA, an fp16 gradient scaler (host reads), torchrun
(DistributedDataParallel), an optimiser other than SGD, or a loss/strategy/task whose class says
``capturable = False`` (data-dependent shapes, host reads) -- the step runs eagerly and one line
says why; nothing silently changes the result.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, Callable, Dict, List

import torch
from torch import Tensor

from distiller_zoo.argtypes import positive_int

from .execution import needs_grad_scaler

MODES = ("off", "static", "capture", "compile")
WARMUP_STEPS = 3        # eager steps on a side stream before each capture (PyTorch's docs use 3)


def add_arguments(parser: argparse.ArgumentParser):
    """``--cuda_graphs`` and ``--eval_batch_size`` (train_teacher.py and train_student.py)."""
    g = parser.add_argument_group("speed (issue 18)")
    g.add_argument("--cuda_graphs", choices=MODES, default="off",
                   help="capture the whole training step as a CUDA graph and replay it (capture), or "
                        "torch.compile(mode='reduce-overhead') (compile); static runs the restructured "
                        "step eagerly (a check). Default off; it becomes capture for CUDA once "
                        "scripts/gpu_check.sh has verified it")
    g.add_argument("--eval_batch_size", type=positive_int, default=None,
                   help="batch size of evaluation (default: 1024 on CUDA, --batch_size elsewhere; "
                        "evaluation results do not depend on it)")


def eval_batch_size(config) -> int:
    """The evaluation batch: the flag, else 1024 on CUDA (fewer launches), else ``--batch_size``
    (CPU runs keep today's numbers bit for bit)."""
    if config.eval_batch_size is not None:
        return config.eval_batch_size
    return 1024 if str(config.device).startswith("cuda") else config.batch_size


# -- the learning rate as a device tensor ------------------------------------------------------------

class DeviceLRSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose learning rate is a 0-dim tensor on the parameters' device.

    Why not plain SGD with ``lr=Tensor``: torch (checked in 2.13's ``torch/optim/sgd.py``) accepts a
    1-element tensor lr but applies it as ``add_(grad, alpha=-lr)`` (foreach and single-tensor
    paths alike, unless the lr requires grad or under ``torch.compile``), which reads the tensor on
    the host: a synchronisation that a CUDA graph cannot capture. This class relies on no torch
    version's tensor-lr support: it is built with a float lr, then each group's lr becomes a
    tensor that only this ``step`` reads (``addcmul_`` with a 0-dim tensor and the ``Optimizer``
    API it uses are in every torch >= 2.0; the project's floor is 2.4).
    This step is torch's single-tensor SGD (the CPU default) with the update written
    ``param.addcmul_(d_p, lr, value=-1)``, torch's own form for a tensor lr: on the CPU it gives
    the same bits as ``add_(d_p, alpha=-lr)`` (both fused multiply-adds; tested). Momentum,
    dampening, Nesterov and weight decay are constants of the run.

    Checkpoints hold a float lr (``state_dict``), so they resume in an eager run and back.
    """

    def __init__(self, params, lr: float, device, **kw):
        super().__init__(params, lr=float(lr), **kw)
        for group in self.param_groups:      # one tensor per group, written in place by set_lr
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)

    @classmethod
    def from_sgd(cls, optimizer: torch.optim.SGD, device) -> "DeviceLRSGD":
        """The same parameter groups and hyper-parameters, with a device-tensor lr (before any step)."""
        if optimizer.state:
            raise ValueError("DeviceLRSGD.from_sgd: the optimiser has already stepped")
        groups = [{k: (float(v) if k == "lr" else v) for k, v in g.items()} for g in optimizer.param_groups]
        return cls(groups, lr=groups[0]["lr"], device=device,
                   **{k: optimizer.defaults[k] for k in ("momentum", "dampening", "weight_decay", "nesterov",
                                                         "maximize")})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            dampening, nesterov, maximize = group["dampening"], group["nesterov"], group["maximize"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad if not maximize else -p.grad
                if wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.clone(d_p).detach()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                p.addcmul_(d_p, lr.to(p.dtype) if lr.dtype != p.dtype else lr, value=-1)
        return loss

    def state_dict(self):
        state = super().state_dict()
        for group in state["param_groups"]:
            group["lr"] = float(group["lr"])      # a host read at checkpoint time, not in the step
        return state

    def load_state_dict(self, state_dict):
        tensors = [g["lr"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, t in zip(self.param_groups, tensors):
            t.fill_(float(group["lr"]))
            group["lr"] = t                       # the same tensor a captured graph reads


# -- what cannot be captured -------------------------------------------------------------------------

def run_blockers(config, scaler=None, distributed: bool = False) -> List[str]:
    """Why nothing of this run can be captured, whatever its task (empty: it can be)."""
    reasons = []
    if not str(config.device).startswith("cuda"):
        reasons.append(f"device {config.device} is not CUDA")
    if scaler is not None or (config.amp and needs_grad_scaler(str(config.device), True)):
        reasons.append("the fp16 gradient scaler reads the host each step")
    if config.compile:
        reasons.append("--compile is not combined with a hand-made capture (--cuda_graphs compile does both)")
    if distributed:
        reasons.append("DistributedDataParallel under torchrun is not captured here")
    return reasons


def capture_blockers(task, optimizer, config, scaler=None, distributed: bool = False) -> List[str]:
    """Why this run's step cannot be captured (empty: it can). Each reason is a short phrase."""
    reasons = run_blockers(config, scaler, distributed)
    if not isinstance(optimizer, DeviceLRSGD):
        reasons.append(f"optimiser {type(optimizer).__name__} has no device-lr step here (SGD only)")
    for obj in task.step_objects():
        if not obj.capturable:
            reasons.append(f"{type(obj).__name__}: {obj.not_capturable_because}")
    return list(dict.fromkeys(reasons))


# -- the graphed step ---------------------------------------------------------------------------------

def static_like(data):
    """Empty tensors shaped as ``data``'s (a tensor, or nested tuples/lists of them)."""
    if isinstance(data, Tensor):
        return torch.empty_like(data)
    if isinstance(data, (tuple, list)):
        return type(data)(static_like(d) for d in data)
    return data


def copy_into(static, data):
    """``data`` copied into the buffers ``static`` (same structure)."""
    if isinstance(static, Tensor):
        static.copy_(data, non_blocking=True)
    elif isinstance(static, (tuple, list)):
        for s, d in zip(static, data):
            copy_into(s, d)


def signature(data):
    """Shapes, dtypes, devices and strides of ``data``: what static buffers must match."""
    if isinstance(data, Tensor):
        return (tuple(data.shape), data.dtype, data.device, data.stride())
    if isinstance(data, (tuple, list)):
        return tuple(signature(d) for d in data)
    return data


def no_cache(autocast):
    """Autocast's weight-cast cache must be off inside a graph capture (PyTorch docs)."""
    if isinstance(autocast, torch.autocast):
        return torch.autocast(autocast.device, dtype=autocast.fast_dtype, cache_enabled=False)
    return autocast


def flat_tensors(data) -> List[Tensor]:
    """The tensors of ``data`` (a tensor, or nested tuples/lists of them), in order."""
    if isinstance(data, Tensor):
        return [data]
    if isinstance(data, (tuple, list)):
        return [t for d in data for t in flat_tensors(d)]
    return []


def same_tensors(a, b) -> bool:
    """Whether ``a`` and ``b`` hold the very same tensor objects (same structure)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


class StaticBatches:
    """A group's static input buffers, one set per loader (``views``): each batch is copied in
    once, and every member's step reads the same tensors in place (``GraphedStep(...,
    shared_inputs=True)``), so the shared teachers' outputs are computed once per batch and view
    (``helper.group.SharedTeachers`` keys them by the tensors) and a captured graph finds its
    inputs where it was captured. A batch whose shapes differ from the buffers (a last partial
    batch) is handed on as it is (the steps then run eagerly on it)."""

    def __init__(self):
        self.buffers: Dict[tuple, Any] = {}
        self.sigs: Dict[tuple, Any] = {}

    def __call__(self, batches: Dict[tuple, Any]) -> Dict[tuple, Any]:
        out = {}
        for views, batch in batches.items():
            sig = signature(batch)
            if views not in self.buffers:
                self.buffers[views], self.sigs[views] = static_like(batch), sig
            if sig != self.sigs[views]:
                out[views] = batch
                continue
            copy_into(self.buffers[views], batch)
            out[views] = self.buffers[views]
        return out

    def holds(self, batches: Dict[tuple, Any]) -> bool:
        """Whether every batch of ``batches`` is this object's buffers (not a passed-on one)."""
        return all(views in self.buffers and same_tensors(batch, self.buffers[views])
                   for views, batch in batches.items())


class GraphedStep:
    """A step function restructured for CUDA graphs; call it like the step it wraps
    (``task.train_step``).

    ``mode="static"`` copies each batch into static buffers and runs the step eagerly (any
    device); ``mode="capture"`` warms up on a side stream, captures at the first step of each
    epoch after warm-up, and replays. A batch whose shapes differ from the static buffers (a last
    partial batch without ``drop_last``) runs eagerly on its own tensors. The step's output is the
    captured one (its tensors are rewritten by each replay): the trainer reads it after each step.

    A member of a group (``shared_inputs=True``) is handed the group's static buffers
    (``StaticBatches``) and copies nothing: the tensors of its first batch are its inputs, and a
    batch made of other tensors runs eagerly. ``ready()`` says whether it may capture yet (the
    group's teacher outputs are in static buffers: ``helper.group.GroupStage.ready``); until then
    it steps eagerly on the static buffers."""

    def __init__(self, step, mode: str, log: Callable[[str], None] = print, warmup: int = WARMUP_STEPS,
                 shared_inputs: bool = False, ready: Callable[[], bool] = lambda: True):
        if mode not in ("static", "capture"):
            raise ValueError(f"GraphedStep: mode {mode!r}; expected static or capture")
        self.eager_step, self.mode, self.log, self.warmup = step, mode, log, warmup
        self.shared_inputs, self.ready = shared_inputs, ready
        self.static = None
        self.sig = None
        self.graph = None
        self.graph_epoch = None
        self.out = None
        self.warm = 0
        self.captures = 0
        self.replays = 0

    def __call__(self, data, epoch, optimizer, scaler=None, autocast=contextlib.nullcontext()):
        if self.shared_inputs:
            if self.static is None:
                self.static = data
            if not same_tensors(data, self.static):
                return self.eager_step(data, epoch, optimizer, scaler, autocast)
        else:
            sig = signature(data)
            if self.static is None:
                self.static, self.sig = static_like(data), sig
            if sig != self.sig:
                return self.eager_step(data, epoch, optimizer, scaler, autocast)
            copy_into(self.static, data)
        if self.mode == "static":
            return self.eager_step(self.static, epoch, optimizer, scaler, autocast)
        if self.graph is not None and self.graph_epoch == epoch:
            return self._replay()
        if self.warm < self.warmup:
            self.warm += 1
            return self._side_stream(lambda: self.eager_step(self.static, epoch, optimizer, scaler, autocast))
        if not self.ready():
            return self.eager_step(self.static, epoch, optimizer, scaler, autocast)
        try:
            self._capture(epoch, optimizer, autocast)
        except Exception as exc:   # an op that cannot be captured: say which, then step eagerly
            self.graph, self.mode = None, "static"
            torch.cuda.synchronize()
            self.log(f"--cuda_graphs capture: capture failed ({type(exc).__name__}: "
                     f"{(str(exc).splitlines() or [''])[0][:200]}); the step runs eagerly from here")
            return self.eager_step(self.static, epoch, optimizer, scaler, autocast)
        return self._replay()

    @staticmethod
    def _side_stream(fn):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, epoch, optimizer, autocast):
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.out = self.eager_step(self.static, epoch, optimizer, None, no_cache(autocast))
        self.graph_epoch = epoch
        self.captures += 1

    def _replay(self):
        self.graph.replay()
        self.replays += 1
        return self.out


def stage_mode(config, distributed: bool = False) -> str:
    """The mode of a group's shared stage (``helper.group.GroupStage``) under ``--cuda_graphs``:
    ``off`` for off and compile; ``static`` for static, and for capture where nothing of the run
    can be captured (each member's step then says why); ``capture`` otherwise."""
    mode = config.cuda_graphs
    if mode in ("off", "compile"):
        return "off"
    if mode == "capture" and run_blockers(config, distributed=distributed):
        return "static"
    return mode


def step_function(task, optimizer, config, log: Callable[[str], None], scaler=None, distributed: bool = False,
                  group=None):
    """``--cuda_graphs`` applied to a built task and its SGD optimiser: ``(step function, optimiser)``
    for the trainer.

    ``off``: the task's eager ``train_step``. ``static``/``capture``: ``DeviceLRSGD`` in place of SGD
    and the step wrapped in ``GraphedStep`` (``capture`` runs eagerly, with a line naming why, where
    it cannot be captured). ``compile``: the networks compiled with ``mode="reduce-overhead"`` on
    CUDA, the step itself eager. ``group``: the ``helper.group.GroupStage`` of a group's member,
    whose static buffers and teacher outputs the step reads."""
    mode = config.cuda_graphs
    if mode == "off":
        return task.train_step, optimizer
    if mode == "compile":
        if not str(config.device).startswith("cuda"):
            log(f"--cuda_graphs compile: reduce-overhead compiles CUDA graphs; on {config.device} the step runs eagerly")
        else:
            task.compile(log, mode="reduce-overhead")
            log("--cuda_graphs compile: the trained network runs under torch.compile(mode='reduce-overhead')")
        return task.train_step, optimizer
    if isinstance(optimizer, torch.optim.SGD) and not isinstance(optimizer, DeviceLRSGD):
        optimizer = DeviceLRSGD.from_sgd(optimizer, config.device)
    if mode == "capture":
        reasons = capture_blockers(task, optimizer, config, scaler, distributed)
        if reasons:
            log(f"--cuda_graphs capture: the step runs eagerly ({'; '.join(reasons)})")
            return task.train_step, optimizer
    if group is not None:
        log(f"--cuda_graphs {mode}: " + ("this student's step is captured once per epoch and replayed, reading "
                                         "the group's static batch and the teachers' outputs of the group's "
                                         "teacher graph" if mode == "capture" else
                                         "this student's step restructured for capture runs eagerly on the "
                                         "group's static batch (device lr)"))
        return GraphedStep(task.train_step, mode, log, shared_inputs=True, ready=group.ready), optimizer
    log(f"--cuda_graphs {mode}: " + ("the training step is captured once per epoch and replayed"
                                     if mode == "capture" else
                                     "the step restructured for capture runs eagerly (static buffers, device lr)"))
    return GraphedStep(task.train_step, mode, log), optimizer
