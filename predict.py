#!/usr/bin/env python
"""Find lesions in every image of a folder: annotated copies plus two tables.

    python predict.py                                   # input/ -> output/
    python predict.py --input scans --output results --recursive
    python predict.py --input scans --output results --resume        # continue a stopped run
    python predict.py --engine ray --ray-address auto                 # on a Ray cluster (docs/scaling.md)

For each image (png, jpg, jpeg, bmp, tif, tiff) the output folder gets a copy
under the same name, at the image's own size, with every box at or above the
threshold drawn (class name and score; benign blue, malignant orange) or a
"no lesion above threshold" mark. A DICOM file (.dcm, .dicom, or any file with
the DICM preamble) gets NAME.png; a cine loop (multi-frame DICOM) gets its most
suspicious frame as NAME.png and every frame run as NAME.mp4. The model runs on
the file's ultrasound region when it names one. The folder also gets:

  predictions.csv  one row per box (per frame of a loop):
                   filename,xmin,ymin,width,height,label,score,frame,width_mm,height_mm,
                   in_distribution
                   (pixels of the original image, as tools/mask_to_bbox.py writes them;
                   frame 1-based in a loop, else empty; mm when the DICOM is calibrated)
  images.csv       one row per file: size, number of boxes, top label and score,
                   status (ok or error), the error message, frames and key frame (loops),
                   in_distribution, ood_score and warning

in_distribution is False for an image that does not look like the breast ultrasound
the model was trained on (a photograph, a document, a colour Doppler frame, ...):
its boxes are still written, but warning says why they are not to be trusted, and
its annotated copy says so too (README: Images that are not breast ultrasound).

With --dicom-out DIR, every DICOM input also gets NAME.sr.dcm (a DICOM Structured
Report, TID 1500: one measurement group per box, referencing the source image)
and NAME.sc.dcm (the annotated key frame as a Secondary Capture, in a new series
of the source's study), ready to send to a PACS. Unlike every other output these
two carry the source's patient and study identifiers (a PACS files them by those).

Other files are passed over, each named on stderr; hidden files are ignored.
Apart from --dicom-out, nothing from a DICOM header but its geometry and frame count
reaches any output.
A file that cannot be used (unreadable, a multi-page TIFF, a DICOM without an image
or in another transfer syntax, ...) gets one stderr line and an error row, and the
run goes on. The input folder is never written to (links are resolved first),
and existing outputs are kept unless --overwrite is given. Two inputs that would
write one output (scan beside scan.png): the first listed keeps it, the other
gets an error row naming both; so does an input whose output name would pass the
file system's 255-byte limit (NAME.png of a 252-byte NAME, NAME.sr.dcm of a 250-byte
one). Only regular files are opened.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

# Keep TensorFlow's start-up chatter (CUDA probing on a CPU machine) off the terminal;
# real failures still raise exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from busdet import batch  # noqa: E402
from busdet import cli  # noqa: E402
from busdet.inference import (DEFAULT_SCORE_THRESHOLD, RUNTIMES, ModelLoadError, describe_runtime,  # noqa: E402
                              load_detector)

# The shipped model and label map beside this script, so that it runs from any working folder
# (--input and --output stay relative to the working folder).
HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "saved_model"
DEFAULT_LABEL_MAP = HERE / "label_map.pbtxt"

EPILOG = """exit status:
  0    every image was processed
  1    some images could not be read or written (their rows in images.csv say why),
       or a table could not be written
  2    bad arguments; missing, damaged or mismatched model or label map (or a model_info.json
       value of the wrong type); --runtime onnx with a missing or stale model.onnx; unsafe or
       read-only output folder; another run writing into --output; --resume over tables made
       with another model, threshold, runtime or --frames (nothing was done)
  130  interrupted with Ctrl-C (the tables hold the images finished so far)
  143  stopped by SIGTERM (kill, systemd, Docker, a batch scheduler): the same as Ctrl-C

