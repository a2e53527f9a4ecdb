"""Summarise run folders into a comparison table (and optional plots).

    python scripts/summarize.py save/                       # Markdown table on the terminal
    python scripts/summarize.py save/students --csv out.csv # also as CSV
    python scripts/summarize.py save/ --group-by model_s,distill --plot plots/

One row per configuration: the number of finished trials, mean ± standard deviation (n - 1) of
the last-epoch and best-epoch test top-1, the best teacher's and the teachers' ensemble accuracy.
Interrupted runs (no summary.json) are counted in their own column and never averaged in.
"best" is the epoch chosen on the validation set when the runs used --val_split, otherwise the
best test epoch (an optimistic figure: prefer "last" or --val_split when you report).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.options import OneLineParser  # noqa: E402
from helper.results import combined_csv, find_runs, markdown, plot_groups, tables  # noqa: E402


def main(argv=None):
    parser = OneLineParser(description="Summarise mtkd run folders.")
    parser.add_argument("root", help="a folder containing run folders (searched recursively)")
    parser.add_argument("--group-by", "--group_by", default=None,
                        help="comma-separated flags that define a group (default: every configuration flag)")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write training-curve PNGs here (matplotlib)")
    args = parser.parse_args(argv)
    def skipped(folder, reason):
        print(f"summarize.py: warning: skipping the run in {folder}: corrupt file {reason}", file=sys.stderr)
    try:
        runs = find_runs(args.root, on_skip=skipped)
    except ValueError as exc:
        parser.error(str(exc))
    if not runs:
        parser.error(f"no run folders (with args.json) under {args.root}")
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else None
    tabs = tables(runs, group_by)
    for kind, _, header, rows in tabs:
        if len(tabs) > 1:
            print(f"\n## {kind.capitalize()}s\n")
        print(markdown(header, rows))
    if args.csv:
        try:
            with open(args.csv, "w") as f:
                f.write(combined_csv(tabs))
        except OSError as exc:
            parser.error(f"--csv {args.csv}: {exc.strerror or exc}")
        print(f"wrote {args.csv}")
    if args.plot:
        try:
            for kind, groups, _, _ in tabs:
                for path in plot_groups(groups, os.path.join(args.plot, kind + "s")):
                    print(f"wrote {path}")
        except ValueError as exc:
            parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
