"""Counting the aten operators a piece of code dispatches: a measure of per-step work that does not
depend on the device or the machine's load (issue 28, item 3).

``count_ops(fn) -> (total, Counter)`` runs ``fn()`` under a ``TorchDispatchMode`` and counts every
operator that reaches the dispatcher below autograd (``aten.convolution.default``,
``aten.add.Tensor``, ...), the backward pass and the optimiser's update included when ``fn`` runs
them. Composite operators are counted as the operators they decompose into (``F.linear`` is an
``aten.addmm``...); views and in-place updates count like any other operator. Run it on the CPU:
the counts are deterministic there (a CUDA run may add copies or pick other kernels).

    from op_count import count_ops
    total, per_op = count_ops(lambda: task.train_step((x, y), 2, optimizer))
    print(total, per_op.most_common(5))

``python benchmarks/bench_student.py --count-ops`` prints the operators of one student step with
the teachers' BatchNorm layers unfolded and folded.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Tuple

from torch.utils._python_dispatch import TorchDispatchMode


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> Tuple[int, Counter]:
    """``(number of aten operators, Counter by operator name)`` that ``fn()`` dispatches."""
    counter = _OpCounter()
    with counter:
        fn()
    return sum(counter.counts.values()), counter.counts
