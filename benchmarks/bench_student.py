"""Images per second of a multi-teacher distillation step: this toolkit's loop vs. the reference
scripts' way, side by side in one process, on the same device, models and data.

Configuration (CA-MKD's): M teachers (default 3 x resnet32x4) -> a student (default vgg8),
``--distill inter``, for each ensemble method in ``--methods`` (AVERAGE_LOSS, CAMKD, AEKD).

(a) ours: the device-resident loader (uint8 data on the device, batched crop/flip there), mixed
    precision and channels_last on CUDA, teachers of one architecture as one batched (vmap)
    forward on CUDA, the closed-form KD gradient and the exact on-device QP for AEKD, no host
    synchronisation inside the step;
(b) the reference scripts' manner (CA-MKD's helper/loops.py): a DataLoader whose workers augment
    one image at a time, fp32, teachers one after another, ``.item()`` on the loss and accuracy
    every step, and for AEKD one extra backward pass per teacher plus scikit-learn's OneClassSVM
    on the CPU every step.

Both compute the same objective (CE + alpha * ensemble KD + beta * ensemble inter loss) with the
same connectors. Printed: images per second of each, their ratio, peak device memory, and our
AEKD step time relative to our AVERAGE_LOSS step.

    python benchmarks/bench_student.py --device cuda                       # the real measurement
    python benchmarks/bench_student.py --size 256 --steps 2 --teachers resnet8 resnet8 --student resnet8

Each method gets one row per ``--cuda_graphs`` mode of our step (default ``off,capture``: the eager
step and the whole step captured as a CUDA graph; off CUDA, capture falls back to the eager step
and prints why).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import dataset  # noqa: E402
from bench_data import NumpyCifar  # noqa: E402
from distiller_zoo.KD import kd_loss  # noqa: E402
from bench_common import peak_memory_mb, reset_peak, student_config, student_task, sync, teachers_on  # noqa: E402
from helper import cuda_graphs  # noqa: E402
from helper.execution import autocast_context  # noqa: E402


def build(method, args, device, num_classes, channels_last, graphs="off"):
    """Our student task for ``method`` (a resolved configuration) and its SGD optimiser."""
    flags = ["--cuda_graphs", graphs] + ([] if channels_last else ["--no-channels_last", "--no-amp", "--no-fuse_teachers"])
    config = student_config(method, len(args.teachers), device, *flags)
    task = student_task(config, teachers_on(args.teachers, num_classes, config), args.student, num_classes, args.size)
    optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return task, optimizer, config


def run_ours(method, args, device, num_classes, graphs="off"):
    """Our step (``StudentTask.train_step``), eager (``graphs="off"``) or under ``--cuda_graphs``
    ``graphs`` (capture falls back to the eager step, with its one-line reason, off CUDA)."""
    cuda = device.type == "cuda"
    task, optimizer, config = build(method, args, device, num_classes, channels_last=cuda, graphs=graphs)
    step, optimizer = cuda_graphs.step_function(task, optimizer, config, log=print)
    loaders = dataset.build_loaders("synthetic", batch_size=args.batch_size, device=device, seed=0,
                                    synthetic_train=args.size, synthetic_test=64, synthetic_classes=num_classes,
                                    drop_last=True)
    autocast = autocast_context(str(device), config.amp)
    task.train_mode()
    task.epoch_begin(2, 240)
    reset_peak(device)
    done, start, images = 0, None, 0
    loaders.train.set_epoch(1)
    while done < args.warmup + args.steps:
        for x, y in loaders.train:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            step((x, y), 2, optimizer, None, autocast)
            done += 1
            images += x.shape[0] if done > args.warmup else 0
            if done == args.warmup + args.steps:
                break
    sync(device)
    rate = images / (time.perf_counter() - start)
    if args.profile:
        print_profile(lambda: step((x, y), 2, optimizer, None, autocast), device, f"{method}, --cuda_graphs {graphs}")
    return rate, peak_memory_mb(device)


def print_profile(step, device, title, steps=3):
    """The PyTorch profiler's per-kernel table of ``steps`` steps (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"profile of {steps} steps ({title}):")
    print(prof.key_averages().table(sort_by=key, row_limit=25))


