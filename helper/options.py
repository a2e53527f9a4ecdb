"""Command-line flags shared by train_teacher.py and train_student.py, and their validation.

RepDistiller's flag names and defaults are kept (``--batch_size 64 --epochs 240
--learning_rate 0.05 --lr_decay_epochs 150,180,210 ...``) because that is what researchers type.
Every validation failure is one line that names the flag and what was expected.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

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
    """ASCII letters, digits and - _ . = ~, not starting with '.' (so never '..' or a hidden name).
    ASCII only: a non-ASCII digit such as '\u0663' would read as a number (``int`` takes it)."""
    return (bool(text) and text.isascii() and not text.startswith(".")
            and all(ch.isalnum() or ch in LABEL_CHARS for ch in text))


def label(text) -> str:
    """A name that becomes part of a folder name (--trial, --tag): no '/', no '..', no spaces."""
    text = str(text)
    if not is_label(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use ASCII letters, digits and {' '.join(LABEL_CHARS)} only, "
                                         f"not starting with '.' (it names a folder)")
    return text


# -- seeds -----------------------------------------------------------------------------------------
# A trial's seed is ``--seed`` + an offset that is distinct for every trial label: a trial number
# (0, 1, 2 ...: CA-MKD's and RepDistiller's trials) is its own offset, below 2**32; any other label
# is hashed into [2**32, 2**32 + 2**62), so it never meets a number and two labels meet with
# probability about 2**-62. With ``--seed`` below 2**32 every seed stays below 2**63, inside the
# range of ``torch.manual_seed`` and of the data loaders' generators.
SEED_LIMIT = 2 ** 32          # --seed and trial numbers lie in 0 .. SEED_LIMIT - 1
LABEL_OFFSET = 2 ** 32        # where the offsets of non-numeric trial labels begin
LABEL_HASH_BITS = 62


def seed_number(text) -> int:
    """--seed: an integer in 0 .. 2**32 - 1, written in ASCII digits."""
    text = str(text).strip()
    if not (text.isascii() and text.isdigit()) or int(text) >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_LIMIT - 1} in ASCII digits, "
                                         f"got {text!r}")
    return int(text)


def trial_problem(text: str):
    """Why ``text`` cannot be a trial label (None if it can): it must be a label (``is_label``), and
    a label that reads as a number must be the plain number: no sign, no leading zero ('03' and
    '3' would be one seed), at most 2**32 - 1."""
    if not is_label(text):
        return (f"use ASCII letters, digits and {' '.join(LABEL_CHARS)} only, not starting with '.' "
                f"(it names a folder)")
    number = text[1:] if text[:1] in "+-" else text
    if number.isdigit():
        if text != number:
            return "a trial number has no sign (trials are numbered from 0)"
        if len(text) > 1 and text.startswith("0"):
            return f"write the trial number without leading zeros ({int(text)}): each trial has its own seed"
        if int(text) >= SEED_LIMIT:
            return f"trial numbers go up to {SEED_LIMIT - 1} (a longer label needs a letter)"
    return None


def trial_label(text) -> str:
    """--trial: a label (``label``) whose seed no other label shares (``trial_problem``)."""
    text = str(text)
    problem = trial_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def trial_offset(trial: str) -> int:
    """A trial label's offset from --seed: the trial number itself, or, for any other label,
    2**32 + a 62-bit SHA-256 hash of it (see ``SEED_LIMIT``)."""
    trial = str(trial)
    if trial.isascii() and trial.isdigit():
        return int(trial)
    digest = hashlib.sha256(trial.encode("utf-8")).digest()
    return LABEL_OFFSET + (int.from_bytes(digest[:8], "big") >> (64 - LABEL_HASH_BITS))


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
    g.add_argument("--trial", *(["-t"] if short_trial else []), type=trial_label, default="0",
                   help="trial label (a number, or letters and digits); also selects the seed")
    g.add_argument("--seed", type=seed_number, default=0,
                   help="base seed (0 to 2**32 - 1); a trial's seed is seed + trial (a non-numeric trial "
                        "label: seed + a hash of it, never the seed of a trial number)")
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
    g.add_argument("--take_over_lock", action="store_true",
                   help="take over a run folder's lock that a run on another host left (a job stopped there "
                        "and moved here); never one that a live process holds on a file system with OS locks")
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
    """The seed of a trial: ``--seed`` + the trial's offset (``trial_offset``: the trial number, or
    a hash of a non-numeric label in a range of its own)."""
    return int(base_seed) + trial_offset(trial)


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
