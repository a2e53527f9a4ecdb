"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``: a ``TorchFunctionMode`` that
fails on every call known to make the host wait for a CUDA device (a value read back to Python,
an output whose size depends on the data, a linear-algebra routine that checks its ``info`` on
the host). CI has no GPU; this lets a CPU test catch a synchronising call in the training step
before it reaches a GPU machine, where it would stall the step and break CUDA-graph capture
(``torch.linalg.pinv`` in AEKD's QP did both on an H200 and passed every CPU test).

Not complete (torch has no list); it names what this project has met or would plausibly use."""
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode


class HostSync(AssertionError):
    pass


# value reads and data-dependent shapes
_TENSOR_METHODS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
                   "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}
_FUNCTIONS = {torch.nonzero, torch.argwhere, torch.masked_select, torch.unique, torch.unique_consecutive,
              # linear algebra whose error check reads LU/Cholesky/SVD ``info`` on the host
              torch.linalg.pinv, torch.linalg.svd, torch.linalg.svdvals, torch.linalg.eig, torch.linalg.eigh,
              torch.linalg.eigvals, torch.linalg.eigvalsh, torch.linalg.inv, torch.linalg.solve,
              torch.linalg.cholesky, torch.linalg.lstsq, torch.linalg.matrix_rank, torch.linalg.lu_factor,
              torch.pinverse, torch.inverse, torch.svd, torch.cholesky}


def _bool_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


class NoHostSync(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func in _FUNCTIONS or (name in _TENSOR_METHODS and args and isinstance(args[0], Tensor)):
            raise HostSync(f"{getattr(func, '__qualname__', name)} waits for the device")
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_mask(args[1]):
            raise HostSync(f"Tensor.{name} with a boolean mask waits for the device (data-dependent size)")
        if name in ("where", "repeat_interleave") and func in (torch.where, torch.repeat_interleave,
                                                               Tensor.repeat_interleave):
            if (name == "where" and len(args) + len(kwargs) == 1) or \
                    (name == "repeat_interleave" and "output_size" not in kwargs):
                raise HostSync(f"torch.{name} without a static output size waits for the device")
        return func(*args, **kwargs)
