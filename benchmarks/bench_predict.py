#!/usr/bin/env python
"""Benchmark of the batch prediction path: latency, folder throughput, memory, per runtime.

    python benchmarks/bench_predict.py --model saved_model --images DIR --repeat 3 --json bench.json
    python benchmarks/bench_predict.py --runtime onnx      # one runtime only (default: both)

Measures, on the machine it runs on, for each runtime (``--runtime both``: TensorFlow
and ONNX Runtime, each in a fresh process of its own, then their ratio):
  - model load time (``load_detector``, the runtime's import included);
  - warm end-to-end latency per image, one image at a time without overlap:
    read + detect + draw + write of the annotated copy (median and p90), and the
    model's share of it;
  - folder throughput in images/s through ``busdet.batch.run_batch``, the function
    ``predict.py`` runs (reading and writing overlap with inference there);
  - peak resident memory of the process (``ru_maxrss``).
With ``both``, the network time is measured once more with the two runtimes loaded
in one process and called in turn on each image (``network_ms_*_interleaved``), so
that the load of a shared machine weighs on both alike.

``--images`` is read recursively; files named ``*_mask*`` are left out, so a BUSI
class folder can be given as it is. Without ``--images``, BUSI-sized synthetic
phantoms are generated into a temporary folder. Outputs go to a temporary folder
that is deleted afterwards; the images are only read. Targets (issue 4): median
latency <= 300 ms, throughput >= 4 images/s, peak memory <= 2 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from busdet import batch  # noqa: E402
from busdet.downloads import annotated_image  # noqa: E402
from busdet.images import read_image, write_image  # noqa: E402
from busdet.inference import RUNTIMES, load_detector, timed_detect  # noqa: E402
from busdet.results import analyse_image  # noqa: E402
from busdet.phantoms import generate_phantom, phantom_filename  # noqa: E402

COMPARED = ("tensorflow", "onnx")
RATIO_FIGURES = ("model_load_s", "end_to_end_ms_median", "end_to_end_ms_p90", "model_ms_median", "model_ms_min",
                 "model_ms_p90", "folder_images_per_s_median", "folder_images_per_s_best", "peak_rss_mb",
                 "network_ms_median_interleaved", "network_ms_min_interleaved")
SHARED_FIGURES = ("images", "repeat", "load_average_1min")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("saved_model"), help="SavedModel folder")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path, default=Path("label_map.pbtxt"))
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images (default: generate BUSI-sized phantoms)")
    parser.add_argument("--limit", type=int, default=20, help="images to use (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the images (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--runtime", choices=[*RUNTIMES, "both"], default="both",
                        help="what runs the model (see predict.py --runtime); both: TensorFlow and ONNX "
                             "Runtime in one run, with their ratio (default: %(default)s)")
    return parser


def write_phantoms(folder: Path, count: int) -> None:
    """BUSI-like frames (450-1000 px wide) with 0-2 lesions, as PNG."""
    labels = ["benign", "malignant", "normal"]
    for index in range(count):
        label = labels[index % 3]
        write_image(folder / phantom_filename(label, index), generate_phantom(index, label).image)


def select_plan(images_dir: Path, output_dir: Path, limit: int) -> batch.BatchPlan:
    plan = batch.plan_batch(images_dir, output_dir, recursive=True, overwrite=True)
    chosen = [path for path in plan.images if "_mask" not in path.name][:limit]
    return dataclasses.replace(plan, images=chosen, skipped=[])


def end_to_end_latencies(detector, plan: batch.BatchPlan, repeat: int):
    """Seconds per image for read + detect + draw + write (the per-image function of the page
    and the CLI, then the drawing), and for detect alone."""
    total, model = [], []
    for _ in range(repeat):
        for relative in plan.images:
            start = time.perf_counter()
            result, scan = analyse_image(detector, relative.as_posix(),
                                         functools.partial(read_image, plan.input_dir / relative),
                                         detector.score_threshold)
            write_image(plan.output_path(relative), annotated_image(result, scan), overwrite=True)
            total.append(time.perf_counter() - start)
            model.append(result.seconds)
    return np.array(total), np.array(model)


def folder_throughputs(detector, plan: batch.BatchPlan, repeat: int):
    rates = []
    for _ in range(repeat):
        result = batch.run_batch(detector, plan, detector.score_threshold)
        rates.append(len(result.results) / result.elapsed)
    return np.array(rates)


def measure(args: argparse.Namespace, images_dir: Path, output_dir: Path) -> dict:
    start = time.perf_counter()
    detector = load_detector(args.model, args.label_map, args.runtime)
    load_seconds = time.perf_counter() - start
    plan = select_plan(images_dir, output_dir, args.limit)
    if not plan.images:
        raise SystemExit(f"error: {images_dir}: no images found")
    timed_detect(detector, read_image(plan.input_dir / plan.images[0]))  # warm-up: graph tracing
    total, model = end_to_end_latencies(detector, plan, args.repeat)
    rates = folder_throughputs(detector, plan, args.repeat)
    sizes = [read_image(plan.input_dir / p).shape[:2] for p in plan.images]
    return {
        "model": str(args.model), "runtime": detector.runtime, "input_size": list(detector.input_size),
        "images": len(plan.images),
        "median_image_size": [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))],
        "repeat": args.repeat, "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "model_load_s": round(load_seconds, 2),
        "end_to_end_ms_median": round(float(np.median(total)) * 1000, 1),
        "end_to_end_ms_p90": round(float(np.percentile(total, 90)) * 1000, 1),
        "model_ms_median": round(float(np.median(model)) * 1000, 1),
        "model_ms_min": round(float(np.min(model)) * 1000, 1),
        "model_ms_p90": round(float(np.percentile(model, 90)) * 1000, 1),
        "folder_images_per_s_median": round(float(np.median(rates)), 2),
        "folder_images_per_s_best": round(float(rates.max()), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
    }


def measure_in_own_process(args: argparse.Namespace, runtime: str, images_dir: Path, scratch: Path) -> dict:
    """:func:`measure` for one runtime in a fresh interpreter (cold load, its own peak memory)."""
    figures_path = scratch / f"{runtime}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--runtime", runtime, "--model", str(args.model),
               "--label", str(args.label_map), "--images", str(images_dir), "--limit", str(args.limit),
               "--repeat", str(args.repeat), "--json", str(figures_path)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(figures_path.read_text())


def interleaved_network_ms(args: argparse.Namespace, images_dir: Path, output_dir: Path) -> dict:
    """Network ms of both runtimes loaded in this process, called in turn on every image."""
    detectors = {runtime: load_detector(args.model, args.label_map, runtime) for runtime in COMPARED}
    plan = select_plan(images_dir, output_dir, args.limit)
    images = [read_image(plan.input_dir / relative) for relative in plan.images]
    seconds = {runtime: [] for runtime in COMPARED}
    for detector in detectors.values():
        timed_detect(detector, images[0])  # warm-up
    for _ in range(args.repeat):
        for image in images:
            for runtime, detector in detectors.items():
                seconds[runtime].append(timed_detect(detector, image)[1])
    return {runtime: {"network_ms_median_interleaved": round(float(np.median(s)) * 1000, 1),
                      "network_ms_min_interleaved": round(float(np.min(s)) * 1000, 1)}
            for runtime, s in seconds.items()}


def compare_runtimes(args: argparse.Namespace, images_dir: Path, scratch: Path) -> dict:
    """``{runtime: figures}`` for TensorFlow and ONNX Runtime, plus ``"ratio"`` (TensorFlow / ONNX
    Runtime for times and memory, ONNX Runtime / TensorFlow for images/s: above 1 is ONNX's gain)."""
    figures = {runtime: measure_in_own_process(args, runtime, images_dir, scratch) for runtime in COMPARED}
    for runtime, extra in interleaved_network_ms(args, images_dir, scratch / "output").items():
        figures[runtime].update(extra)
    tensorflow, onnx = (figures[runtime] for runtime in COMPARED)
    figures["ratio"] = {name: round(onnx[name] / tensorflow[name] if name.startswith("folder_images")
                                    else tensorflow[name] / onnx[name], 2)
                        for name in onnx if isinstance(onnx[name], (int, float)) and name in RATIO_FIGURES}
    return figures


def print_table(figures: dict) -> None:
    """One row per figure, one column per runtime (and the ratio)."""
    columns = list(figures)
    rows = [name for name in figures[columns[0]] if name in RATIO_FIGURES or name in SHARED_FIGURES]
    width = max(map(len, rows))
    print(f"{'':<{width}}  " + "  ".join(f"{column:>12}" for column in columns))
    for name in rows:
        cells = [str(figures[column].get(name, "")) for column in columns]
        print(f"{name:<{width}}  " + "  ".join(f"{cell:>12}" for cell in cells))


def image_folder(args: argparse.Namespace, scratch: Path) -> Path:
    """``--images``, or ``--limit`` phantoms written into ``scratch/images``."""
    if args.images is not None:
        return args.images
    write_phantoms(scratch / "images", args.limit)
    return scratch / "images"


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as scratch:
        images_dir = image_folder(args, Path(scratch))
        if args.runtime == "both":
            figures = compare_runtimes(args, images_dir, Path(scratch))
            print_table(figures)
        else:
            figures = measure(args, images_dir, Path(scratch) / "output")
            print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def print_figures(figures: dict) -> None:
    """Prints one run's figures, one per line."""
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
