#!/usr/bin/env python
"""Int8 against float ONNX: lesion AP50 and mAP50 on the BUSI and BUS-BRA test splits, and speed.

    python benchmarks/bench_int8.py --busi ../shared/busi/Dataset_BUSI_with_GT \\
        --busbra ../shared/busbra/BUS-BRA --json int8.json

Quantizes ``--model``'s ``model.onnx`` (:func:`busdet.quantization.quantize_onnx`,
calibrated on ``--calibration`` training images of each dataset) into ``--work``, then runs the
float and the int8 model in turn on every test image of each dataset, scores both
with :func:`busdet.evaluation.compute_evaluation`, and prints per dataset the
metrics, their drop and the median network time. The rule of issue 12: adopt int8
only if lesion AP50 and mAP50 each drop by at most 0.01 on both test splits.
Exit status: 0 measured, 2 bad arguments, model or dataset, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from busdet.annotations import annotate_dataset  # noqa: E402
from busdet.datasets import read_split_csv  # noqa: E402
from busdet.cli import run_command  # noqa: E402
from busdet.evaluation import compute_evaluation  # noqa: E402
from busdet.images import read_image  # noqa: E402
from busdet.inference import ONNX_FILE, ModelLoadError, load_detector, load_onnx_predict, timed_detect  # noqa: E402

MAX_DROP = 0.01
GATED = ("AP50_lesion", "mAP50")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "saved_model", help="SavedModel folder with model.onnx")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--busi", type=Path, required=True, help="BUSI folder (Dataset_BUSI_with_GT)")
    parser.add_argument("--busi-split", type=Path, default=ROOT / "data" / "busi_split.csv")
    parser.add_argument("--busbra", type=Path, default=None, help="BUS-BRA folder (optional)")
    parser.add_argument("--busbra-split", type=Path, default=ROOT / "data" / "busbra_split.csv")
    parser.add_argument("--calibration", type=int, default=32,
                        help="training images of each dataset to calibrate on")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "int8", help="where the int8 model goes")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def calibration_paths(images, split: dict, count: int):
    """``count`` training images spread evenly over the (sorted) training split, all classes."""
    train = sorted((i for i in images if split.get(i.filename) == "train"), key=lambda i: i.filename)
    step = max(1, len(train) // count)
    return [image.path for image in train[::step][:count]]


def split_truth(images, split: dict, name: str) -> tuple:
    """``(members, truth, labels)`` of the split ``name``: its images, their boxes and labels by file name."""
    members = [image for image in images if split.get(image.filename) == name]
    return members, {i.filename: i.boxes for i in members}, {i.filename: i.label for i in members}


def run_both(detectors: dict, members) -> tuple:
    """``({name: {filename: boxes}}, {name: [seconds]})``: each model in turn on every image."""
    predictions = {name: {} for name in detectors}
    seconds = {name: [] for name in detectors}
    for image in members:
        pixels = read_image(image.path)
        for name, detector in detectors.items():
            boxes, elapsed = timed_detect(detector, pixels)
            predictions[name][image.filename] = boxes
            seconds[name].append(elapsed)
    return predictions, seconds


def measure_dataset(detectors: dict, images, split: dict, classes: list, score_threshold: float) -> dict:
    members, truth, labels = split_truth(images, split, "test")
    predictions, seconds = run_both(detectors, members)
    figures = {"images": len(members)}
    for name in detectors:
        metrics = compute_evaluation(truth, labels, predictions[name], score_threshold, classes=classes).metrics
        figures[name] = {key: round(metrics[key], 4) for key in GATED}
        figures[name]["network_ms_median"] = round(float(np.median(seconds[name])) * 1000, 1)
    figures["drop"] = {key: round(figures["float"][key] - figures["int8"][key], 4) for key in GATED}
    return figures


def main(args: argparse.Namespace) -> int:
    from busdet.quantization import quantize_onnx

    try:
        float_detector = load_detector(args.model, args.label, runtime="onnx")
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = list(float_detector.classes.values())
    datasets = {"busi": (args.busi, args.busi_split), "busbra": (args.busbra, args.busbra_split)}
    datasets = {name: paths for name, paths in datasets.items() if paths[0] is not None}
    for folder, split_path in datasets.values():
        if not folder.is_dir() or not split_path.is_file():
            print(f"error: need the dataset folder {folder} and the split {split_path}", file=sys.stderr)
            return 2
    annotated = {name: annotate_dataset(folder, classes)[0] for name, (folder, _) in datasets.items()}
    splits = {name: read_split_csv(split_path) for name, (_, split_path) in datasets.items()}
    # Calibrated on every dataset given: ranges fitted on one centre's images clip the other's.
    calibration = [path for name in datasets
                   for path in calibration_paths(annotated[name], splits[name], args.calibration)]
    int8_path = quantize_onnx(args.model / ONNX_FILE, args.work / "model_int8.onnx", calibration)
    predict, session = load_onnx_predict(int8_path)
    detectors = {"float": float_detector, "int8": dataclasses.replace(float_detector, predict=predict, owner=session)}
    figures = {name: measure_dataset(detectors, annotated[name], splits[name], classes, float_detector.score_threshold)
               for name in datasets}
    figures["int8_mb"] = round(int8_path.stat().st_size / 1e6, 1)
    figures["adopt"] = all(drop <= MAX_DROP for name in datasets for drop in figures[name]["drop"].values())
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
