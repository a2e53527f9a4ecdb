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
* the loop accumulates the step's outputs on the device after each replay (``helper.meters``).

``--cuda_graphs`` modes:
  off      the plain eager step (the default);
  static   the step as restructured for capture (static buffers, device-tensor learning rate),
           run eagerly: what the CPU tests check against ``off``, bit for bit;
  capture  CUDA-graph capture and replay (CUDA only);
  compile  ``torch.compile(mode="reduce-overhead")`` of the networks (CUDA graphs through
           Inductor) instead of a hand-made capture.

The default stays ``off`` until ``scripts/gpu_check.sh`` has verified capture on a GPU
(``benchmarks/compare_graphs.py``); it then becomes ``capture`` for CUDA.

Where a run cannot be captured -- not CUDA, an fp16 gradient scaler (host reads), torchrun
(DistributedDataParallel), an optimiser other than SGD, or a loss/strategy/task whose class says
``capturable = False`` (data-dependent shapes, host reads) -- the step runs eagerly and one line
says why; nothing silently changes the result.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor

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
    g.add_argument("--eval_batch_size", type=int, default=None,
                   help="batch size of evaluation (default: 1024 on CUDA, --batch_size elsewhere; "
                        "evaluation results do not depend on it)")


def eval_batch_size(args) -> int:
    """The evaluation batch: the flag, else 1024 on CUDA (fewer launches), else ``--batch_size``
    (CPU runs keep today's numbers bit for bit)."""
    if args.eval_batch_size is not None:
        if args.eval_batch_size < 1:
            raise ValueError(f"--eval_batch_size must be a positive integer, got {args.eval_batch_size}")
        return args.eval_batch_size
    return 1024 if str(args.device).startswith("cuda") else args.batch_size


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

def capture_blockers(task, optimizer, args, scaler=None, distributed: bool = False) -> List[str]:
    """Why this run's step cannot be captured (empty: it can). Each reason is a short phrase."""
    reasons = []
    if not str(args.device).startswith("cuda"):
        reasons.append(f"device {args.device} is not CUDA")
    if scaler is not None or _needs_scaler(args):
        reasons.append("the fp16 gradient scaler reads the host each step")
    if getattr(args, "compile", False):
        reasons.append("--compile is not combined with a hand-made capture (--cuda_graphs compile does both)")
    if distributed:
        reasons.append("DistributedDataParallel under torchrun is not captured here")
    if not isinstance(optimizer, DeviceLRSGD):
        reasons.append(f"optimiser {type(optimizer).__name__} has no device-lr step here (SGD only)")
    for obj in _step_objects(task):
        if not getattr(obj, "capturable", True):
            reasons.append(f"{type(obj).__name__}: {obj.not_capturable_because}")
    return list(dict.fromkeys(reasons))


def _needs_scaler(args) -> bool:
    from .loop import needs_grad_scaler
    return bool(getattr(args, "amp", False)) and needs_grad_scaler(str(args.device), True)


def _step_objects(task) -> List[Any]:
    """The task and every loss and ensemble strategy its step runs."""
    objs = [task]
    for term in getattr(task, "terms", []):
        objs += list(term.distillers) + [term.strategy]
    return objs


# -- the graphed step ---------------------------------------------------------------------------------

def _static_like(data):
    if isinstance(data, Tensor):
        return torch.empty_like(data)
    if isinstance(data, (tuple, list)):
        return type(data)(_static_like(d) for d in data)
    return data


def _copy_into(static, data):
    if isinstance(static, Tensor):
        static.copy_(data, non_blocking=True)
    elif isinstance(static, (tuple, list)):
        for s, d in zip(static, data):
            _copy_into(s, d)


def _signature(data):
    if isinstance(data, Tensor):
        return (tuple(data.shape), data.dtype, data.device, data.stride())
    if isinstance(data, (tuple, list)):
        return tuple(_signature(d) for d in data)
    return data


def _no_cache(autocast):
    """Autocast's weight-cast cache must be off inside a graph capture (PyTorch docs)."""
    if isinstance(autocast, torch.autocast):
        return torch.autocast(autocast.device, dtype=autocast.fast_dtype, cache_enabled=False)
    return autocast


