"""Collect run folders into comparisons people can trust.

A run folder (written by train_teacher.py or train_student.py) holds ``args.json``,
``metrics.jsonl`` and, once finished, ``summary.json``. Runs are grouped by configuration (every
resolved flag except those that only identify a trial or say where things go); each group reports
its number of finished trials and the mean and sample standard deviation of the last-epoch and
best-epoch test top-1. Runs without ``summary.json`` were interrupted: they are listed, never
averaged in. A run whose files are not what the toolkit writes (not JSON, a middle line of
``metrics.jsonl`` that is no epoch record, a figure that is not a finite number: the toolkit
writes non-finite floats as strings such as "nan") is skipped, naming the file and the key.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from .run_identity import NOT_RESULT

# Flags that identify a trial or a place, not a configuration: those that do not change a result
# (helper.runfolder's one list) and those that tell trials of one configuration apart. ``epochs``
# does change what a finished run reports, so runs of different lengths are never averaged, and a
# --tag marks runs the user wants kept apart.
NOT_CONFIG = (NOT_RESULT - {"epochs", "tag"}) | {
    "trial", "seed", "seed_used", "teacher_digests", "config_hash",
}


# Flags that only mean something for one data set (their defaults would show in every other row).
DATASET_FLAGS = {"synthetic_": "synthetic"}

# What the tables and plots read, and the type each must have (else the run is skipped).
SUMMARY_NUMBERS = ("last_acc", "best_acc", "last_acc_top5", "best_acc_top5", "best_val_acc", "epochs",
                   "last_epoch", "best_epoch", "train_seconds")
ARGS_STRINGS = ("model_s", "model", "ensemble_method", "distill", "loss")
NON_FINITE = {"nan", "inf", "-inf", "infinity", "-infinity"}     # how runlog.to_jsonable writes them


class CorruptRunFile(ValueError):
    """A run file that is not valid JSON (or JSON lines), or holds a value of the wrong type where
    a figure belongs: the run is skipped, the file named."""


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_problem(value) -> Optional[str]:
    if value is None or (is_number(value) and math.isfinite(value)):
        return None
    return f"is {value!r}, expected a finite number"


def metric_value(value):
    """A metrics.jsonl figure as a float for a plot: numbers, None and the toolkit's non-finite
    strings ("nan", "inf") are figures; anything else is None (``check_metrics`` refused it)."""
    if is_number(value):
        return float(value)
    if isinstance(value, str) and value.lower() in NON_FINITE:
        return float(value)
    return None


def check_summary(path: str, summary: Dict):
    for key in SUMMARY_NUMBERS:
        problem = _finite_problem(summary.get(key))
        if problem:
            raise CorruptRunFile(f"{path}: {key!r} {problem}")
    if not isinstance(summary.get("status", ""), str):
        raise CorruptRunFile(f"{path}: 'status' is {summary['status']!r}, expected a string")


def check_args(path: str, args: Dict):
    for key in ARGS_STRINGS:
        if key in args and not isinstance(args[key], str):
            raise CorruptRunFile(f"{path}: {key!r} is {args[key]!r}, expected a string")
    archs = args.get("teacher_archs")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CorruptRunFile(f"{path}: 'teacher_archs' is {archs!r}, expected a list of names")
    accs = args.get("teacher_acc")
    if accs is not None and not (isinstance(accs, list) and all(_finite_problem(a) is None for a in accs)):
        raise CorruptRunFile(f"{path}: 'teacher_acc' is {accs!r}, expected a list of finite numbers")
    problem = _finite_problem(args.get("ensemble_acc"))
    if problem:
        raise CorruptRunFile(f"{path}: 'ensemble_acc' {problem}")


def check_metrics(path: str, records: List[Dict]):
    for n, record in enumerate(records, start=1):
        epoch = record["epoch"]
        if not is_number(epoch) or not math.isfinite(epoch) or epoch != int(epoch):
            raise CorruptRunFile(f"{path} line {n}: 'epoch' is {epoch!r}, expected an integer")
        for key, value in record.items():
            if key != "epoch" and value is not None and metric_value(value) is None:
                raise CorruptRunFile(f"{path} line {n}: {key!r} is {value!r}, expected a number")


@dataclass
class Run:
    path: str
    args: Dict
    metrics: List[Dict]
    summary: Optional[Dict]

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.get("status") == "finished"

    @property
    def kind(self) -> str:
        return "student" if "model_s" in self.args else "teacher"

    def config(self) -> Dict:
        """The flags that define its configuration (a data set's own flags only for that data set)."""
        dataset = self.args.get("dataset")
        return {k: v for k, v in self.args.items() if k not in NOT_CONFIG
                and all(dataset == name for prefix, name in DATASET_FLAGS.items() if k.startswith(prefix))}


def _read_json(path):
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunFile(f"{path}: {exc}") from None
    if not isinstance(value, dict):
        raise CorruptRunFile(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_metrics(path):
    """One JSON object per line; a last line cut short by a kill is ignored (that epoch was not
    finished), a bad line anywhere else makes the file corrupt."""
    try:
        with open(path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptRunFile(f"{path}: {exc}") from None
    records = []
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("not an epoch record")
        except ValueError as exc:
            if n == len(lines):
                break
            raise CorruptRunFile(f"{path} line {n}: {exc}") from None
        records.append(record)
    return records


def find_runs(root: str, on_skip=None) -> List[Run]:
    """Every run folder under ``root`` (a folder with args.json), sorted by path. A run with a
    corrupt file is skipped: ``on_skip(folder, reason)`` hears about it (one line naming the file)."""
    if not os.path.isdir(root):
        raise ValueError(f"{root} is not a folder of runs")
    runs = []
    for folder, _, files in os.walk(root):
        if "args.json" not in files:
            continue
        try:
            metrics_path, summary_path, args_path = (os.path.join(folder, n) for n in
                                                     ("metrics.jsonl", "summary.json", "args.json"))
            metrics = _read_metrics(metrics_path) if "metrics.jsonl" in files else []
            check_metrics(metrics_path, metrics)
            summary = _read_json(summary_path) if "summary.json" in files else None
            if summary is not None:
                check_summary(summary_path, summary)
            args = _read_json(args_path)
            check_args(args_path, args)
            runs.append(Run(folder, args, metrics, summary))
        except CorruptRunFile as exc:
            if on_skip is not None:
                on_skip(folder, str(exc))
    return sorted(runs, key=lambda r: r.path)


def mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (n - 1); the deviation is None for a single value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _hashable(value):
    return json.dumps(value, sort_keys=True)


@dataclass
class Group:
    key: Dict
    runs: List[Run] = field(default_factory=list)

    @property
    def finished(self):
        return [r for r in self.runs if r.finished]

    @property
    def interrupted(self):
        return [r for r in self.runs if not r.finished]

    def stat(self, name):
        return mean_std([r.summary.get(name) for r in self.finished])

    def teacher_stat(self, name):
        vals = [r.args.get(name) for r in self.finished if r.args.get(name) is not None]
        if name == "teacher_acc":
            vals = [max(v) for v in vals if v]
        return mean_std(vals)


def group_runs(runs: Iterable[Run], group_by: Optional[Sequence[str]] = None) -> List[Group]:
    """One group per configuration; with ``group_by`` only those keys define a group."""
    groups: Dict[str, Group] = {}
    for run in runs:
        config = run.config()
        key = {k: run.args.get(k) for k in group_by} if group_by else config
        groups.setdefault(_hashable(key), Group(key)).runs.append(run)
    return list(groups.values())


def differing_keys(groups: Sequence[Group]) -> List[str]:
    keys = sorted({k for g in groups for k in g.key})
    return [k for k in keys if len({_hashable(g.key.get(k)) for g in groups}) > 1]


def _label(group: Group) -> Dict[str, str]:
    """The columns that name a configuration: student/teachers/method/distill, or model/loss."""
    a = group.runs[0].args
    if "model_s" in a:
        teachers = a.get("teacher_archs") or []
        return {"student": a["model_s"],
                "teachers": f"{len(teachers)}x " + "/".join(sorted(set(teachers))) if teachers else "",
                "method": a.get("ensemble_method", ""), "distill": a.get("distill", "")}
    return {"model": a.get("model", ""), "loss": a.get("loss", "ce")}


SHOWN_ELSEWHERE = {"model_s", "model", "teacher_archs", "ensemble_method", "distill", "teacher_num", "loss"}


def _fmt(mean, std):
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table_rows(groups: Sequence[Group]) -> (List[str], List[List[str]]):
    """Header and rows of one table (groups of one kind)."""
    extra = [k for k in differing_keys(groups) if k not in SHOWN_ELSEWHERE]
    students = "model_s" in groups[0].runs[0].args
    header = list(_label(groups[0])) + extra + ["trials", "last top-1", "best top-1"] \
        + (["best teacher", "teacher ensemble"] if students else []) + ["interrupted"]
    rows = []
    for g in groups:
        rows.append(list(_label(g).values())
                    + [str(g.key.get(k, "")) for k in extra]
                    + [str(len(g.finished)), _fmt(*g.stat("last_acc")), _fmt(*g.stat("best_acc"))]
                    + ([_fmt(*g.teacher_stat("teacher_acc")), _fmt(*g.teacher_stat("ensemble_acc"))] if students else [])
                    + [str(len(g.interrupted)) if g.interrupted else ""])
    return header, rows


def tables(runs: Sequence[Run], group_by: Optional[Sequence[str]] = None):
    """``[(kind, groups, header, rows)]``: students and teachers are tabulated apart, so that the
    columns of flags that differ are computed among comparable runs."""
    out = []
    for kind in ("student", "teacher"):
        groups = group_runs([r for r in runs if r.kind == kind], group_by)
        if groups:
            header, rows = table_rows(groups)
            out.append((kind, groups, header, rows))
    return out


def combined_csv(tabs) -> str:
    """One CSV for all tables: a ``kind`` column, and the union of their columns."""
    header = ["kind"]
    for _, _, h, _ in tabs:
        header += [c for c in h if c not in header]
    rows = []
    for kind, _, h, rs in tabs:
        for r in rs:
            cells = dict(zip(h, r))
            rows.append([kind] + [cells.get(c, "") for c in header[1:]])
    return csv_text(header, rows)


def markdown(header, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def csv_text(header, rows) -> str:
    import csv
    import io
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def plot_groups(groups: Sequence[Group], out_dir: str) -> List[str]:
    """Training curves per group (loss and test top-1 per epoch, a line per trial and the mean
    band) and, where logged, each teacher's mean ensemble weight per epoch. Returns the files."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError('--plot needs matplotlib: pip install "mtkd[plot]"') from None
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for n, g in enumerate(groups):
        label = _label(g)
        title = " ".join(v for v in label.values() if v)
        runs = [r for r in g.runs if r.metrics]
        if not runs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, name in ((axes[0], "train_loss", "training loss"), (axes[1], "test_acc", "test top-1 (%)")):
            series = []
            for r in runs:
                epochs = [m["epoch"] for m in r.metrics]
                values = [metric_value(m.get(key)) for m in r.metrics]
                ax.plot(epochs, values, alpha=0.5, linewidth=1,
                        label=f"trial {r.args.get('trial', '?')}" + ("" if r.finished else " (interrupted)"))
                series.append(dict(zip(epochs, values)))
            common = sorted(set.intersection(*(set(s) for s in series)))
            if len(series) > 1 and common:
                stats = [mean_std([s[e] for s in series]) for e in common]
                means = [m for m, _ in stats]
                spread = [s or 0.0 for _, s in stats]
                ax.plot(common, means, color="black", linewidth=2, label="mean")
                ax.fill_between(common, [m - s for m, s in zip(means, spread)],
                                [m + s for m, s in zip(means, spread)], color="gray", alpha=0.3)
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        path = os.path.join(out_dir, f"group{n:02d}_curves.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

        weight_keys = sorted({k for r in runs for m in r.metrics for k in m if k.startswith("weight_")})
        if weight_keys:
            fig, ax = plt.subplots(figsize=(6, 4))
            for key in weight_keys:
                per_epoch: Dict[int, List[float]] = {}
                for r in runs:
                    for m in r.metrics:
                        if metric_value(m.get(key)) is not None:
                            per_epoch.setdefault(m["epoch"], []).append(metric_value(m[key]))
                epochs = sorted(per_epoch)
                ax.plot(epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs], label=key[len("weight_"):])
            ax.set_xlabel("epoch")
            ax.set_ylabel("mean share of the ensemble weight")
            ax.set_title(title)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, f"group{n:02d}_weights.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written
