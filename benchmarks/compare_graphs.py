"""GPU check of ``--cuda_graphs capture``: 20 captured steps against 20 eager steps from the same
state compute the same thing (scripts/gpu_check.sh runs it).

For a teacher (``ClassifierTask``) and a student under each ``--methods`` strategy (CA-MKD's
``--distill inter``), two copies of one seeded state train on the same 20 device-resident batches:

* eager: the step as restructured for capture (static buffers, ``DeviceLRSGD``), run eagerly;
* captured: ``GraphedStep`` in capture mode (3 eager warm-up steps on a side stream, capture, replay).

and for a group of students (``--group``, one student per strategy, sharing the teachers, as
``train_student.py --ensemble_method A,B`` trains them; issue 28 item 2):

* eager: the group's step as restructured for capture (``helper.group.GroupStage`` static: the
  batch copied once into static buffers every member reads; each member's static step), run
  eagerly, each member in its own RNG stream;
* captured: the stage in capture mode (the teachers' forward one graph, replayed once per batch)
  and each member's step its own graph reading the teachers' static outputs.

A second group (``--group_drop_path``: DeiT-Tiny students at 16 px, patch 4, drop path, ``--distill
kd``) draws random numbers inside each member's graph: bit-identical results under
``--deterministic`` show that each member's draws come from its own stream in the captured steps.

The learning rate changes at step 8 (the schedule writing the device tensor: no re-capture) and the
epoch at step 14 (a re-capture). Compared: every step's loss and the final parameters and buffers
(of every member, for a group).
With ``--deterministic`` they must be bit-identical; otherwise equal within ``--rtol`` (bf16
autocast by default, as train_*.py on CUDA). Also reported: the distance of the captured run to
the plain eager ``torch.optim.SGD`` step (foreach kernels round differently; tolerance only).

    python benchmarks/compare_graphs.py                      # bf16 autocast, tolerance
    python benchmarks/compare_graphs.py --deterministic --no-amp   # bit for bit

Prints one line per case and exits 1 if any case differs; on a machine without CUDA it prints
"compare_graphs: skipped: no CUDA" and exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

STEPS = 20
LR_CHANGE_AT, EPOCH_CHANGE_AT = 8, 14


def make_task(kind, method, args, device):
    """``(task, configuration)``: a teacher (``ClassifierTask``) or a CA-MKD student, built as the
    scripts build them."""
    from bench_common import student_config, student_task, teachers_on
    from helper.task import ClassifierTask
    from models import model_dict
    torch.manual_seed(0)
    amp = ["--amp" if args.amp else "--no-amp"]
    config = student_config(method or "AVERAGE_LOSS", len(args.teachers), device, *amp)   # a teacher reads its step flags
    if kind == "teacher":
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        return ClassifierTask(model_dict[args.student](num_classes=args.classes).to(device, memory_format=fmt)), config
    return student_task(config, teachers_on(args.teachers, args.classes, config), args.student, args.classes,
                        1000), config


def train(built, mode, batches, args, device):
    """20 steps in ``mode`` (off: plain SGD, eager; static; capture); (losses, state)."""
    from bench_common import sync
    from helper.cuda_graphs import step_function
    from helper.execution import autocast_context
    from helper.schedule import set_lr
    task, config = built
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    lines = []
    step, optimizer = step_function(task, optimizer, config.replace(cuda_graphs=mode), lines.append)
    if mode == "capture" and any("runs eagerly" in line for line in lines):
        raise RuntimeError(lines[-1])
    task.train_mode()
    losses, epoch = [], 1
    task.epoch_begin(epoch, 240)
    for k, batch in enumerate(batches):
        if k == LR_CHANGE_AT:
            set_lr(optimizer, 0.005)
        if k == EPOCH_CHANGE_AT:
            epoch = 2
            task.epoch_begin(epoch, 240)
        out = step(batch, epoch, optimizer, None, autocast_context(str(device), args.amp))
        losses.append(out.loss.detach().float().clone())
    sync(device)
    # GraphedStep falls back to the eager step when a capture fails (it logs why): then the
    # "captured" run was eager and agrees with the eager run trivially (AEKD on an H200, 2026-11-28)
    if mode == "capture" and any("capture failed" in line for line in lines):
        raise RuntimeError(next(line for line in lines if "capture failed" in line))
    state = {k: v.detach().clone() for k, v in task.trainable().state_dict().items()}
    return torch.stack(losses), state


VIEWS = ("standard",)


def make_group(methods, args, device, drop_path: float = 0.0):
    """``(SharedTeachers, [(task, configuration, RngStream)])``: a student per strategy on one set of
    teachers, each built in its own stream from the same start (as a group's students are);
    ``drop_path`` > 0: DeiT-Tiny students resizing the 32-px batches to 16 px (patch 4) with
    ``--distill kd``, which draw inside their steps."""
    from bench_common import student_config, teachers_on
    from helper.checkpoint import rng_state
    from helper.group import RngStream, SharedTeachers
    from helper.student_run import make_objective
    from helper.student_step import StudentTask
    from models import build_model
    torch.manual_seed(0)
    amp = ["--amp" if args.amp else "--no-amp"]
    distill = "kd" if drop_path else "inter"
    configs = [student_config(m, len(args.teachers), device, *amp, distill=distill) for m in methods]
    shared = SharedTeachers(teachers_on(args.teachers, args.classes, configs[0]))
    start = rng_state()
    members = []
    for config in configs:
        stream = RngStream(start)
        with stream:
            fmt = torch.channels_last if config.channels_last else torch.contiguous_format
            net = (build_model("deit_tiny", args.classes, img_size=16, patch_size=4, drop_path=drop_path) if drop_path
                   else build_model(args.student, args.classes)).to(device, memory_format=fmt)
            task = StudentTask(make_objective(config, net, shared, args.classes, 1000, 32))
        members.append((task, config, stream))
    return shared, members


def train_group(built, mode, batches, args, device):
    """20 steps of the group in ``mode`` (off: plain SGD, eager, no static buffers; static;
    capture); one (losses, state) per member."""
    from bench_common import sync
    from helper.cuda_graphs import stage_mode, step_function
    from helper.execution import autocast_context
    from helper.group import GroupStage
    from helper.schedule import set_lr
    shared, members = built
    lines = []
    autocast = autocast_context(str(device), args.amp)
    config0 = members[0][1].replace(cuda_graphs=mode)
    stage = GroupStage(shared, stage_mode(config0), log=lines.append, autocast=autocast)
    steps = []
    for task, config, stream in members:
        with stream:
            optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            step, optimizer = step_function(task, optimizer, config.replace(cuda_graphs=mode), lines.append,
                                            group=stage if mode != "off" else None)
            task.train_mode()
            task.epoch_begin(1, 240)
        steps.append((step, optimizer))
    if mode == "capture" and any("runs eagerly" in line for line in lines):
        raise RuntimeError(next(line for line in lines if "runs eagerly" in line))
    losses, epoch = [[] for _ in members], 1
    for k, batch in enumerate(batches):
        if k == LR_CHANGE_AT:
            for _, optimizer in steps:
                set_lr(optimizer, 0.005)
        if k == EPOCH_CHANGE_AT:
            epoch = 2
            for task, _, stream in members:
                with stream:
                    task.epoch_begin(epoch, 240)
        prepared = stage.prepare({VIEWS: batch})[VIEWS]
        for (task, _, stream), (step, optimizer), out_losses in zip(members, steps, losses):
            with stream:
                out = step(prepared, epoch, optimizer, None, autocast)
                out_losses.append(out.loss.detach().float().clone())
    stage.end_epoch()
    sync(device)
    failed = [line for line in lines if "capture failed" in line or "could not be captured" in line]
    if mode == "capture" and (failed or not stage.ready()):
        raise RuntimeError(failed[0] if failed else "the group's teacher forward was never captured")
    return [(torch.stack(out_losses), {k: v.detach().clone() for k, v in task.trainable().state_dict().items()})
            for (task, _, _), out_losses in zip(members, losses)]


def compare_group(a, b):
    """(every member bit-identical?, the largest max relative difference of any member)."""
    results = [compare(x, y) for x, y in zip(a, b)]
    return all(same for same, _ in results), max(worst for _, worst in results)


def compare(a, b):
    """(bit-identical?, max relative difference over losses and state)."""
    (la, sa), (lb, sb) = a, b
    same = torch.equal(la, lb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    worst = ((la - lb).abs() / la.abs().clamp_min(1e-6)).max().item()
    for k in sa:
        if sa[k].is_floating_point():
            x, y = sa[k].float(), sb[k].float()
            worst = max(worst, ((x - y).norm() / x.norm().clamp_min(1e-6)).item())
    return same, worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", nargs="+", default=["resnet32x4"] * 3)
    parser.add_argument("--student", default="vgg8")
    parser.add_argument("--methods", default="AVERAGE_LOSS,CAMKD,AEKD")
    parser.add_argument("--group", default="AVERAGE_LOSS,CAMKD",
                        help="strategies of the group of students compared (empty: no group case)")
    parser.add_argument("--group_drop_path", type=float, default=0.1,
                        help="drop path of the DeiT-Tiny group whose steps draw random numbers (0: no such case)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    parser.add_argument("--deterministic", action="store_true", help="require bit-identical results")
    parser.add_argument("--rtol", type=float, default=2e-2, help="relative tolerance without --deterministic")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("compare_graphs: skipped: no CUDA")
        return 0
    device = torch.device("cuda")
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    g = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, 32, 32, device=device, generator=g)
                .contiguous(memory_format=torch.channels_last),
                torch.randint(0, args.classes, (args.batch_size,), device=device, generator=g))
               for _ in range(STEPS)]
    group = [m.strip() for m in args.group.split(",") if m.strip()]
    cases = [("teacher", None)] + [("student", m.strip()) for m in args.methods.split(",") if m.strip()]
    if group:
        cases.append(("group", 0.0))
        if args.group_drop_path > 0:
            cases.append(("group", args.group_drop_path))
    failed = 0
    print(f"compare_graphs: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, {STEPS} steps, "
          f"batch {args.batch_size}, amp {'bf16' if args.amp else 'off'}, "
          f"{'deterministic (bit-identical required)' if args.deterministic else f'rtol {args.rtol}'}")
    for kind, method in cases:
        if kind == "group":
            name = (f"group {'+'.join(group)}" + (f" (deit_tiny, drop path {method}: draws inside the graphs)"
                                                   if method else ""))
        else:
            name = kind if method is None else f"student {method}"
        try:
            if kind == "group":
                eager = train_group(make_group(group, args, device, method), "static", batches, args, device)
                captured = train_group(make_group(group, args, device, method), "capture", batches, args, device)
                plain = train_group(make_group(group, args, device, method), "off", batches, args, device)
            else:
                eager = train(make_task(kind, method, args, device), "static", batches, args, device)
                captured = train(make_task(kind, method, args, device), "capture", batches, args, device)
                plain = train(make_task(kind, method, args, device), "off", batches, args, device)
        except Exception as exc:       # a capture error is a result of this check, not a crash
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        same, diff = (compare_group if kind == "group" else compare)(eager, captured)
        _, diff_plain = (compare_group if kind == "group" else compare)(plain, captured)
        ok = same if args.deterministic else diff <= args.rtol
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: captured vs eager {'bit-identical' if same else f'max rel diff {diff:.2e}'}"
              f"; vs plain SGD step max rel diff {diff_plain:.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
