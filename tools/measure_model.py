#!/usr/bin/env python
"""Measure the exported model on the committed splits and store its operating point.

    python tools/measure_model.py --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --model saved_model --report report/ --write-model-info

Each --data is NAME=FOLDER with its split in data/NAME_split.csv (as in tools/train.py).
Predicts the validation and test images of every dataset, chooses the operating
threshold on validation (the highest one keeping class-agnostic lesion recall
>= --target-recall on each dataset's validation split; --threshold-rule pooled: on
the validation splits pooled, model v2's rule), writes a full evaluation report per
dataset and split (report/NAME/val, report/NAME/test, report/pooled/...: keep it out
of git, its gallery shows dataset images) and prints the metrics as JSON: per dataset,
pooled, and per scanner where the dataset names them (BUS-BRA's bus_data.csv), with each
split CSV's sha256 under "datasets" (split_sha256, checked by tools/compare_models.py). With
--write-model-info the threshold, the datasets and the metrics go into
saved_model/model_info.json, where predict.py and the app read them. --fit-ood then
fits the in-distribution check as tools/fit_ood.py does (its figures under "ood").
Exit status: 0 done, 2 bad arguments, model or dataset, 130 interrupted (143: SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tqdm import tqdm  # noqa: E402

from busdet.cli import add_split_model_arguments, run_command  # noqa: E402
from busdet.datasets import parse_split_datasets  # noqa: E402
from busdet.evaluation.metrics import DEFAULT_TARGET_RECALL  # noqa: E402
from busdet.files import json_text  # noqa: E402
from busdet.evaluation.measure import THRESHOLD_RULES, measure_model, store_operating_point  # noqa: E402
from busdet.inference import ModelLoadError, load_detector  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_model_arguments(parser, ROOT)
    parser.add_argument("--report", type=Path, default=ROOT / "report", help="report folder (default: report/)")
    parser.add_argument("--target-recall", type=float, default=DEFAULT_TARGET_RECALL,
                        help="lesion recall to keep on val (default: %(default)s)")
    parser.add_argument("--threshold-rule", choices=THRESHOLD_RULES, default="each",
                        help="each: the recall holds on every dataset's val; pooled: on the pooled val "
                             "(default: %(default)s)")
    parser.add_argument("--write-model-info", action="store_true",
                        help="store the threshold and test metrics in the model's model_info.json")
    parser.add_argument("--fit-ood", action="store_true",
                        help="then fit and measure the in-distribution check as tools/fit_ood.py does "
                             "(stored with --write-model-info; features cached in work/ood_features)")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        datasets = parse_split_datasets(args.data, args.splits)
        detector = load_detector(args.model, args.label, allow_int8=False)  # the float model's metrics
    except (ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = measure_model(detector, datasets, args.report, args.target_recall,
                                progress=lambda items: tqdm(items, desc="predict", unit="image", file=sys.stderr),
                                threshold_rule=args.threshold_rule)
    except ValueError as error:  # a dataset without the expected layout, or a split that does not fit it
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.write_model_info:
        store_operating_point(args.model, summary)
    if args.fit_ood:
        from busdet.ood_fit import fit_model

        try:
            summary["ood"] = fit_model(args.model, args.label, datasets, ROOT / "work" / "ood_features",
                                       args.write_model_info,
                                       lambda items: tqdm(items, desc="features", unit="image", file=sys.stderr))
        except (ValueError, ModelLoadError) as error:  # e.g. a model exported without image_features
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(json_text(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
