#!/usr/bin/env python
"""Plot training and validation curves of one or more training stages into a PNG.

    python tools/plot_training.py --runs runs/stage1_384 runs/stage2_640 --output docs/training_curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet.cli import run_command  # noqa: E402
from busdet.training.curves import write_training_curves  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="run folders (tools/train.py --model-dir)")
    parser.add_argument("--output", required=True, type=Path, help="PNG to write")
    return parser


def main(args: argparse.Namespace) -> int:
    missing = [str(d) for d in args.runs if not (d / "train").is_dir()]
    if missing:
        print(f"error: no TensorBoard logs (train/) in {', '.join(missing)}", file=sys.stderr)
        return 2
    write_training_curves(args.runs, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
