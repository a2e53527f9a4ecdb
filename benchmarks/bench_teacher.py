"""Images per second of a teacher's training step: train_teacher.py's step against a plain PyTorch
CIFAR loop, side by side in one process, on the same device, model and data.

(a) ours: what ``train_teacher.py`` runs -- ``ClassifierTask.train_step`` on the device-resident
    loader (uint8 data on the device, batched crop/flip there), mixed precision and channels_last
    on CUDA, one row per ``--cuda_graphs`` mode (default ``off,capture``; off CUDA, capture falls
    back to the eager step and prints why);
(b) the plain PyTorch CIFAR loop: a DataLoader whose workers augment one image at a time, fp32,
    cross-entropy, SGD, and ``.item()`` on the loss and accuracy every step.

    python benchmarks/bench_teacher.py --device cuda                 # resnet32x4, batch 64
    python benchmarks/bench_teacher.py --model resnet8 --size 256 --steps 2 --classes 10
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import dataset  # noqa: E402
from bench_data import NumpyCifar  # noqa: E402
from bench_common import peak_memory_mb, reset_peak, sync  # noqa: E402
import train_teacher  # noqa: E402
from helper import cuda_graphs  # noqa: E402
from helper.execution import autocast_context  # noqa: E402
from helper.task import ClassifierTask  # noqa: E402
from models import model_dict  # noqa: E402


def build(args, device, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model_dict[args.model](num_classes=args.classes).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def loaders(args, device):
    return dataset.build_loaders("synthetic", batch_size=args.batch_size, device=device, seed=0,
                                 synthetic_train=args.size, synthetic_test=64, synthetic_classes=args.classes,
                                 drop_last=True)


def timed(steps_iter, args, device):
    """Run ``args.warmup`` untimed then ``args.steps`` timed steps; each item of ``steps_iter``
    does one step and returns its batch size. Returns images per second."""
    done, start, images = 0, None, 0
    while done < args.warmup + args.steps:
        for n in steps_iter():
            if done == args.warmup:
                sync(device)
                start = time.perf_counter()
            done += 1
            images += n if done > args.warmup else 0
            if done == args.warmup + args.steps:
                break
    sync(device)
    return images / (time.perf_counter() - start)


def run_ours(args, device, graphs="off"):
    cuda = device.type == "cuda"
    model, optimizer = build(args, device, channels_last=cuda)
    task = ClassifierTask(model)
    config = train_teacher.parse_args(["--model", args.model, "--device", str(device), "--cuda_graphs", graphs])[0]
    step, optimizer = cuda_graphs.step_function(task, optimizer, config, log=print)
    train = loaders(args, device).train
    train.set_epoch(1)
    task.train_mode()
    reset_peak(device)

    def steps():
        for x, y in train:
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            step((x, y), 1, optimizer, None, autocast_context(str(device), config.amp))
            yield x.shape[0]
    return timed(steps, args, device), peak_memory_mb(device)


def run_plain(args, device):
    model, optimizer = build(args, device, channels_last=False)
    data = loaders(args, "cpu").train
    raw = data._images.index_select(0, data._source).cpu().numpy()       # the same uint8 images
    ds = NumpyCifar(raw, data.labels.numpy(), data.spec.mean, data.spec.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, pin_memory=device.type == "cuda")
    model.train()
    reset_peak(device)

    def steps():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()                                              # the per-step sync
            (logits.argmax(1) == y).float().mean().item()
            yield x.shape[0]
    return timed(steps, args, device), peak_memory_mb(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet32x4")
    parser.add_argument("--size", type=int, default=5000, help="synthetic CIFAR-100-shaped training images")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=4, help="plain loop's DataLoader workers")
    parser.add_argument("--cuda_graphs", default="off,capture",
                        help="our step's --cuda_graphs modes, one row each (off, capture, compile, static)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    modes = [m.strip() for m in args.cuda_graphs.split(",") if m.strip()]
    bad = [m for m in modes if m not in cuda_graphs.MODES]
    if bad:
        parser.error(f"--cuda_graphs: unknown mode(s) {', '.join(bad)}; expected {', '.join(cuda_graphs.MODES)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; teacher {args.model}, {args.classes} classes, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")
    plain, plain_mem = run_plain(args, device)
    rows = []
    for mode in modes:
        ours, ours_mem = run_ours(args, device, mode)
        rows.append((mode, ours, plain, ours_mem, plain_mem))
    print(f"{'cuda_graphs':>11s} {'ours img/s':>11s} {'plain img/s':>12s} {'ratio':>7s} {'ours MiB':>9s} "
          f"{'plain MiB':>10s}")
    for mode, ours, pl, om, pm in rows:
        print(f"{mode:>11s} {ours:11.0f} {pl:12.0f} {ours / pl:7.2f} {om:9.0f} {pm:10.0f}")
    return rows


if __name__ == "__main__":
    main()
