#!/usr/bin/env python
"""Benchmark of the batch prediction path: latency, folder throughput, memory, per runtime.

    python benchmarks/bench_predict.py --model saved_model --images DIR --repeat 3 --json bench.json
    python benchmarks/bench_predict.py --runtime onnx      # one runtime only (default: both)
    git show e92aaae:saved_model/model.onnx > before.onnx   # the graph with tf2onnx's NMS Loop
    python benchmarks/bench_predict.py --baseline-onnx before.onnx   # ... timed in turn with both

Measures, on the machine it runs on, for each runtime (``--runtime both``: TensorFlow
and ONNX Runtime, each in a fresh process of its own, then their ratio):
  - model load time (``load_detector``, the runtime's import included);
  - warm end-to-end latency per image, one image at a time without overlap:
    read + detect + draw + write of the annotated copy (median and p90), and each
    stage's median: decode (reading the file), network (the model's call, its NMS
    included), draw (the annotated copy), write (encoding and writing it); for ONNX
    Runtime also the NMS alone (the graph's ``busdet_nms/`` nodes, from ONNX Runtime's
    profiler on one more pass: TensorFlow's NMS cannot be timed apart);
  - folder throughput in images/s through ``busdet.batch.run_batch``, the function
    ``predict.py`` runs (reading and writing overlap with inference there);
  - peak resident memory of the process (``ru_maxrss``).
With ``both``, the network time is measured once more with the two runtimes loaded
in one process and called in turn on each image (``network_ms_*_interleaved``), so
that the load of a shared machine weighs on both alike, as wall time and as the
process's CPU time (``network_cpu_ms_*``: what a loaded machine distorts least);
``--baseline-onnx`` adds another ONNX file to that round (before/after a graph change).
A model with a current int8 file (``tools/quantize_model.py --write``) is measured a
third time as ``onnx-int8``, with its ratio to the float file (``ratio_int8``).

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
from busdet.inference import (RUNTIMES, find_int8_problem, load_detector, load_onnx_predict,  # noqa: E402
                              read_model_info, timed_detect)
from busdet.results import analyse_image  # noqa: E402
from busdet.phantoms import generate_phantom, phantom_filename  # noqa: E402

COMPARED = ("tensorflow", "onnx")
INT8 = "onnx-int8"
STAGES = ("decode", "network", "draw", "write")
RATIO_FIGURES = ("model_load_s", "end_to_end_ms_median", "end_to_end_ms_p90", "model_ms_median", "model_ms_min",
                 "model_ms_p90", *(f"{stage}_ms_median" for stage in STAGES), "nms_ms_median",
                 "folder_images_per_s_median", "folder_images_per_s_best", "peak_rss_mb",
                 "network_ms_median_interleaved", "network_ms_min_interleaved", "network_cpu_ms_median_interleaved")
# --baseline-onnx: another ONNX file (e.g. an earlier export) timed in turn with the two runtimes.
BASELINE = "onnx_baseline"
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
    parser.add_argument("--baseline-onnx", type=Path, action="append", default=[],
                        help="with --runtime both: also time this ONNX file's network in turn with the two "
                             "(e.g. the previous export: git show REV:saved_model/model.onnx > before.onnx); "
                             "repeatable: onnx_baseline, onnx_baseline_2, ...")
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


def stage_latencies(detector, plan: batch.BatchPlan, repeat: int) -> dict:
    """Seconds per image of each stage, one image at a time: ``{"decode", "network", "draw", "write",
    "total"}`` arrays. The network is the per-image function of the page and the CLI
    (:func:`busdet.results.analyse_image`, which times the model's call)."""
    seconds = {stage: [] for stage in (*STAGES, "total")}
    for _ in range(repeat):
        for relative in plan.images:
            start = time.perf_counter()
            image = read_image(plan.input_dir / relative)
            decoded = time.perf_counter()
            result, scan = analyse_image(detector, relative.as_posix(), lambda: image, detector.score_threshold)
            analysed = time.perf_counter()
            annotated = annotated_image(result, scan)
            drawn = time.perf_counter()
            write_image(plan.output_path(relative), annotated, overwrite=True)
            written = time.perf_counter()
            for stage, value in zip(("decode", "network", "draw", "write", "total"),
                                    (decoded - start, result.seconds, drawn - analysed, written - drawn,
                                     written - start)):
                seconds[stage].append(value)
    return {stage: np.array(values) for stage, values in seconds.items()}


def onnx_nms_ms(detector, images) -> float:
    """Median ms per image of the ONNX graph's NMS nodes (``busdet_nms/``), from ONNX Runtime's profiler."""
    import onnxruntime

    from busdet.inference import ONNX_FILE, build_session_options

    with tempfile.TemporaryDirectory(prefix="bench_profile_") as folder:
        options = build_session_options(onnxruntime)
        options.enable_profiling, options.profile_file_prefix = True, str(Path(folder) / "profile")
        session = onnxruntime.InferenceSession(str(detector.model_dir / ONNX_FILE), options,
                                               providers=["CPUExecutionProvider"])
        for image in images:
            session.run(None, {session.get_inputs()[0].name: image[np.newaxis]})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [event for event in events if event.get("name") == "model_run"]
    nms = [event for event in events if event.get("cat") == "Node" and event["name"].startswith("busdet_nms/")
           and event["name"].endswith("_kernel_time")]
    # The first run is a warm-up; the rest are split evenly.
    per_run = [sum(e["dur"] for e in nms if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]) for run in runs[1:]]
    return round(float(np.median(per_run)) / 1000, 2) if per_run else float("nan")


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
    stages = stage_latencies(detector, plan, args.repeat)
    total, model = stages["total"], stages["network"]
    rates = folder_throughputs(detector, plan, args.repeat)
    images = [read_image(plan.input_dir / p) for p in plan.images]
    sizes = [image.shape[:2] for image in images]
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    # After the peak memory: the profiling session is a second copy of the model.
    nms = {"nms_ms_median": onnx_nms_ms(detector, images[:1] + images)} if detector.runtime == "onnx" else {}
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
        **{f"{stage}_ms_median": round(float(np.median(stages[stage])) * 1000, 1) for stage in STAGES},
        **nms,
        "folder_images_per_s_median": round(float(np.median(rates)), 2),
        "folder_images_per_s_best": round(float(rates.max()), 2),
        "peak_rss_mb": peak_rss_mb,
    }


