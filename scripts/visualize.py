#!/usr/bin/env python3
"""Figures of "Logit Standardization in Knowledge Distillation" (Sun et al., CVPR 2024, Figures 3
to 5, its ``tools/visualizations`` notebooks) for any teacher/student checkpoints of this toolkit.

    python scripts/visualize.py logits --teacher T.pth --student S1.pth [S2.pth ...] [--stand] [--max-diff 3]
    python scripts/visualize.py tsne --model S.pth [--max_samples 2000]

``logits``: for each class ``c``, the mean logit vector of the teacher and of the student over the
samples of class ``c`` (``[C, C]``: rows are the true class, columns the logit index), and their
difference ``teacher - student`` drawn as a heatmap. With ``--stand`` each sample's logits are
Z-score standardized first (mean 0, unbiased std 1 over the classes, eps 1e-7 added to the std:
the paper's ``normalize``), so only the logits' shape is compared, not their scale. Several
students give one figure each on one shared colour scale, ``[-max_diff, max_diff]`` (default: the
largest absolute difference over all students). Next to each PNG the exact matrix drawn is written
as ``.npy``.

``tsne``: scikit-learn's t-SNE of the model's penultimate features (the pooled vector fed to its
classifier), coloured by class.

The data set and its options are the run's (``args.json`` next to the checkpoint, else the
checkpoint's ``dataset`` entry); ``--dataset``/``--data_folder`` override them. The test split by
default (``--split train`` reads the training images without augmentation). Needs matplotlib
(``pip install "mtkd[plot]"``). Every error is one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dataset import DataError, add_data_arguments, loaders_from_args  # noqa: E402
from helper.options import OneLineParser  # noqa: E402
from models.checkpoint import CheckpointError, load_model, read_state_dict  # noqa: E402

STAND_EPS = 1e-7


class VisualizeError(ValueError):
    """A one-line error for the user."""


# -- the math (pure functions, tested against hand computations) ----------------------------------
def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Z-score over the classes: ``(z - mean) / (std + 1e-7)``, unbiased std."""
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + STAND_EPS)


def class_mean_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      stand: bool = False) -> torch.Tensor:
    """``[C, C]``: row ``c`` is the mean (optionally standardized) logit vector of class ``c``'s
    samples; a class without samples is a row of NaN."""
    z = standardize(logits.double()) if stand else logits.double()
    sums = torch.zeros(num_classes, z.shape[1], dtype=torch.float64).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).double()[:, None]
    return sums / counts


