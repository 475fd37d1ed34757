#!/usr/bin/env python
"""Two exports of one model compared on the validation splits: metrics, paired bootstrap, network time.

    python benchmarks/compare_exports.py --baseline /tmp/v2_plain --candidate /tmp/v2_tta \\
        --data busi=../shared/busi/Dataset_BUSI_with_GT --data busbra=../shared/busbra/BUS-BRA --json out.json

Both models are served by ONNX Runtime (their ``model.onnx``) and called in turn on every
image of each dataset's ``--split`` (default ``val``: the split decisions are made on; the
test split is for reporting, by tools/measure_model.py). Per dataset it prints the
threshold-free metrics of both (:func:`busdet.evaluation.compute_evaluation`), their
difference (candidate - baseline), and a paired bootstrap of that difference: the images
drawn with replacement ``--bootstrap`` times, both models scored on the same draw (mean,
95% percentile interval, share of draws where the candidate is ahead). The network time
is the model's call per image (:func:`busdet.evaluation.measure.run_in_turn`: the network,
reading its boxes and features), as wall time and as the process's CPU time
(``time.process_time``: user + system of all its threads), which a machine shared with other
work distorts less; the two models alternate so that such load weighs on both alike.
The CPU's model and vector extensions (``/proc/cpuinfo``) are recorded with the figures.
Exit status: 0 measured, 2 bad arguments, model or dataset, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from busdet.cli import run_command  # noqa: E402
from busdet.datasets import parse_split_datasets  # noqa: E402
from busdet.evaluation import compute_evaluation  # noqa: E402
from busdet.evaluation.measure import annotated_splits, run_in_turn  # noqa: E402
from busdet.inference import ModelLoadError, available_cores, load_detector  # noqa: E402

MODELS = ("baseline", "candidate")
METRICS = ("AP50_lesion", "mAP50", "AP50_benign", "AP50_malignant", "mAP50_95", "AUC_malignant_image")
# Vector extensions worth naming beside a timing (the rest of the flags line says little about speed).
SIMD_PREFIXES = ("sse4", "avx", "fma", "amx", "f16c")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="exported model folder (with model.onnx)")
    parser.add_argument("--candidate", type=Path, required=True, help="the export compared with it")
    parser.add_argument("--data", required=True, action="append", metavar="NAME=FOLDER",
                        help="a dataset: its name and folder, split in --splits/NAME_split.csv (repeatable)")
    parser.add_argument("--splits", type=Path, default=ROOT / "data", help="folder of the NAME_split.csv files")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--split", default="val", help="which split of each dataset (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def describe_cpu() -> dict:
    """The CPU's model name and vector extensions, from ``/proc/cpuinfo``."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"model": platform.processor()}
    field = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in lines if ":" in line}
    flags = field.get("flags", "").split()
    return {"model": field.get("model name", ""), "simd_flags": [f for f in flags if f.startswith(SIMD_PREFIXES)],
            "amx": any(f.startswith("amx") for f in flags), "cores_used": available_cores()}


def headline(truth: dict, labels: dict, predictions: dict, classes: list) -> dict:
    metrics = compute_evaluation(truth, labels, predictions, classes=classes).metrics
    return {key: metrics[key] for key in METRICS}


def paired_bootstrap(truth: dict, labels: dict, predictions: dict, classes: list, draws: int, seed: int) -> dict:
    """Per metric: the candidate's lead over the baseline on ``draws`` resamples of the images (with
    replacement, the same images for both): its mean, 95% percentile interval and share above 0."""
    names = sorted(truth)
    rng = np.random.default_rng(seed)
    leads = {key: [] for key in METRICS}
    for _ in range(draws):
        drawn = [names[i] for i in rng.integers(0, len(names), len(names))]
        keys = [f"{n}#{name}" for n, name in enumerate(drawn)]  # a name drawn twice counts twice
        sample_truth = {key: truth[name] for key, name in zip(keys, drawn)}
        sample_labels = {key: labels[name] for key, name in zip(keys, drawn)}
        scored = {model: headline(sample_truth, sample_labels,
                                  {key: predictions[model][name] for key, name in zip(keys, drawn)}, classes)
                  for model in MODELS}
        for key in METRICS:
            lead = _number(scored["candidate"][key]) - _number(scored["baseline"][key])
            if not math.isnan(lead):
                leads[key].append(lead)
    return {key: {"mean": round(float(np.mean(values)), 4),
                  "ci95": [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)],
                  "share_above_0": round(float(np.mean(np.array(values) > 0)), 3), "draws": len(values)}
            for key, values in leads.items() if values}


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def time_figures(wall: list, cpu: list) -> dict:
    return {"wall_ms_median": round(float(np.median(wall)) * 1000, 1),
            "cpu_ms_median": round(float(np.median(cpu)) * 1000, 1),
            "cpu_ms_mean": round(float(np.mean(cpu)) * 1000, 1)}


def main(args: argparse.Namespace) -> int:
    try:
        datasets = parse_split_datasets(args.data, args.splits)
        detectors = {name: load_detector(path, args.label, runtime="onnx")
                     for name, path in zip(MODELS, (args.baseline, args.candidate))}
    except (ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = list(detectors["baseline"].classes.values())
    figures = {"split": args.split, "cpu": describe_cpu(), "load_average_1min_start": round(os.getloadavg()[0], 2),
               "models": {name: {"path": str(detector.model_dir), "flip_tta": detector.info.get("flip_tta", False)}
                          for name, detector in detectors.items()},
               "datasets": {}}
    wall, cpu = {name: [] for name in MODELS}, {name: [] for name in MODELS}
    for spec in datasets:
        try:
            members = annotated_splits(spec, classes, [args.split])[args.split]
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if not figures["datasets"]:  # the first image once per model first: session warm-up, not timed
            run_in_turn(detectors, members[:1])
        runs = run_in_turn(detectors, members)
        predictions = runs.predictions
        for name in MODELS:
            wall[name] += runs.wall[name]
            cpu[name] += runs.cpu[name]
        truth, labels = {i.filename: i.boxes for i in members}, {i.filename: i.label for i in members}
        scored = {name: headline(truth, labels, predictions[name], classes) for name in MODELS}
        figures["datasets"][spec.name] = {
            "images": len(members), **{name: {k: _round(v) for k, v in scored[name].items()} for name in MODELS},
            "difference": {key: _round(_number(scored["candidate"][key]) - _number(scored["baseline"][key]))
                           for key in METRICS},
            "paired_bootstrap": paired_bootstrap(truth, labels, predictions, classes, args.bootstrap, args.seed)}
    figures["network_time"] = {name: time_figures(wall[name], cpu[name]) for name in MODELS}
    figures["network_time"]["images"] = len(wall["baseline"])
    figures["network_time"]["candidate_over_baseline"] = {
        key: round(figures["network_time"]["candidate"][key] / figures["network_time"]["baseline"][key], 2)
        for key in ("wall_ms_median", "cpu_ms_median", "cpu_ms_mean")}
    figures["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(figures, indent=1) + "\n"
    print(text, end="")
    if args.json:
        args.json.write_text(text)
    return 0


def _round(value) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