def reference_weights_svm(grads, nu):
    """The reference's AEKD weights: scikit-learn's OneClassSVM on the raw Gram, on the CPU."""
    from sklearn.svm import OneClassSVM
    m = grads.shape[0]
    v = grads.reshape(m, grads.shape[1], -1).mean(1)
    G = (v @ v.T).cpu().double().numpy()
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=1e-6).fit(G)
    w = np.zeros(m)
    w[svm.support_] = svm.dual_coef_.ravel() / (m * nu)
    return torch.from_numpy(w).float()


def run_reference(method, args, device, num_classes):
    task, optimizer, _ = build(method, args, device, num_classes, channels_last=False)
    data = dataset.build_loaders("synthetic", batch_size=args.batch_size, device="cpu", seed=0,
                                 synthetic_train=args.size, synthetic_test=64,
                                 synthetic_classes=num_classes).train
    raw = data._images.index_select(0, data._source).cpu().numpy()       # the same uint8 images
    spec = data.spec
    ds = NumpyCifar(raw, data.labels.numpy(), spec.mean, spec.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, pin_memory=device.type == "cuda")
    student, teachers = task.model, task.teachers.models
    inter = task.terms[1].distillers
    M, T, nu = len(teachers), 4.0, min(max(1.0 / (0.6 * len(teachers)), 1.0 / len(teachers)), 1.0)
    task.train_mode()
    reset_peak(device)
    done, start, images = 0, None, 0
    while done < args.warmup + args.steps:
        for x, y in loader:
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            feat_s, logit_s = student(x, is_feat=True)
            with torch.no_grad():
                outs = [t(x, is_feat=True) for t in teachers]          # one teacher at a time
            loss_cls = F.cross_entropy(logit_s, y)
            kd = torch.stack([kd_loss(logit_s, o[1], T) for o in outs])       # [M, B]
            if method == "AEKD":
                grads = []
                handle = logit_s.register_hook(lambda g: grads.append(g.detach().clone()))
                for m in range(M):                                         # M extra backward passes
                    optimizer.zero_grad()
                    kd[m].mean().backward(retain_graph=True)
                handle.remove()
                w = reference_weights_svm(torch.stack(grads), nu).to(device)
                loss_div = (w * kd.mean(1)).sum()
            elif method == "CAMKD":
                ce = torch.stack([F.cross_entropy(o[1], y, reduction="none") for o in outs])
                w = (1 - ce.softmax(0)) / (M - 1)
                loss_div = (w * kd).sum() / (kd.shape[1] * M)
            else:
                loss_div = kd.mean()
            mse, conf = [], []
            for m, (d, o) in enumerate(zip(inter, outs)):
                e = d.embed(F.adaptive_avg_pool2d(feat_s[-2], o[0][-2].shape[-2:]))
                mse.append((e - o[0][-2]).pow(2).flatten(1).mean(1))
                conf.append(F.cross_entropy(teachers[m].head(e), y, reduction="none"))
            mse, conf = torch.stack(mse), torch.stack(conf)
            w_inter = (1 - conf.softmax(0)) / max(M - 1, 1) if method == "CAMKD" else torch.full_like(mse, 1.0)
            loss = loss_cls + loss_div + 50.0 * (w_inter.detach() * mse).sum() / (mse.shape[1] * M)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()                                                    # the per-step sync
            (logit_s.argmax(1) == y).float().mean().item()
            done += 1
            images += x.shape[0] if done > args.warmup else 0
            if done == args.warmup + args.steps:
                break
    sync(device)
    return images / (time.perf_counter() - start), peak_memory_mb(device)


