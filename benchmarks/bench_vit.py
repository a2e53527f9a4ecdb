"""Seconds per training step of a vision-transformer student, alone (from scratch) or distilled
from a CNN teacher at the data set's size with locality guidance (``--distill lg``), through the
toolkit's own student step (``helper.student_step.StudentTask``) and AdamW, on random CIFAR-shaped data.
Prints the step time and the epoch time it implies for CIFAR-100's 50,000 training images.

    python benchmarks/bench_vit.py --device cuda                                 # DeiT-Tiny at 224, batch 128
    python benchmarks/bench_vit.py --device cpu --batch 16 --steps 2 --warmup 1  # the CPU figure in README.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_student  # noqa: E402
from helper.schedule import build_optimizer  # noqa: E402
from helper.student_run import make_objective  # noqa: E402
from helper.student_step import StudentTask  # noqa: E402
from helper.teachers import TeacherEnsemble  # noqa: E402
from models import build_model, model_dict  # noqa: E402


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def scratch_step(model):
    """The student alone on its CE (no teacher forward), as a step function."""
    def step(batch, epoch, optimizer):
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def time_steps(step, optimizer, batch, steps, warmup, device):
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        step(batch, 2, optimizer)
    sync(device)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train_size", type=int, default=50_000)
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(a.batch, 3, 32, 32, generator=g).to(a.device),
             torch.randint(0, 100, (a.batch,), generator=g).to(a.device))
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'CPU'}, "
          f"{torch.get_num_threads()} threads), {a.model} at {a.img_size} px, batch {a.batch}")
    for distill in ("none", "lg"):
        argv = ["--model_s", a.model, "--student_img_size", str(a.img_size), "--device", a.device,
                "--optimizer", "adamw", "--learning_rate", "5e-4", "--weight_decay", "0.05", "--beta_delay_epochs",
                "0", "--no-amp"]
        argv += ["-a", "0", "-b", "0"] if distill == "none" else ["--distill", "lg", "-a", "0", "-b", "2.5"]
        config = train_student.parse_args(argv).shared
        torch.manual_seed(0)
        teachers = TeacherEnsemble([model_dict[a.teacher](num_classes=100)], [a.teacher]).to(a.device)
        student = build_model(a.model, 100, img_size=a.img_size).to(a.device)
        task = StudentTask(make_objective(config, student, teachers, 100, a.train_size, 32))
        task.train_mode()
        optimizer = build_optimizer(task.trainable(), config)
        # from scratch: the student and its CE alone, no teacher forward
        step = scratch_step(student) if distill == "none" else task.train_step
        sec = time_steps(step, optimizer, batch, a.steps, a.warmup, a.device)
        epoch = sec * a.train_size / a.batch
        print(f"{'from scratch' if distill == 'none' else '--distill lg (+ ' + a.teacher + ' at 32 px)'}: "
              f"{sec:.3f} s/step, {a.batch / sec:.1f} img/s, {epoch / 60:.1f} min per {a.train_size}-image epoch")


if __name__ == "__main__":
    main()
