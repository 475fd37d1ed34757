#!/usr/bin/env python
"""Benchmark of the in-browser page against predict.py's runtime, on the same images in one run.

    python benchmarks/bench_web.py                      # 10 BUSI-sized phantoms, 3 passes
    python benchmarks/bench_web.py --images ../shared/busi/Dataset_BUSI_with_GT/benign --limit 10 --json web.json

Measures on this machine, passes of the two interleaved so that a busy machine weighs on both:
  - model load time: in headless Chromium, fetching ``model.onnx`` and creating the ONNX Runtime
    Web session (WebAssembly, threads when cross-origin isolated); in Python, ``load_detector(...,
    "onnx")`` as ``predict.py --runtime onnx`` does it (the onnxruntime import included);
  - model ms per image (median, min): ``session.run`` on the page, ``timed_detect`` in Python;
  - page ms per image over a whole batch (decode, model, drawing, tables), and the wall time of one
    ``predict.py --runtime onnx`` process over the folder (start-up, load, read, model, write);
  - the largest difference between the page's and Python's boxes (px) and scores.
It also prints the CPU's model, its SIMD flags, the core count and the load average. Needs
``web/node_modules`` (``make web`` or ``npm ci`` in web/) and Debian's chromium. Images are only
read; the site and outputs go to a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from bench_predict import image_folder, print_figures, select_plan  # noqa: E402  (beside this file)
from busdet import web  # noqa: E402
from busdet.images import read_image  # noqa: E402
from busdet.inference import load_detector, timed_detect  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni")
TIMEOUT_MS = 600_000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "saved_model", help="model folder with model.onnx")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images (default: generate BUSI-sized phantoms)")
    parser.add_argument("--limit", type=int, default=10, help="images to use (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the images (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def cpu_description() -> dict:
    """The CPU's model name, which SIMD flags it has, cores and the 1-minute load average."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", platform.processor()), "simd_flags": [f for f in SIMD_FLAGS if f in flags],
            "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}


class BrowserPage:
    """The built page in headless Chromium, loaded and ready."""

    def __init__(self, playwright, url: str):
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self.browser.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.goto(url)
        self.page.wait_for_selector("body[data-state=idle], body[data-state=failed]")
        if self.page.get_attribute("body", "data-state") != "idle":
            raise SystemExit(f"error: the page did not load its model: {self.page.text_content('#status-text')}")
        self.load_seconds = self.page.evaluate("() => window.busdet.modelLoadSeconds")
        self.threads = self.page.evaluate("() => window.busdet.threads")
        self.version = self.browser.version

    def run_batch(self, paths) -> tuple:
        """Opens the files as a user would; ``(wall seconds, [records])`` of this batch."""
        before = self.page.evaluate("() => window.busdet.page.records.length")
        start = time.perf_counter()
        self.page.set_input_files("#files", [str(p) for p in paths])
        self.page.wait_for_selector(f"body[data-state=idle][data-analysed='{before + len(paths)}']")
        wall = time.perf_counter() - start
        records = self.page.evaluate("(before) => window.busdet.page.records.slice(before)"
                                     ".map(({canvas, ...r}) => r)", before)
        return wall, records

    def close(self):
        self.browser.close()


def largest_differences(records, detector, images) -> dict:
    """Largest |page - Python| over boxes matched by rank (px) and scores, for boxes scoring >= 0.05."""
    box_px, score = 0.0, 0.0
    for record, image in zip(records, images):
        reference = [b for b in timed_detect(detector, image)[0] if b.score >= 0.05]
        for theirs, ours in zip(record["detections"], reference):
            box_px = max(box_px, *(abs(theirs[k] - getattr(ours, k)) for k in ("xmin", "ymin", "xmax", "ymax")))
            score = max(score, abs(theirs["score"] - ours.score))
    return {"largest_box_difference_px": round(box_px, 4), "largest_score_difference": float(f"{score:.2g}")}


def predict_py_seconds(args, images_dir: Path, output_dir: Path) -> float:
    command = [sys.executable, str(ROOT / "predict.py"), "--input", str(images_dir), "--output", str(output_dir),
               "--runtime", "onnx", "--model", str(args.model), "--label", str(args.label), "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(args, images_dir: Path, scratch: Path) -> dict:
    """The figures of the module doc for the first ``--limit`` images of ``images_dir``."""
    from playwright.sync_api import sync_playwright

    plan = select_plan(images_dir, scratch / "out", args.limit)
    selected = scratch / "selected"  # predict.py then runs on exactly these images (scratch copies)
    selected.mkdir()
    paths = [Path(shutil.copy2(plan.input_dir / relative, selected / f"{i:03d}_{relative.name}"))
             for i, relative in enumerate(plan.images)]
    images = [read_image(path) for path in paths]
    start = time.perf_counter()
    detector = load_detector(args.model, args.label, "onnx")
    python_load = time.perf_counter() - start
    site = web.build_site(scratch / "site", args.model, args.label)
    page_walls, page_model, python_model, predict_walls = [], [], [], []
    with web.serving(site) as url, sync_playwright() as playwright:
        page = BrowserPage(playwright, url)
        try:
            page.run_batch(paths[:1])  # warm-up, as in Python below
            timed_detect(detector, images[0])
            for _ in range(args.repeat):
                wall, records = page.run_batch(paths)
                page_walls.append(wall / len(paths))
                page_model += [r["seconds"] for r in records]
                python_model += [timed_detect(detector, image)[1] for image in images]
                predict_walls.append(predict_py_seconds(args, selected, scratch / "predict_out"))
        finally:
            page.close()
    ms = lambda seconds: round(float(seconds) * 1000, 1)  # noqa: E731
    return {
        **cpu_description(), "images": len(paths), "repeat": args.repeat,
        "median_image_size": [int(np.median([i.shape[0] for i in images])), int(np.median([i.shape[1] for i in images]))],
        "browser": f"Chromium {page.version} headless", "browser_threads": page.threads,
        "page_model_load_s": round(page.load_seconds, 2), "python_model_load_s": round(python_load, 2),
        "page_model_ms_median": ms(np.median(page_model)), "python_model_ms_median": ms(np.median(python_model)),
        "page_model_ms_min": ms(np.min(page_model)), "python_model_ms_min": ms(np.min(python_model)),
        "model_ms_ratio_page_to_python": round(float(np.median(page_model) / np.median(python_model)), 2),
        "page_batch_ms_per_image_median": ms(np.median(page_walls)),
        "predict_py_process_s_median": round(float(np.median(predict_walls)), 2),
        **largest_differences(records, detector, images),
    }


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_web_") as scratch:
        figures = measure(args, image_folder(args, Path(scratch)), Path(scratch))
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