class GraphedStep:
    """``task.train_step`` restructured for CUDA graphs; call it like ``train_step``.

    ``mode="static"`` copies each batch into static buffers and runs the step eagerly (any
    device); ``mode="capture"`` warms up on a side stream, captures at the first step of each
    epoch after warm-up, and replays. A batch whose shapes differ from the static buffers (a last
    partial batch without ``drop_last``) runs eagerly on its own tensors."""

    def __init__(self, task, mode: str, log: Callable[[str], None] = print, warmup: int = WARMUP_STEPS):
        if mode not in ("static", "capture"):
            raise ValueError(f"GraphedStep: mode {mode!r}; expected static or capture")
        self.task, self.mode, self.log, self.warmup = task, mode, log, warmup
        self.eager_step = task.train_step
        self.static = None
        self.sig = None
        self.graph = None
        self.graph_epoch = None
        self.out = None
        self.shares: Dict[str, Tensor] = {}
        self.warm = 0
        self.captures = 0
        self.replays = 0

    def __call__(self, data, epoch, optimizer, scaler=None, autocast=contextlib.nullcontext()):
        sig = _signature(data)
        if self.static is None:
            self.static, self.sig = _static_like(data), sig
        if sig != self.sig:
            return self.eager_step(data, epoch, optimizer, scaler, autocast)
        _copy_into(self.static, data)
        if self.mode == "static":
            return self.eager_step(self.static, epoch, optimizer, scaler, autocast)
        if self.graph is not None and self.graph_epoch == epoch:
            return self._replay()
        if self.warm < self.warmup:
            self.warm += 1
            return self._side_stream(lambda: self.eager_step(self.static, epoch, optimizer, scaler, autocast))
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
        task = self.task
        # The student task adds each step's ensemble-weight shares to a dict and counts steps in
        # Python: inside a graph that would run once, at capture. Capture the shares alone and
        # add them after every replay instead.
        sums, steps = getattr(task, "_weight_sums", None), getattr(task, "_steps", None)
        if sums is not None:
            task._weight_sums = {}
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(self.graph):
                self.out = self.eager_step(self.static, epoch, optimizer, None, _no_cache(autocast))
        finally:
            if sums is not None:
                self.shares = dict(task._weight_sums)
                task._weight_sums, task._steps = sums, steps
        self.graph_epoch = epoch
        self.captures += 1

    def _replay(self):
        self.graph.replay()
        self.replays += 1
        task = self.task
        if getattr(task, "_weight_sums", None) is not None:
            for key, share in self.shares.items():
                task._weight_sums[key] = task._weight_sums.get(key, 0) + share.clone()
            task._steps += 1
        return self.out


def install(task, optimizer, args, log: Callable[[str], None], scaler=None, distributed: bool = False):
    """Apply ``--cuda_graphs`` to a built task and its SGD optimiser; returns the optimiser to use.

    ``off`` changes nothing. ``static``/``capture`` swap in ``DeviceLRSGD`` and wrap the task's
    step (``capture`` falls back to the eager step, with a line naming why, where it cannot run);
    ``compile`` compiles the networks with ``mode="reduce-overhead"`` on CUDA."""
    mode = args.cuda_graphs
    if mode == "off":
        return optimizer
    if mode == "compile":
        _compile_reduce_overhead(task, args, log)
        return optimizer
    if isinstance(optimizer, torch.optim.SGD) and not isinstance(optimizer, DeviceLRSGD):
        optimizer = DeviceLRSGD.from_sgd(optimizer, args.device)
    if mode == "capture":
        reasons = capture_blockers(task, optimizer, args, scaler, distributed)
        if reasons:
            log(f"--cuda_graphs capture: the step runs eagerly ({'; '.join(reasons)})")
            return optimizer
    task.train_step = GraphedStep(task, mode, log)
    log(f"--cuda_graphs {mode}: " + ("the training step is captured once per epoch and replayed"
                                     if mode == "capture" else
                                     "the step restructured for capture runs eagerly (static buffers, device lr)"))
    return optimizer


def _compile_reduce_overhead(task, args, log):
    if not str(args.device).startswith("cuda"):
        log(f"--cuda_graphs compile: reduce-overhead compiles CUDA graphs; on {args.device} the step runs eagerly")
        return
    if not hasattr(torch, "compile"):
        log("--cuda_graphs compile: this torch has no torch.compile; the step runs eagerly")
        return
    if hasattr(task, "student_fn"):
        task.student_fn = torch.compile(task.model, mode="reduce-overhead")
    elif hasattr(task, "net"):
        task.net = torch.compile(task.net, mode="reduce-overhead")
    log("--cuda_graphs compile: the trained network runs under torch.compile(mode='reduce-overhead')")
