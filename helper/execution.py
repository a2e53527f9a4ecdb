"""How a run executes on its device, without changing what it computes: mixed precision, memory
format, ``torch.compile``, and the deterministic / autotuned kernel choice."""
from __future__ import annotations

import contextlib
import os

import torch


def autocast_context(device: str, enabled: bool):
    """``torch.autocast`` for ``--amp`` (bf16 where the device has it, else fp16), or a null context."""
    if not enabled:
        return contextlib.nullcontext()
    dev = torch.device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(dev.type, dtype=torch.bfloat16)


def needs_grad_scaler(device: str, amp: bool) -> bool:
    """fp16 autocast (a GPU without bf16) needs a gradient scaler."""
    return amp and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported()


def memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_available(log, what: str) -> bool:
    """Whether ``torch.compile`` can run here; where not (no torch.compile, an unsupported platform
    or Python), one line saying that ``what`` runs uncompiled."""
    if not hasattr(torch, "compile"):
        log(f"--compile: this torch ({torch.__version__}) has no torch.compile; {what} runs uncompiled")
        return False
    try:
        # ``import torch._dynamo`` here would make ``torch`` a local name of this whole function
        # (UnboundLocalError above): import the submodule under its own name instead.
        from torch import _dynamo
        if not _dynamo.is_dynamo_supported():
            log(f"--compile: torch.compile is not supported on this platform/Python; {what} runs uncompiled")
            return False
    except ImportError:
        log(f"--compile: torch.compile is unavailable; {what} runs uncompiled")
        return False
    return True


def maybe_compile(module, log, what: str, **options):
    """``torch.compile(module, **options)``, or ``module`` where compiling is not available."""
    return torch.compile(module, **options) if compile_available(log, what) else module


def compile_in_place(module, log, what: str, **options):
    """``module.compile(**options)``: the module itself runs compiled (it stays the object that is
    trained, evaluated and saved), where compiling is available."""
    if compile_available(log, what):
        module.compile(**options)


def backend_description(deterministic: bool, device: str) -> str:
    """The log line (and ``args.json``'s ``backend_mode``) saying which kernels are in force and
    what that costs; ``apply_backend`` puts it in force."""
    if deterministic:
        return ("deterministic mode: deterministic algorithms on, cuDNN autotuning off; on a GPU this is "
                "slower (no autotuned or atomics-based kernels) and an op without a deterministic version "
                "stops the run with an error; CPU runs are reproducible either way")
    if str(device).startswith("cuda"):
        return "fast mode: cuDNN autotuning on (GPU results vary slightly between runs; --deterministic fixes that)"
    return "CPU run: reproducible for a fixed seed and thread count"


def execution_lines(config, ctx, data_note: str = ""):
    """The log lines of how a run executes (the kernel choice, the processes of a distributed run,
    the data's own note), the same for teacher and student runs."""
    lines = [f"==> {config.backend_mode}" + (f"; {ctx.world_size} processes, global batch "
                                            f"{config.global_batch_size}" if ctx.enabled else "")]
    if data_note:
        lines.append(f"==> {data_note}")
    return lines


def apply_backend(deterministic: bool, device: str):
    """``--deterministic``: reproducible kernels (slower on GPU); otherwise cuDNN autotuning on CUDA.
    These are process-wide torch settings, set once when a run is built."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
