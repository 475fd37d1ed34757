#!/usr/bin/env python
"""Benchmark of a cine loop through predict.py's path: frames per second.

    python benchmarks/bench_cine.py --model saved_model --frames 48 --repeat 2 --json bench_cine.json

Writes a synthetic loop (a phantom whose lesion moves, ``--width`` x ``--height``,
JPEG baseline YBR_FULL_422 as ultrasound machines export it, with an ultrasound
region and a cm calibration) into a temporary folder, then measures on this machine:
  - decoding the whole loop (pydicom + pylibjpeg, to RGB);
  - the model alone, frame by frame, on the region (``detect_frames``);
  - the whole run of ``busdet.batch.run_batch`` (read, every frame, key-frame PNG,
    annotated MP4, both tables), as ``predict.py --frames all`` does it;
and prints them as frames per second. The temporary folder is deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pydicom.uid import JPEGBaseline8Bit  # noqa: E402

from busdet import batch  # noqa: E402
from busdet.dicom import read_dicom  # noqa: E402
from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, write_dicom  # noqa: E402
from busdet.inference import load_detector, timed_detect  # noqa: E402
from busdet.results import detect_frames, frame_numbers  # noqa: E402
from bench_predict import report  # noqa: E402  (beside this file)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("saved_model"), help="SavedModel folder")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path, default=Path("label_map.pbtxt"))
    parser.add_argument("--frames", type=int, default=48, help="frames in the loop (default: %(default)s)")
    parser.add_argument("--width", type=int, default=640, help="frame width (default: %(default)s)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measure (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def write_loop(path: Path, count: int, width: int, height: int) -> None:
    """The loop with a region 20 px inside the frame, 0.01 cm per pixel."""
    frames, _ = moving_lesion_frames(seed=3, count=count, step=2, width=width, height=height)
    region = (20, 20, width - 20, height - 20)
    write_dicom(path, phantom_dicom(frames, "YBR_FULL_422", JPEGBaseline8Bit, region=region, cm_per_pixel=0.01))


def best_seconds(run, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``run()``, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(args: argparse.Namespace, folder: Path) -> dict:
    loop = folder / "input" / "loop.dcm"
    write_loop(loop, args.frames, args.width, args.height)
    detector = load_detector(args.model, args.label_map)
    scan = read_dicom(loop)
    timed_detect(detector, scan.frame(1))  # warm-up: graph tracing
    numbers = frame_numbers(scan.frame_count)
    decode = best_seconds(lambda: read_dicom(loop), args.repeat)
    model = best_seconds(lambda: detect_frames(detector, scan, numbers), args.repeat)

    def whole_run():
        plan = batch.plan_batch(loop.parent, folder / "output", overwrite=True)
        batch.run_batch(detector, plan, detector.score_threshold)

    run = best_seconds(whole_run, args.repeat)
    frames = scan.frame_count
    return {
        "model": str(args.model), "frames": frames, "frame_size": [args.height, args.width],
        "region_size": [args.height - 40, args.width - 40], "loop_file_mb": round(loop.stat().st_size / 1e6, 2),
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "repeat": args.repeat,
        "decode_frames_per_s": round(frames / decode, 1),
        "model_frames_per_s": round(frames / model, 2),
        "predict_frames_per_s": round(frames / run, 2),
        "predict_seconds": round(run, 2),
        "mp4_mb": round((folder / "output" / "loop.dcm.mp4").stat().st_size / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
    }


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_cine_") as scratch:
        figures = measure(args, Path(scratch))
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