# -- data and models ----------------------------------------------------------------------------
def run_args(path: str) -> dict:
    """The training run's arguments (``args.json`` beside the checkpoint), or {}."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
    if not os.path.exists(candidate):
        return {}
    try:
        with open(candidate) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise VisualizeError(f"{candidate}: cannot be read as JSON ({exc})") from None


def data_of(path: str, overrides: argparse.Namespace) -> argparse.Namespace:
    """The data flags of a checkpoint's run, with the command line's overrides."""
    args = run_args(path)
    _, meta = read_state_dict(path)
    if "dataset" not in args and isinstance(meta.get("dataset"), str):
        args["dataset"] = meta["dataset"]
    for key in ("dataset", "data_folder"):
        if getattr(overrides, key) is not None:
            args[key] = getattr(overrides, key)
    if "dataset" not in args:
        raise VisualizeError(f"checkpoint {path}: neither an args.json beside it nor its own entries say "
                             "which data set it was trained on; pass --dataset")
    # every data flag at the parser's default, then the run's values (an older args.json may lack
    # a data flag added since)
    defaults = vars(add_data_arguments(argparse.ArgumentParser()).parse_args([]))
    return argparse.Namespace(**{**defaults, **args})


def load_split(data: argparse.Namespace, split: str, device: str):
    loaders = loaders_from_args(data, batch_size=256, device=device, seed=0, views=("none",))
    loader = getattr(loaders, split)
    if loader is None:
        raise VisualizeError(f"--split {split}: the run's data ({data.dataset}) has no {split} split "
                             "(a validation split needs --val_split at training time)")
    return loaders.spec, loader


@torch.no_grad()
def outputs(model, loader):
    """(logits [N, C], penultimate features [N, D], labels [N]) on the CPU, in float32."""
    logits, feats, labels = [], [], []
    for batch in loader:
        f, z = model(batch[0], is_feat=True)
        logits.append(z.float().cpu())
        feats.append(f[-1].float().flatten(1).cpu())
        labels.append(batch[1].cpu())
    return torch.cat(logits), torch.cat(feats), torch.cat(labels)


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VisualizeError('the figures need matplotlib: pip install "mtkd[plot]"') from None
    return plt


def stem(path: str) -> str:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"{folder}_{os.path.splitext(os.path.basename(path))[0]}" if folder else os.path.basename(path)


def short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


# -- sub-commands -------------------------------------------------------------------------------
def cmd_logits(args) -> list:
    t_data = data_of(args.teacher, args)
    spec, loader = load_split(t_data, args.split, args.device)
    teacher = load_model(args.teacher, num_classes=spec.num_classes, device=args.device)
    t_logits, _, labels = outputs(teacher, loader)
    t_mean = class_mean_logits(t_logits, labels, spec.num_classes, args.stand)
    diffs = []
    for path in args.student:
        s_data = data_of(path, args)
        if s_data.dataset != t_data.dataset:
            raise VisualizeError(f"teacher {args.teacher} was trained on {t_data.dataset} but student {path} "
                                 f"on {s_data.dataset}; compare a pair on one data set")
        student = load_model(path, num_classes=spec.num_classes, device=args.device)
        s_logits, _, s_labels = outputs(student, loader)
        diffs.append((path, t_mean - class_mean_logits(s_logits, s_labels, spec.num_classes, args.stand)))
    bound = args.max_diff if args.max_diff is not None else \
        max(float(np.nanmax(np.abs(d.numpy()))) for _, d in diffs) or 1.0
    plt = pyplot()
    os.makedirs(args.out, exist_ok=True)
    written = []
    kind = "standardized" if args.stand else "raw"
    for path, diff in diffs:
        name = os.path.join(args.out, f"logits_{kind}_{stem(path)}")
        np.save(name + ".npy", diff.numpy())
        size = min(12.0, 3.5 + 0.08 * spec.num_classes)
        fig, ax = plt.subplots(figsize=(size + 1.2, size))
        im = ax.imshow(diff.numpy(), cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xlabel("logit (class index)")
        ax.set_ylabel("true class")
        ax.set_title(f"teacher - student class-mean logits ({kind}, {spec.name} {args.split})\n"
                     f"T: {short(stem(args.teacher))}\nS: {short(stem(path))}", fontsize=7)
        fig.tight_layout()
        fig.savefig(name + ".png", dpi=args.dpi)
        plt.close(fig)
        written += [name + ".png", name + ".npy"]
    return written


def cmd_tsne(args) -> list:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise VisualizeError("t-SNE needs scikit-learn: pip install scikit-learn") from None
    data = data_of(args.model, args)
    spec, loader = load_split(data, args.split, args.device)
    model = load_model(args.model, num_classes=spec.num_classes, device=args.device)
    _, feats, labels = outputs(model, loader)
    if args.max_samples:
        feats, labels = feats[:args.max_samples], labels[:args.max_samples]
    if feats.shape[0] < 5:
        raise VisualizeError(f"t-SNE needs at least 5 samples, the {args.split} split gives {feats.shape[0]}")
    perplexity = min(args.perplexity, (feats.shape[0] - 1) / 3)
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(
        feats.numpy().astype(np.float64))
    plt = pyplot()
    os.makedirs(args.out, exist_ok=True)
    name = os.path.join(args.out, f"tsne_{stem(args.model)}")
    np.save(name + ".npy", points)
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("tab10" if spec.num_classes <= 10 else "nipy_spectral")
    ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap=cmap, s=4,
               vmin=0, vmax=max(spec.num_classes - 1, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of penultimate features ({spec.name} {args.split})\n{short(stem(args.model))}", fontsize=8)
    fig.tight_layout()
    fig.savefig(name + ".png", dpi=args.dpi)
    plt.close(fig)
    return [name + ".png", name + ".npy"]


def build_parser():
    parser = OneLineParser(prog="visualize.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="{logits,tsne}", parser_class=OneLineParser)

    def common(p):
        p.add_argument("--split", choices=("test", "train", "val"), default="test")
        p.add_argument("--dataset", default=None, help="override the run's data set")
        p.add_argument("--data_folder", default=None, help="override the run's data folder")
        p.add_argument("--out", default="figures", help="output folder (default: %(default)s)")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--dpi", type=int, default=120)

    p = sub.add_parser("logits", help="heatmap of teacher - student class-mean logits")
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True, nargs="+")
    p.add_argument("--stand", action="store_true", help="Z-score standardize each sample's logits first")
    p.add_argument("--max-diff", "--max_diff", dest="max_diff", type=float, default=None,
                   help="colour scale [-x, x] shared by all students (default: the largest |difference|)")
    common(p)
    p = sub.add_parser("tsne", help="t-SNE of a model's penultimate features")
    p.add_argument("--model", required=True)
    p.add_argument("--max_samples", type=int, default=0, help="use the first N samples of the split (0: all)")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("expected a sub-command: logits or tsne")
    if args.command == "logits" and args.max_diff is not None and not args.max_diff > 0:
        parser.error(f"--max-diff must be positive, got {args.max_diff}")
    try:
        written = {"logits": cmd_logits, "tsne": cmd_tsne}[args.command](args)
    except (VisualizeError, CheckpointError, DataError) as exc:
        print(f"visualize.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
