#!/usr/bin/env python
"""Make the int8 version of a model's model.onnx, score it against the float file on each test split.

    python tools/quantize_model.py --model saved_model --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --write
    python predict.py --runtime onnx-int8 input/ output/          # then served by model_int8.onnx

Each --data is NAME=FOLDER with its split in data/NAME_split.csv (as in tools/train.py).
Quantizes model.onnx (busdet.quantization: static QDQ, per channel, the backbone and
FPN only, calibrated on --calibration training images of each dataset), runs the float
and the int8 file in turn on every test image of each dataset and prints, per dataset,
lesion AP50, mAP50, malignancy AUC and lesion recall of both at the model's operating
threshold, the drops and whether the rule holds (lesion AP50 and mAP50 drop by at most
0.01 on every split), and how much the int8 features move the in-distribution distance. With
--write (only when the rule holds, unless --force) the file goes to the model folder as
model_int8.onnx, recorded in model_info.json ("onnx_int8"), and the in-distribution check is
fitted on its own features as tools/fit_ood.py does on the float file's (every train, val and
test image again, through the int8 file: ood_stats_int8.npz, "onnx_int8"'s "ood"). predict.py,
the page and the DICOM node serve it with --runtime onnx-int8, and with the default --runtime
auto where the CPU has VNNI or AMX and it passed the rule and has those statistics
(busdet.inference.find_int8_auto_problem). Speed: benchmarks/bench_predict.py. A new export
drops the int8 file: run this again after every export.
Exit status: 0 measured (and written), 1 the rule does not hold (nothing written),
2 bad arguments, model or dataset, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tqdm import tqdm  # noqa: E402

from busdet.cli import add_split_model_arguments, run_command, say  # noqa: E402
from busdet.datasets import parse_split_datasets  # noqa: E402
from busdet.files import json_text  # noqa: E402
from busdet.inference import ONNX_FILE, ModelLoadError, load_detector  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_model_arguments(parser, ROOT)
    parser.add_argument("--calibration", type=int, default=32,
                        help="training images of each dataset to calibrate on (default: %(default)s)")
    parser.add_argument("--write", action="store_true",
                        help="store model_int8.onnx in the model folder and record it in model_info.json")
    parser.add_argument("--force", action="store_true", help="with --write: store it even if the rule fails")
    parser.add_argument("--cache", type=Path, default=ROOT / "work" / "ood_features",
                        help="with --write: the int8 file's feature cache, as tools/fit_ood.py's "
                             "(git-ignored; cut from dataset images: never commit it)")
    return parser


def main(args: argparse.Namespace) -> int:
    from busdet.ood_fit import fit_model
    from busdet.quantization import (MAX_DROP, calibration_images, install_int8, measure_int8,
                                     quantize_onnx)

    try:
        datasets = parse_split_datasets(args.data, args.splits)
        detector = load_detector(args.model, args.label, runtime="onnx")
        calibration = calibration_images(datasets, list(detector.classes.values()), args.calibration)
    except (ValueError, ModelLoadError) as error:
        say(f"error: {error}")
        return 2
    with tempfile.TemporaryDirectory(prefix="busdet-int8-") as scratch:
        int8_path = quantize_onnx(args.model / ONNX_FILE, Path(scratch) / "model_int8.onnx", calibration)
        figures = measure_int8(detector, int8_path, datasets)
        record = {"quantization": "static QDQ, int8 weights per channel, uint8 activations, min-max; "
                                  "backbone and FPN convolutions only",
                  "calibration": {spec.name: f"{args.calibration} train images" for spec in datasets},
                  "rule": f"lesion AP50 and mAP50 drop <= {MAX_DROP} on every test split", "test": figures}
        if args.write and (figures["passes"] or args.force):
            install_int8(args.model, int8_path, record)
            try:  # without them auto keeps to model.onnx: the float file's statistics misjudge int8 features
                record["ood"] = fit_model(args.model, args.label, datasets, args.cache, write=True, int8=True,
                                          progress=lambda items: tqdm(items, desc="int8 features", unit="image",
                                                                      file=sys.stderr))
            except (ValueError, ModelLoadError) as error:
                say(f"error: the int8 file is written, its in-distribution statistics are not: {error}")
                return 2
    print(json_text(record), end="")
    if not figures["passes"]:
        say("the int8 model fails the rule" + ("" if args.force or not args.write else "; nothing written"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
