"""Command-line flags shared by train_teacher.py and train_student.py, and their validation.

RepDistiller's flag names and defaults are kept (``--batch_size 64 --epochs 240
--learning_rate 0.05 --lr_decay_epochs 150,180,210 ...``) because that is what researchers type.
Every validation failure is one line that names the flag and what was expected.
"""
from __future__ import annotations

import argparse
import os
import sys
import zlib

import torch

from models import get_model_cfg


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(parser: argparse.ArgumentParser, message: str):
    parser.error(message)


# Numbers are validated by argparse ``type=`` functions defined on the ground floor (the losses'
# flags use them too); labels and folders are the scripts' own.
from distiller_zoo.argtypes import (finite_float, non_negative_float, non_negative_int,  # noqa: F401
                                    positive_float, positive_int, unit_interval_float)


LABEL_CHARS = "-_.=~"


def is_label(text: str) -> bool:
    """Letters, digits and - _ . = ~, not starting with '.' (so never '..' or a hidden name)."""
    return bool(text) and not text.startswith(".") and all(ch.isalnum() or ch in LABEL_CHARS for ch in text)


def label(text) -> str:
    """A name that becomes part of a folder name (--trial, --tag): no '/', no '..', no spaces."""
    text = str(text)
    if not is_label(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits and {' '.join(LABEL_CHARS)} only, "
                                         f"not starting with '.' (it names a folder)")
    return text


def optional_label(text) -> str:
    """``label``, or empty (--tag's default)."""
    return "" if text == "" else label(text)


def folder_path(text) -> str:
    """A folder that is, or can become, a directory: not empty, not an existing file."""
    text = str(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got an empty path")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, expected a folder")
    return text


def add_optimization_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("optimisation (RepDistiller defaults)")
    g.add_argument("--batch_size", type=positive_int, default=64)
    g.add_argument("--epochs", type=positive_int, default=240)
    g.add_argument("--learning_rate", type=positive_float, default=None,
                   help="default 0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 (RepDistiller)")
    g.add_argument("--lr_decay_epochs", type=str, default="150,180,210",
                   help="epochs after which the learning rate is multiplied by --lr_decay_rate")
    g.add_argument("--lr_decay_rate", type=positive_float, default=0.1)
    g.add_argument("--weight_decay", type=non_negative_float, default=5e-4)
    g.add_argument("--momentum", type=unit_interval_float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--cosine", action="store_true", help="cosine schedule instead of step decay")
    g.add_argument("--optimizer", type=str, default="sgd", choices=("sgd", "adamw"),
                   help="sgd (RepDistiller: every parameter decayed) or adamw (DeiT/tiny-transformers: "
                        "biases, norms, class tokens and position embeddings not decayed)")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=0,
                   help="linear warm-up from 0.001 x the learning rate over this many first epochs")
    g.add_argument("--min_lr", type=non_negative_float, default=0.0, help="the cosine schedule's floor (--cosine)")
    g.add_argument("--drop_path", type=unit_interval_float, default=0.0,
                   help="stochastic depth rate of the (student) vision transformer, e.g. 0.1")
    g.add_argument("--train_view", type=str, default="standard",
                   help="the training augmentation: standard (crop + flip) or strong (crop + flip + "
                        "RandAugment + Cutout, MLKD's strong view)")


def add_run_arguments(parser: argparse.ArgumentParser, short_trial: bool = False):
    """``short_trial``: ``-t`` for ``--trial`` too (RepDistiller's and CA-MKD's ``train_teacher.py``)."""
    g = parser.add_argument_group("run")
    g.add_argument("--trial", *(["-t"] if short_trial else []), type=label, default="0",
                   help="trial label; also selects the seed")
    g.add_argument("--seed", type=int, default=0, help="base seed; a trial's seed is seed + trial")
    g.add_argument("--device", type=str, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (bf16 where supported, else fp16 with a scaler); default on for CUDA")
    g.add_argument("--print_freq", "--print-freq", type=positive_int, default=100, help="steps between progress lines")
    g.add_argument("--save_freq", type=positive_int, default=40, help="also keep ckpt_epoch_<n>.pth every n epochs")
    g.add_argument("--save_dir", type=folder_path, default="./save", help="root of run folders and the teacher manifest")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in its folder from <model>_last.pth (the result-changing flags "
                        "must equal the saved ones; see the README)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a finished or interrupted run in the same folder (its files are deleted)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (reproducible on GPU, slower)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CUDA)")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (falls back with a message)")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes under torchrun")
    g.add_argument("--quiet", action="store_true", help="no per-step progress output")


def model_options(drop_path: float, name: str, imagenet: bool, img_size=None) -> dict:
    """Constructor options for ``name`` from ``--drop_path`` and an image size, checked against the
    options the model registered (the vision transformers take both; CNNs neither); a ValueError
    with a one-line message otherwise."""
    accepted = get_model_cfg(name, imagenet).options
    options = {}
    if drop_path:
        if "drop_path" not in accepted:
            raise ValueError(f"--drop_path {drop_path}: {name} has no drop path (the vision transformers do)")
        options["drop_path"] = drop_path
    if img_size is not None and "img_size" in accepted:
        options["img_size"] = img_size
    return options


def parse_decay_epochs(parser, text: str):
    try:
        epochs = [int(t) for t in str(text).split(",") if t.strip() != ""]
    except ValueError:
        fail(parser, f"--lr_decay_epochs expects comma-separated integers like 150,180,210, got {text!r}")
    if any(e < 0 for e in epochs) or epochs != sorted(epochs):
        fail(parser, f"--lr_decay_epochs must be non-negative and increasing, got {text!r}")
    return epochs


def trial_seed(base_seed: int, trial: str) -> int:
    """The seed of a trial: base + trial number, or base + a stable hash for non-numeric labels."""
    trial = str(trial)
    offset = int(trial) if trial.lstrip("-").isdigit() else zlib.crc32(trial.encode()) % 100_000
    return base_seed + offset


def resolve_device(parser, name) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        fail(parser, f"--device expects cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(parser, f"--device {name}: CUDA is not available on this machine")
    return str(device)


def resolve_common(parser, ns, default_lr: float, device=None) -> dict:
    """The shared flags checked and their derived values (``ns`` is not changed): the model's
    default learning rate, the decay milestones as integers, the device and what follows from it
    (``--amp``, ``--channels_last``), and the command line for the record. ``device``: the device
    asked for when it is not ``--device``'s (CA-MKD's ``--gpu_id``: ``helper.reference_flags``)."""
    if ns.resume and ns.overwrite:
        fail(parser, "--resume continues a run and --overwrite replaces it: give one of them")
    learning_rate = default_lr if ns.learning_rate is None else ns.learning_rate
    if ns.min_lr >= learning_rate:
        fail(parser, f"--min_lr must be below --learning_rate, got {ns.min_lr} >= {learning_rate}")
    device = resolve_device(parser, ns.device if device is None else device)
    cuda = device.startswith("cuda")
    return dict(learning_rate=learning_rate, lr_decay_epochs=parse_decay_epochs(parser, ns.lr_decay_epochs),
                device=device, amp=cuda if ns.amp is None else ns.amp,
                channels_last=cuda if ns.channels_last is None else ns.channels_last,
                command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