def measure_in_own_process(args: argparse.Namespace, runtime: str, images_dir: Path, scratch: Path) -> dict:
    """:func:`measure` for one runtime in a fresh interpreter (cold load, its own peak memory)."""
    figures_path = scratch / f"{runtime}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--runtime", runtime, "--model", str(args.model),
               "--label", str(args.label_map), "--images", str(images_dir), "--limit", str(args.limit),
               "--repeat", str(args.repeat), "--json", str(figures_path)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(figures_path.read_text())


def baseline_name(index: int) -> str:
    """The figures' name of the ``index``-th ``--baseline-onnx`` file."""
    return BASELINE if index == 0 else f"{BASELINE}_{index + 1}"


def interleaved_network_ms(args: argparse.Namespace, images_dir: Path, output_dir: Path) -> dict:
    """Network ms of both runtimes (and ``--baseline-onnx``) loaded in this process, called in turn
    on every image: wall time, and the process's CPU time (which a loaded machine distorts less)."""
    detectors = {runtime: load_detector(args.model, args.label_map, runtime) for runtime in compared_runtimes(args)}
    for index, path in enumerate(args.baseline_onnx):
        predict, session = load_onnx_predict(path)
        detectors[baseline_name(index)] = dataclasses.replace(detectors["onnx"], predict=predict, owner=session)
    plan = select_plan(images_dir, output_dir, args.limit)
    images = [read_image(plan.input_dir / relative) for relative in plan.images]
    seconds = {runtime: [] for runtime in detectors}
    cpu = {runtime: [] for runtime in detectors}
    for detector in detectors.values():
        timed_detect(detector, images[0])  # warm-up
    for _ in range(args.repeat):
        for image in images:
            for runtime, detector in detectors.items():
                started = time.process_time()
                seconds[runtime].append(timed_detect(detector, image)[1])
                cpu[runtime].append(time.process_time() - started)
    return {runtime: {"network_ms_median_interleaved": round(float(np.median(s)) * 1000, 1),
                      "network_ms_min_interleaved": round(float(np.min(s)) * 1000, 1),
                      "network_cpu_ms_median_interleaved": round(float(np.median(cpu[runtime])) * 1000, 1)}
            for runtime, s in seconds.items()}


def compared_runtimes(args: argparse.Namespace) -> tuple:
    """:data:`COMPARED`, and the int8 file when the model has a current one (tools/quantize_model.py)."""
    info = read_model_info(args.model)
    return COMPARED + ((INT8,) if find_int8_problem(args.model, info) is None else ())


def compare_runtimes(args: argparse.Namespace, images_dir: Path, scratch: Path) -> dict:
    """``{runtime: figures}`` for TensorFlow and ONNX Runtime, plus ``"ratio"`` (TensorFlow / ONNX
    Runtime for times and memory, ONNX Runtime / TensorFlow for images/s: above 1 is ONNX's gain);
    with an int8 file also its figures and ``"ratio_int8"`` (float ONNX / int8, the same way)."""
    figures = {runtime: measure_in_own_process(args, runtime, images_dir, scratch)
               for runtime in compared_runtimes(args)}
    for runtime, extra in interleaved_network_ms(args, images_dir, scratch / "output").items():
        figures.setdefault(runtime, {}).update(extra)
    tensorflow, onnx = (figures[runtime] for runtime in COMPARED)
    figures["ratio"] = ratios(tensorflow, onnx)
    for index in range(len(args.baseline_onnx)):
        figures[f"ratio_{baseline_name(index)}"] = ratios(figures[baseline_name(index)], onnx)
    if INT8 in figures:
        figures["ratio_int8"] = ratios(onnx, figures[INT8])
    return figures


def ratios(reference: dict, onnx: dict) -> dict:
    """``reference / onnx`` for times and memory, ``onnx / reference`` for images/s (above 1: ONNX's gain)."""
    return {name: round(onnx[name] / reference[name] if name.startswith("folder_images")
                        else reference[name] / onnx[name], 2)
            for name in onnx if isinstance(onnx[name], (int, float)) and name in RATIO_FIGURES
            and reference.get(name)}


def print_table(figures: dict) -> None:
    """One row per figure, one column per runtime (and the ratio)."""
    columns = list(figures)
    rows = list(dict.fromkeys(name for column in columns for name in figures[column]
                              if name in RATIO_FIGURES or name in SHARED_FIGURES))
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