def count_step_ops(method, args, num_classes):
    """Aten operators of one step of ours (``StudentTask.train_step``, eager, on the CPU, after one
    warm-up step) with the teachers' BatchNorm unfolded and folded: ``{False: n, True: n}``."""
    from op_count import count_ops
    device = torch.device("cpu")
    loader = dataset.build_loaders("synthetic", batch_size=args.batch_size, device=device, seed=0,
                                   synthetic_train=max(args.size, args.batch_size), synthetic_test=64,
                                   synthetic_classes=num_classes, drop_last=True).train
    loader.set_epoch(1)
    x, y = next(iter(loader))
    counts = {}
    for fold in (False, True):
        config = student_config(method, len(args.teachers), device, "--fold_bn" if fold else "--no-fold_bn")
        task = student_task(config, teachers_on(args.teachers, num_classes, config), args.student, num_classes,
                            args.size)
        optimizer = torch.optim.SGD(task.trainable().parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        task.train_mode()
        task.epoch_begin(2, 240)
        task.train_step((x, y), 2, optimizer)                    # warm-up: the optimiser's state
        counts[fold] = count_ops(lambda: task.train_step((x, y), 2, optimizer))[0]
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teachers", nargs="+", default=["resnet32x4"] * 3)
    parser.add_argument("--student", default="vgg8")
    parser.add_argument("--methods", default="AVERAGE_LOSS,CAMKD,AEKD")
    parser.add_argument("--size", type=int, default=5000, help="synthetic CIFAR-100-shaped training images")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=4, help="baseline DataLoader workers")
    parser.add_argument("--skip_reference", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the profiler's table of 3 steps per row")
    parser.add_argument("--cuda_graphs", default="off,capture",
                        help="our step's --cuda_graphs modes, one row each (off, capture, compile, static)")
    parser.add_argument("--count-ops", action="store_true",
                        help="instead of timing: print the aten operators of one step of ours per method "
                             "(CPU), teachers' BatchNorm unfolded and folded (benchmarks/op_count.py)")
    args = parser.parse_args(argv)
    if args.count_ops:
        print(f"aten operators of one step (CPU, torch {torch.__version__}): {len(args.teachers)} teachers "
              f"{'/'.join(sorted(set(args.teachers)))} -> {args.student}, --distill inter, batch {args.batch_size}")
        rows = []
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            counts = count_step_ops(method, args, args.classes)
            rows.append((method, counts[False], counts[True]))
            print(f"{method:14s} unfolded {counts[False]:6d}  folded {counts[True]:6d}  "
                  f"({counts[False] - counts[True]} fewer)")
        return rows
    device = torch.device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    modes = [m.strip() for m in args.cuda_graphs.split(",") if m.strip()]
    bad = [m for m in modes if m not in cuda_graphs.MODES]
    if bad:
        parser.error(f"--cuda_graphs: unknown mode(s) {', '.join(bad)}; expected {', '.join(cuda_graphs.MODES)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {len(args.teachers)} teachers "
          f"{'/'.join(sorted(set(args.teachers)))} -> {args.student}, "
          f"--distill inter, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")
    rows = []
    for method in methods:
        ref, ref_mem = (float("nan"), float("nan")) if args.skip_reference else \
            run_reference(method, args, device, args.classes)
        for mode in modes:
            ours, ours_mem = run_ours(method, args, device, args.classes, mode)
            rows.append((method, mode, ours, ref, ours_mem, ref_mem))
    print(f"{'method':14s} {'cuda_graphs':>11s} {'ours img/s':>11s} {'reference img/s':>16s} {'ratio':>7s} "
          f"{'ours MiB':>9s} {'ref MiB':>8s}")
    for method, mode, ours, ref, om, rm in rows:
        print(f"{method:14s} {mode:>11s} {ours:11.0f} {ref:16.0f} {ours / ref:7.2f} {om:9.0f} {rm:8.0f}")
    for mode in modes:
        rates = {m: o for m, md, o, *_ in rows if md == mode}
        if "AEKD" in rates and "AVERAGE_LOSS" in rates:
            print(f"ours ({mode}): AEKD step time / AVERAGE_LOSS step time = "
                  f"{rates['AVERAGE_LOSS'] / rates['AEKD']:.2f}")
    return rows


if __name__ == "__main__":
    main()
