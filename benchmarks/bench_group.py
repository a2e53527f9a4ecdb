"""Images per second of a group of students (issue 19) against the same students trained as
separate runs, side by side in one process, on the same device, models and data.

Configuration (CA-MKD's table): 3 x resnet32x4 teachers -> vgg8, ``--distill inter``, one student per
strategy in ``--methods`` (default AVERAGE_LOSS, EBKD, AEKD, CAMKD).

(a) separate runs: each student alone, its step running the teachers' forward itself (what four
    ``train_student.py`` runs do, one after the other);
(b) the group: per batch the teachers run forward once (``helper.group.SharedTeachers``), then every
    student takes its step in its own RNG stream (``helper.group.RngStream``), as
    ``train_student.py --ensemble_method A,B,C,D`` does.

Each under every ``--cuda_graphs`` mode of ``--modes`` (default: off and capture on CUDA, off on a
CPU): ``capture`` captures each separate run's step (``helper.cuda_graphs.GraphedStep``), and the
group as ``train_student.py`` does (issue 28 item 2): the batch copied once into static buffers,
the teachers' forward one graph replayed once per batch, each student's step its own graph reading
the teachers' static outputs (``helper.group.GroupStage``).

Printed: images per second of each student alone, the group's images per second per student, and
the time of one group step against one separate step (mean over the students): the group/one-run
time ratio (issue 19's target: at most 1.6 on a GPU, 2.5 on a CPU, for four students; issue 28's:
at most 1.6 with capture on a GPU), one line per mode.

    python benchmarks/bench_group.py --device cuda                               # the real measurement
    python benchmarks/bench_group.py --device cpu --batch_size 32 --steps 3      # small, for a CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import dataset  # noqa: E402
from helper.checkpoint import rng_state  # noqa: E402
from bench_common import student_config, student_task, sync  # noqa: E402
from helper.cuda_graphs import WARMUP_STEPS, stage_mode, step_function  # noqa: E402
from helper.group import GroupStage, RngStream, SharedTeachers  # noqa: E402
from helper.execution import autocast_context  # noqa: E402
from helper.teachers import TeacherEnsemble  # noqa: E402
from models import model_dict  # noqa: E402

METHODS = ("AVERAGE_LOSS", "EBKD", "AEKD", "CAMKD")


def build_students(args, teachers, device, num_classes, mode, log, group=None):
    """One (step function, optimizer, RNG stream) per method, all on ``teachers`` (an ensemble or
    its shared view), with ``--cuda_graphs mode`` (``group``: the group's stage)."""
    out = []
    for method in args.methods:
        config = student_config(method, len(args.teachers), device, "--cuda_graphs", mode)
        task = student_task(config, teachers, args.student, num_classes, args.size, seed=1)
        optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        step, optimizer = step_function(task, optimizer, config, log, group=group)
        task.train_mode()
        task.epoch_begin(2, 240)
        out.append((step, optimizer, RngStream(rng_state())))
    return out


def batches(args, device, num_classes, fmt, warmup):
    loaders = dataset.build_loaders("synthetic", batch_size=args.batch_size, device=device, seed=0,
                                    synthetic_train=args.size, synthetic_test=64, synthetic_classes=num_classes,
                                    drop_last=True)
    loaders.train.set_epoch(1)
    out = []
    while len(out) < warmup + args.steps:
        for x, y in loaders.train:
            out.append((x.contiguous(memory_format=fmt), y))
            if len(out) == warmup + args.steps:
                break
    return out


def timed(step, data, warmup, device):
    """Seconds per step over ``data[warmup:]`` after ``warmup`` untimed steps."""
    for batch in data[:warmup]:
        step(batch)
    sync(device)
    start = time.perf_counter()
    for batch in data[warmup:]:
        step(batch)
    sync(device)
    return (time.perf_counter() - start) / (len(data) - warmup)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--teachers", nargs="+", default=["resnet32x4"] * 3)
    p.add_argument("--student", default="vgg8")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", type=int, default=2048, help="synthetic training images")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--modes", nargs="+", choices=("off", "static", "capture"), default=None,
                   help="--cuda_graphs modes to measure (default: off capture on CUDA, off elsewhere)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    modes = args.modes or (["off", "capture"] if cuda else ["off"])
    fmt = torch.channels_last if cuda else torch.contiguous_format
    autocast = autocast_context(str(device), cuda)
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([model_dict[n](num_classes=args.classes) for n in args.teachers],
                               list(args.teachers)).to(device, memory_format=fmt)
    # a captured step warms up for WARMUP_STEPS steps and captures at the next: none of them is timed
    warmups = {mode: max(args.warmup, WARMUP_STEPS + 1) if mode == "capture" else args.warmup for mode in modes}
    data = batches(args, device, args.classes, fmt, max(warmups.values()))
    b = args.batch_size
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), "
          f"{len(args.teachers)} x {args.teachers[0]} -> {args.student}, --distill inter, batch {b}, "
          f"{args.steps} timed steps after {args.warmup} (capture: {WARMUP_STEPS + 1})")
    for mode in modes:
        warmup, mode_data = warmups[mode], data[max(warmups.values()) - warmups[mode]:]
        lines = []
        solo = {}
        alone = build_students(args, ensemble, device, args.classes, mode, lines.append)
        for method, (step, optimizer, _) in zip(args.methods, alone):
            solo[method] = timed(lambda batch, step=step, optimizer=optimizer: step(batch, 2, optimizer, None,
                                                                                  autocast),
                                 mode_data, warmup, device)

        shared = SharedTeachers(ensemble)
        config = student_config(args.methods[0], len(args.teachers), device, "--cuda_graphs", mode)
        stage = GroupStage(shared, stage_mode(config), log=lines.append, autocast=autocast)
        students = build_students(args, shared, device, args.classes, mode, lines.append, group=stage)
        views = ("standard",)

        def group_step(batch):
            batch = stage.prepare({views: batch})[views]
            for step, optimizer, stream in students:
                with stream:
                    step(batch, 2, optimizer, None, autocast)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        group = timed(group_step, mode_data, warmup, device)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if cuda else "n/a"
        for line in dict.fromkeys(lines):
            print(f"  [{mode}] {line}")
        mean_solo = sum(solo.values()) / len(solo)
        print(f"--cuda_graphs {mode}")
        print(f"{'student':<14}{'alone img/s':>14}{'in group img/s':>17}")
        for method in args.methods:
            print(f"{method:<14}{b / solo[method]:>14.1f}{b / group:>17.1f}")
        label = "" if mode == "off" else f" ({mode})"
        print(f"group of {len(students)}{label}: {group * 1000:.1f} ms per step vs {mean_solo * 1000:.1f} ms for one "
              f"run (mean): group/one-run time ratio {group / mean_solo:.2f}; {len(students)} separate runs take "
              f"{sum(solo.values()) / group:.2f}x the group's time; peak device memory of the group {peak}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
