#!/usr/bin/env python
"""Set training runs side by side on their validation metrics (issue 18's screen of what
helps the benign-vs-malignant decision): one Markdown row per run, each metric pooled and
per dataset, as the mean of the run's last --last evaluations, the first run being the
baseline the others are compared with.

    python tools/compare_runs.py --runs runs/v3_screen_base runs/v3_screen_copy_paste \\
        runs/v3_screen_boost3 runs/v3_screen_focal --datasets busi busbra

Compare runs that trained the same number of steps from the same start; validation
metrics only: test splits are for the model that ships, not for choosing it.
Exit status: 0 printed, 2 a folder without validation logs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet.cli import run_command  # noqa: E402
from busdet.training.curves import COMPARED_METRICS, comparison_rows  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, type=Path,
                        help="run folders (tools/train.py --model-dir); the first is the baseline")
    parser.add_argument("--datasets", nargs="*", default=[], help="dataset names whose own metrics to show too")
    parser.add_argument("--last", type=int, default=3, help="evaluations averaged per run (default: 3)")
    parser.add_argument("--metrics", nargs="+", default=list(COMPARED_METRICS), help="validation scalars to show")
    return parser


def main(args: argparse.Namespace) -> int:
    missing = [str(d) for d in args.runs if not (d / "validation").is_dir()]
    if missing:
        print(f"error: no validation logs (validation/) in {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.last < 1:
        print("error: --last must be at least 1", file=sys.stderr)
        return 2
    header, rows = comparison_rows(args.runs, args.datasets, args.last, args.metrics)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
