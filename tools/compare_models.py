#!/usr/bin/env python
"""Two models' measurements side by side, for the model card: before, after and the change.

    python tools/compare_models.py --before docs/measurements/model_v2_busi_busbra.json \\
        --after docs/measurements/model_v3_busi_busbra.json --names v2 v3 --output /tmp/v2_v3.md

Reads two summaries written by tools/measure_model.py (its JSON output) and prints a
Markdown table: per split, set (each dataset, pooled, and on the test split each scanner)
and metric that both hold (lesion AP50, mAP50, malignant AP50, mAP@[.5:.95], malignancy
AUC, and at each model's own operating threshold lesion recall, precision and normal
images boxed), the two values and the change (after - before, of the values shown).
Summaries measured on different splits are refused: a dataset's split CSV has another
sha256 (where both record it; older summaries do not) or a set has other image or lesion
counts. --output also writes the table to a file (atomically).
Exit status: 0 printed, 2 a file missing, unreadable or not such a summary, different
splits, or nothing in common.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet.cli import run_command, say  # noqa: E402
from busdet.evaluation.compare import SPLITS, comparison_markdown, read_summary  # noqa: E402
from busdet.files import OutputError, atomic_write, check_output_file  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=Path, help="summary JSON of the model shipped so far")
    parser.add_argument("--after", required=True, type=Path, help="summary JSON of the new model")
    parser.add_argument("--names", nargs=2, default=["before", "after"], metavar=("BEFORE", "AFTER"),
                        help="column titles (default: before after)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=["test"],
                        help="splits to show, in this order (default: test)")
    parser.add_argument("--no-scanners", action="store_true", help="leave out the test split per scanner")
    parser.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        if args.output is not None:
            check_output_file(args.output)
        before, after = read_summary(args.before), read_summary(args.after)
        table = comparison_markdown(before, after, args.names, args.splits, not args.no_scanners)
    except (OutputError, ValueError) as error:  # SummaryError and SplitMismatchError are ValueErrors
        say(f"error: {error}")
        return 2
    print(table, end="")
    if args.output is not None:
        with atomic_write(args.output, "w") as stream:
            stream.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
