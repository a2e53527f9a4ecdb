"""Data-parallel training under ``torchrun`` (torch's own launcher and rendezvous; nothing home-made).

    torchrun --nproc_per_node 4 train_student.py --model_s vgg8 --teacher_num 3 ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 train_teacher.py ...

Each process (rank) trains on its own shard of the device-resident data, with a per-epoch seeded
permutation shared by all ranks; gradients are averaged by DistributedDataParallel; only rank 0
writes checkpoints, logs, TensorBoard events and the manifest; ``--resume`` works the same (every
rank reads the last checkpoint: on several nodes the save folder must be on a filesystem they all
read). ``--batch_size`` stays the global batch, split over the ranks, as RepDistiller's and CA-MKD's
distributed modes do. NCCL on CUDA, gloo on the CPU.

The epoch's training figures are summed over the ranks (``helper.trainer.EpochAccumulator``);
evaluation deals whole test batches out to the ranks and adds their sums in the single-process
order (``helper.evaluate``). A group of students wraps each student's objective in its own DDP;
the members step in the same order on every rank, so their collectives pair up.
``tests/test_distributed.py`` runs a teacher and a group on two nodes on loopback (two
``torchrun --nnodes 2`` launchers), killed and resumed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context_from_env() -> DistContext:
    """This process's place in a torchrun job (env: RANK, WORLD_SIZE, LOCAL_RANK), read without
    joining anything; a single process without torchrun."""
    if not launched_by_torchrun():
        return DistContext()
    return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def rank_settings(ctx: DistContext, device: str, batch_size: int) -> dict:
    """The settings that differ per process under torchrun: this rank's device (``cuda:<local
    rank>``) and its share of the global ``--batch_size``, which is kept as ``global_batch_size``.
    Empty for a single process; a ``ValueError`` (one line) for a job that cannot run."""
    if not ctx.enabled:
        return {}
    out = {}
    if str(device).startswith("cuda"):
        gpus = torch.cuda.device_count()
        if ctx.local_rank >= gpus:   # NCCL needs one GPU per process
            raise ValueError(f"torchrun started process {ctx.local_rank} on a node with {gpus} GPU(s); use "
                             f"--nproc_per_node {gpus} or at most that many, or --device cpu (gloo)")
        out["device"] = f"cuda:{ctx.local_rank}"
    if batch_size % ctx.world_size:
        raise ValueError(f"--batch_size {batch_size} is the global batch and must be divisible by the "
                         f"{ctx.world_size} processes")
    return dict(out, global_batch_size=batch_size, batch_size=batch_size // ctx.world_size)


def join(ctx: DistContext, device: str):
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU); a no-op for a
    single process."""
    if not ctx.enabled:
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")


def cleanup(ctx: DistContext):
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: DistContext, device, sync_bn: bool = False):
    """DistributedDataParallel around ``module`` (optionally with SyncBatchNorm)."""
    if not ctx.enabled:
        return module
    if sync_bn:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    dev = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[dev.index] if dev.type == "cuda" else None,
        find_unused_parameters=True)   # terms can sit out an epoch (-b delay), losses skip connectors


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def average_gradients(parameters):
    """Average gradients over ranks by hand, for modules outside DDP (e.g. a routing policy with
    its own optimiser)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def average_buffers(module: torch.nn.Module):
    """Average floating-point buffers (BatchNorm running statistics) over ranks, so that every rank
    evaluates and rank 0 saves the same network. DDP only broadcasts rank 0's buffers at the start
    of each forward, which leaves each rank's last update in place at the end of an epoch."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world
