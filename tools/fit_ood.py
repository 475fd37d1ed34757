#!/usr/bin/env python
"""Fit the in-distribution check on an exported model's training images, choose its threshold, measure it.

    python tools/fit_ood.py --model saved_model --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --write

Each --data is NAME=FOLDER with its split in data/NAME_split.csv (as in tools/train.py).
Runs the model (ONNX Runtime when current) on every train, val and test image
(features cached in --cache, keyed by the SavedModel's digest, so a rerun is quick),
fits one mean per dataset and a shared covariance on train, chooses the threshold so
that at most 1% of each dataset's val images are flagged, and measures the fraction
flagged on val, test, the sample pictures of installed packages and generated photo,
document and colour-Doppler images (busdet.ood_samples). Prints the figures as JSON;
with --write stores saved_model/ood_stats.npz and the "ood" record of model_info.json,
where predict.py and the page read them. Run it after every export
(tools/export_model.py; tools/measure_model.py --fit-ood runs it too): a new
export has no statistics (predict.py and the page then warn that only the colour
and flat-image tests run), and statistics fitted on another SavedModel are refused.
Exit status: 0 done, 2 bad arguments, model or dataset, 130 interrupted.
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
from busdet.files import json_text  # noqa: E402
from busdet.inference import ModelLoadError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_model_arguments(parser, ROOT)
    parser.add_argument("--cache", type=Path, default=ROOT / "work" / "ood_features",
                        help="feature cache (git-ignored; cut from dataset images: never commit it)")
    parser.add_argument("--write", action="store_true",
                        help="store the statistics beside the model and record them in its model_info.json")
    return parser


def main(args: argparse.Namespace) -> int:
    from busdet.ood_fit import fit_model

    try:
        record = fit_model(args.model, args.label, parse_split_datasets(args.data, args.splits), args.cache,
                           args.write, lambda items: tqdm(items, desc="features", unit="image", file=sys.stderr))
    except (ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json_text(record), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