predictions.csv and images.csv are saved every few seconds during the run, so even a
killed run (SIGKILL, power cut) leaves the rows of the images it finished, and Ctrl-C or
SIGTERM saves every one finished; --resume continues such a run. run.json beside them
records the model (digest, checkpoint), runtime, threshold and --frames that made them.
With --engine ray, exit status 1 also means the Ray run stopped (a node lost), and 2
that the cluster could not be joined.
"""


def score(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def frame_choice(text: str):
    """``--frames``: "all", "key" or a whole number N >= 1 (every Nth frame)."""
    if text in ("all", "key"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not all, key or a whole number >= 1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=Path("input"),
                        help="folder of images and DICOM files to read (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("output"),
                        help="folder for the annotated copies and the two tables; must not be inside "
                             "--input (default: %(default)s)")
    parser.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                        help="also write a DICOM Structured Report and an annotated Secondary Capture for every "
                             "DICOM input into DIR (mirroring --input); these carry the source's patient and "
                             "study identifiers; must not be inside --input")
    parser.add_argument("--recursive", action="store_true",
                        help="also read sub-folders, mirroring them in --output "
                             "(the filename column then holds the relative path)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs left by an earlier run (otherwise the run stops before starting)")
    parser.add_argument("--score-threshold", "--threshold", dest="score_threshold", type=score, default=None,
                        help="lowest score (0-1) of a box that is drawn and written (default: the model's "
                             f"operating point from its model_info.json, else {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--frames", type=frame_choice, default="all", metavar="all|key|N",
                        help="cine loops: run and write every frame (all), run every frame but write only the "
                             "most suspicious one (key), or run and write every Nth frame from the first "
                             "(default: %(default)s)")
    parser.add_argument("--width", type=int, default=640,
                        help="the model's input width in pixels (default: %(default)s). The size is fixed "
                             "when the model is exported; the model resizes every image to it, padding to "
                             "keep the aspect ratio, and boxes come back in the original image's pixels. "
                             "This only checks that the model is the one you expect")
    parser.add_argument("--height", type=int, default=640,
                        help="the model's input height in pixels (default: %(default)s), see --width")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="exported SavedModel folder (default: saved_model beside predict.py, %(default)s)")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path, default=DEFAULT_LABEL_MAP,
                        help="label map naming the classes; must match the classes recorded in the model's "
                             "model_info.json (default: label_map.pbtxt beside predict.py, %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="what runs the model: onnx (ONNX Runtime on --model's model.onnx, no TensorFlow), "
                             "onnx-int8 (its int8 version model_int8.onnx, made by tools/quantize_model.py), "
                             "tensorflow (the SavedModel), or auto: onnx when model.onnx is there and was made "
                             "from this SavedModel (onnx-int8 instead on a CPU with VNNI or AMX when the int8 "
                             "file kept the accuracy rule and has its own in-distribution statistics: README, "
                             "'Int8: how auto chooses'), else tensorflow (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an earlier run into the same --output: images with an ok row in its "
                             "tables are kept, the others (error rows and DICOM files too) are done again; "
                             "refused when its run.json names another model, runtime, threshold or --frames")
    parser.add_argument("--resume-anyway", action="store_true",
                        help="--resume even when the settings differ: the tables then mix the two runs' rows, "
                             "and run.json keeps the earlier settings under earlier_runs")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default); ray: a pool of model actors on Ray, the same "
                             "outputs (paths must be the same on every node; see docs/scaling.md)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="with --engine ray: 'auto' or ray://HOST:PORT joins a running cluster "
                             "(default: start a local Ray instance, no dashboard, no usage statistics)")
    return parser


def fail(message: str) -> int:
    cli.say(f"error: {message}")
    return 2


def main(args: argparse.Namespace) -> int:
    cli.configure_logging()
    args.resume = args.resume or args.resume_anyway
    if args.resume and args.overwrite:
        return fail("--resume keeps an earlier run's rows, --overwrite replaces them: give one")
    if args.ray_address is not None and args.engine != "ray":
        return fail("--ray-address needs --engine ray")
    try:
        with batch.output_lock(args.input, args.output):  # one run per output folder, until the tables are saved
            return run(args)
    except batch.BatchSetupError as error:
        return fail(str(error))


def run(args: argparse.Namespace) -> int:
    """Plans, loads the model, runs the batch and reports; the caller holds the output folder."""
    try:
        plan = batch.plan_batch(args.input, args.output, args.recursive, args.overwrite, args.resume,
                                args.dicom_out)
        start = time.perf_counter()
        detector = load_detector(args.model, args.label_map, args.runtime)
        load_seconds = time.perf_counter() - start
    except (batch.BatchSetupError, ModelLoadError) as error:
        return fail(str(error))
    if (args.height, args.width) != tuple(detector.input_size):
        height, width = detector.input_size
        return fail(f"--height {args.height} --width {args.width} do not match the model: {args.model} was "
                    f"exported for {height}x{width} (height x width); run with --height {height} --width {width}")
    threshold = detector.score_threshold if args.score_threshold is None else args.score_threshold
    try:
        plan = batch.with_settings(plan, batch.run_settings(detector, threshold, args.frames), args.resume_anyway)
    except batch.BatchSetupError as error:
        return fail(str(error))
    cli.say(f"{len(plan.images)} images in {args.input}, score threshold {threshold:g}")
    cli.say(f"runtime: {describe_runtime(detector)}")
    progress = functools.partial(tqdm, desc="predict", unit="img", file=sys.stderr)
    with logging_redirect_tqdm():
        if args.engine == "ray":
            from busdet import ray_engine  # only this engine imports Ray

            try:
                load = functools.partial(load_detector, args.model.resolve(), args.label_map.resolve(), args.runtime)
                result = ray_engine.run_batch(load, plan, threshold, args.ray_address, progress, frames=args.frames)
            except ray_engine.RayEngineError as error:
                cli.say(f"error: {error}")
                return error.status
        else:
            result = batch.run_batch(detector, plan, threshold, progress=progress, frames=args.frames)
    print(batch.format_summary(result, load_seconds), file=sys.stderr)
    if result.interrupted:
        return cli.TERMINATED if result.terminated else cli.INTERRUPTED
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(cli.run_command(main, get_args_parser()))
