#!/usr/bin/env python
"""Measure the exported model on the committed split and store its operating point.

    python tools/measure_model.py --data ../shared/busi/Dataset_BUSI_with_GT --model saved_model \\
        --report report/ --write-model-info

Predicts the validation and test images, chooses the operating threshold on
validation (the highest one keeping class-agnostic lesion recall >= --target-recall),
writes a full evaluation report per split (report/val, report/test: keep it out of
git, its gallery shows dataset images) and prints the metrics as JSON. With
--write-model-info the threshold and the test metrics go into
saved_model/model_info.json, where predict.py and the app read their default.
Exit status: 0 done, 2 bad arguments, model or dataset, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tqdm import tqdm  # noqa: E402

from busdet.cli import run_command  # noqa: E402
from busdet.evaluation.metrics import DEFAULT_TARGET_RECALL  # noqa: E402
from busdet.files import json_text  # noqa: E402
from busdet.inference import ModelLoadError, load_detector  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="dataset folder, one sub-folder per class")
    parser.add_argument("--model", type=Path, default=ROOT / "saved_model", help="SavedModel folder")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "busi_split.csv", help="split CSV")
    parser.add_argument("--report", type=Path, default=ROOT / "report", help="report folder (default: report/)")
    parser.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                        help="lesion recall to keep on val (default: %(default)s)")
    parser.add_argument("--write-model-info", action="store_true",
                        help="store the threshold and test metrics in the model's model_info.json")
    return parser


def main(args: argparse.Namespace) -> int:
    from busdet.evaluation.measure import measure_model, store_operating_point  # loads TensorFlow

    try:
        detector = load_detector(args.model, args.label)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.data.is_dir() or not args.split.is_file():
        print(f"error: need the dataset folder {args.data} and the split {args.split}", file=sys.stderr)
        return 2
    try:
        summary = measure_model(detector, args.data, args.split, args.report, args.target_recall,
                                progress=lambda items: tqdm(items, desc="predict", unit="image", file=sys.stderr))
    except ValueError as error:  # a dataset without the expected layout, or a split that does not fit it
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json_text(summary), end="")
    if args.write_model_info:
        store_operating_point(args.model, summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
