"""A pretend CUDA device for CPU CI: catches tensors made on the wrong device.

``PretendCuda`` is a ``TorchFunctionMode``. Inside it, tensors carry a *place*: "cuda" (the
pretend device) or "cpu" (the host); their data stays on the CPU, so values, ``.item()`` and
autograd are real. The rules are CUDA's:

- ``.to("cuda")``/``.to(cuda_tensor)``/``.cuda()`` and any ``device=`` that names CUDA place
  the result on the pretend device (the call itself runs on the CPU);
- ``x.device`` of a pretend-CUDA tensor *is* ``cuda`` (and ``is_cuda`` is True), so code that makes
  tensors ``device=x.device`` does what it would on a GPU;
- a factory without ``device=`` (``torch.tensor(1.0)``, ``torch.zeros(3)``, ``torch.randperm``...),
  ``.cpu()``, ``.to("cpu")`` and ``torch.from_numpy`` make host tensors, as on a GPU machine;
- an op that receives tensors of both places raises ``DeviceMismatch`` naming the op (CUDA's
  "Expected all tensors to be on the same device"). The guard is stricter than CUDA in one
  respect: CUDA lets a 0-dim CPU tensor join an elementwise op (at the cost of a host-to-device
  copy); the project's rule is to make every tensor on the device of the data it joins, so that
  is an error here too. ``copy_``/``to`` (explicit moves) and index tensors are exempt;
- ``.numpy()`` of a pretend-CUDA tensor, or a CPU ``torch.Generator`` driving a CUDA op, raise
  as they would on a GPU;
- under ``torch.use_deterministic_algorithms(True)`` (``--deterministic``), an op whose CUDA
  backward has no deterministic version (``NONDETERMINISTIC_CUDA_BACKWARD``, from the list in
  ``torch.use_deterministic_algorithms``' documentation) raises when it is applied to a CUDA
  tensor that needs a gradient (CUDA raises in the backward pass).

Tensors that reach Python without passing through the mode (gradients made by autograd's engine,
the outputs of ``torch.func.vmap``, tensors made before the mode was entered) count as CUDA
tensors: inside a run where the model and the data are on CUDA that is where such tensors are.
So build the model, the loader and everything else inside the mode, and move them with
``.to("cuda")`` as the scripts do.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

CUDA = torch.device("cuda")
HOST = torch.device("cpu")
_ATTR = "_pretend_place"


class DeviceMismatch(AssertionError):
    """An op received tensors on the pretend CUDA device and on the host."""


def place_of(t: Tensor):
    """"cuda", "cpu", or None for a tensor the mode never saw (taken as "cuda" inside the mode)."""
    return getattr(t, _ATTR, None)


def _where(t: Tensor) -> str:
    return getattr(t, _ATTR, "cuda")


def _set(obj, where):
    if where is None:
        return obj
    for t in tree_flatten(obj)[0]:
        if isinstance(t, Tensor):
            try:
                setattr(t, _ATTR, where)
            except (AttributeError, RuntimeError):   # e.g. a tensor without a __dict__
                pass
    return obj


def _device(value):
    """The device a ``device=``-like argument names, or None when it names none."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str) and (value == "cpu" or value.startswith("cuda")):
        return torch.device(value)
    return None


def _name(func) -> str:
    name = getattr(func, "__name__", None)
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "property")
    return name or repr(func)


NONDETERMINISTIC_CUDA_BACKWARD = {"adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
                                  "avg_pool3d", "fractional_max_pool2d", "fractional_max_pool3d",
                                  "max_unpool1d", "max_unpool2d", "max_unpool3d", "embedding_bag",
                                  "ctc_loss", "nll_loss2d", "grid_sample"}
EXPLICIT_MOVES = {"to", "copy_", "cpu", "cuda", "set_", "data"}
PROPERTY_READS = {"device", "is_cuda", "is_cpu"}


class PretendCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        is_property = getattr(func, "__name__", None) == "__get__"
        if is_property and name in PROPERTY_READS and args and isinstance(args[0], Tensor):
            on_cuda = _where(args[0]) == "cuda"
            if name == "device":
                return CUDA if on_cuda else func(*args)
            if name == "is_cuda":
                return on_cuda or func(*args)
            return (not on_cuda) and func(*args)

        # which places meet in this op (index tensors of x[...] do not count: CUDA accepts CPU ones)
        if name in ("__getitem__",):
            checked = args[:1]
        elif name in ("__setitem__",):
            checked = args[:1] + args[2:]
        else:
            checked = (args, kwargs)
        tensors = [t for t in tree_flatten(checked)[0] if isinstance(t, Tensor)]
        places = {_where(t) for t in tensors}
        if len(places) > 1 and name not in EXPLICIT_MOVES:
            shapes = [(tuple(t.shape), _where(t)) for t in tensors]
            raise DeviceMismatch(f"{name}: tensors on the pretend CUDA device and on the CPU meet "
                                 f"(shape, place): {shapes}")
        if name == "numpy" and "cuda" in places:
            raise DeviceMismatch("numpy() of a CUDA tensor (call .cpu() first)")

        if ("cuda" in places and torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled()
                and (name in NONDETERMINISTIC_CUDA_BACKWARD
                     or (name == "interpolate" and kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
                         in ("linear", "bilinear", "bicubic", "trilinear")))
                and any(t.requires_grad for t in tensors)):
            raise DeviceMismatch(f"{name}: its CUDA backward has no deterministic implementation "
                                 f"(--deterministic stops here on a GPU)")

        if name == "_parse_to":             # nn.Module.to parsing its arguments: nothing moves yet
            return func(*args, **kwargs)
        # explicit devices: remember what was asked for, run on the CPU
        target = None
        if "device" in kwargs and _device(kwargs["device"]) is not None:
            target = _device(kwargs["device"])
            kwargs["device"] = HOST
        if name == "to":
            new_args = list(args)
            for i, a in enumerate(args[1:], start=1):
                if _device(a) is not None:
                    target, new_args[i] = _device(a), HOST
                elif isinstance(a, Tensor):
                    target = CUDA if _where(a) == "cuda" else HOST
                    new_args[i] = a.dtype
            args = tuple(new_args)
        elif name == "cuda":
            target, args, kwargs = CUDA, args[:1], {}
            func = Tensor.to
            kwargs = {"device": HOST}
        elif name == "cpu":
            target = HOST
        elif name in ("from_numpy", "numpy", "tolist", "item"):
            target = HOST

        generator = kwargs.get("generator")
        op_on_cuda = (target is not None and target.type == "cuda") or (target is None and "cuda" in places)
        if generator is not None and op_on_cuda and generator.device.type != "cuda":
            raise DeviceMismatch(f"{name}: a CPU torch.Generator drives an op on the CUDA device")

        source = _where(args[0]) if args and isinstance(args[0], Tensor) else None
        out = func(*args, **kwargs)
        moved = target is not None and source is not None and source != ("cuda" if target.type == "cuda" else "cpu")
        if name in ("to", "cuda") and moved and out is args[0] and not isinstance(out, torch.nn.Parameter):
            # here x.to(...) returns x itself (the data stays on the CPU); on a GPU, moving a tensor
            # to the other device is a copy. (A Parameter moved by Module.to() stays itself.)
            out = out.clone()
        if target is not None:
            where = "cuda" if target.type == "cuda" else "cpu"
        elif places:
            where = places.pop()
        elif not tensors:
            where = "cpu"                         # a factory without device=: the host, as on a GPU
        else:
            where = None
        return _set(out, where)


def place(obj, where: str = "cuda"):
    """Mark tensors (or a module's parameters and buffers) as living on ``where``."""
    if isinstance(obj, torch.nn.Module):
        for t in list(obj.parameters()) + list(obj.buffers()):
            setattr(t, _ATTR, where)
        return obj
    return _set(obj, where)
