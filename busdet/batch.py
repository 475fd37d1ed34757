"""Batch prediction over a folder: the logic behind ``predict.py``.

    detector = load_detector("saved_model", "label_map.pbtxt")
    plan = plan_batch(Path("input"), Path("output"), recursive=False, overwrite=False)
    result = run_batch(detector, plan, detector.score_threshold)
    print(format_summary(result, load_seconds))

For every file with an image extension the output folder gets an annotated copy
under the same relative name, at the image's own resolution (boxes at or above
the threshold, or a "no lesion" mark), one row in ``images.csv`` and one row per
box in ``predictions.csv`` (geometry as ``tools/mask_to_bbox.py`` writes it).
A file that cannot be read gets an ``error`` row; the others are still done.
The tables hold every finished image at all times (rewritten atomically every few
seconds and at the end), so a killed run keeps the rows of the images it did.

Reading the next images and drawing/writing finished ones run in a small thread
pool while the calling thread runs the model, one image at a time and in order
(TensorFlow, OpenCV, Pillow's codecs and file I/O release the GIL, so the work
really overlaps; batching does not speed the network up on CPU).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd

from busdet.annotations import write_csv
from busdet.boxes import Box, above_threshold
from busdet.drawing import draw_boxes
from busdet.images import ImageReadError, is_image_file, read_image, write_image
from busdet.inference import Detector, timed_detect
from busdet.results import IMAGE_COLUMNS, image_row, predictions_table

log = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
IMAGES_CSV = "images.csv"
# Images decoded ahead of the model, and annotated copies waiting to be written:
# enough to keep the model busy, few enough to bound memory on large frames.
READ_AHEAD = 3
MAX_PENDING_WRITES = 4
# The tables are rewritten (atomically) at most this often during a run, so that a
# hard kill or a power cut loses only the last few seconds of rows.
TABLE_SAVE_SECONDS = 5.0


class BatchSetupError(ValueError):
    """The folders cannot be used as asked (checked before any work); the message says why."""


@dataclass(frozen=True)
class BatchPlan:
    """What a run will read and write, all decided before any work.

    ``images`` and ``skipped`` are paths relative to ``input_dir``.
    """

    input_dir: Path
    output_dir: Path
    images: List[Path]
    skipped: List[Path]
    overwrite: bool = False
    unsearched_folders: int = 0

    def output_path(self, relative: Path) -> Path:
        return self.output_dir / relative

    @property
    def tables(self) -> List[Path]:
        return [self.output_dir / PREDICTIONS_CSV, self.output_dir / IMAGES_CSV]


@dataclass
class ImageOutcome:
    """What became of one input image; ``boxes`` are those at or above the threshold."""

    filename: str
    width: Optional[int] = None
    height: Optional[int] = None
    boxes: List[Box] = field(default_factory=list)
    error: Optional[str] = None
    latency: Optional[float] = None  # seconds in the model


@dataclass
class BatchResult:
    """The finished (or interrupted) run, in input order."""

    plan: BatchPlan
    outcomes: List[ImageOutcome]
    elapsed: float
    interrupted: bool = False

    @property
    def failures(self) -> List[ImageOutcome]:
        return [o for o in self.outcomes if o.error]

    @property
    def box_count(self) -> int:
        return sum(len(o.boxes) for o in self.outcomes)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def list_inputs(input_dir: Path, recursive: bool = False) -> Tuple[List[Path], List[Path], int]:
    """Files under ``input_dir``, sorted, hidden files and folders left out.

    Returns:
      ``(images, others, folders)``: paths relative to ``input_dir`` with and without
      an image extension, and the number of sub-folders not searched (0 when recursive).
    """
    images, others, folders = [], [], 0
    for root, dirs, files in os.walk(input_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not recursive:
            folders, dirs[:] = len(dirs), []
        for name in sorted(files):
            relative = (Path(root) / name).relative_to(input_dir)
            if not _is_hidden(relative):
                (images if is_image_file(name) else others).append(relative)
    return images, others, folders


def check_output_location(input_dir: Path, output_dir: Path) -> None:
    """Refuses an output folder that is the input folder or inside it (inputs are never touched)."""
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise BatchSetupError(f"{output_dir}: output folder is inside the input folder {input_dir}; "
                              "choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise BatchSetupError(f"{output_dir}: exists and is not a folder")


def first_existing_output(plan: BatchPlan) -> Optional[Path]:
    """The first file the run would replace (tables first, then annotated copies), or None."""
    candidates = plan.tables + [plan.output_path(relative) for relative in plan.images]
    return next((path for path in candidates if path.exists()), None)


def plan_batch(input_dir: Path, output_dir: Path, recursive: bool = False, overwrite: bool = False) -> BatchPlan:
    """Lists the inputs and checks that the outputs are safe to write.

    Raises:
      BatchSetupError: the input is not a folder, the output is inside it, or an
        output file exists and ``overwrite`` is False.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise BatchSetupError(f"{input_dir}: input folder not found (expected a folder of images)")
    check_output_location(input_dir, output_dir)
    images, others, folders = list_inputs(input_dir, recursive)
    plan = BatchPlan(input_dir, output_dir, images, others, overwrite, folders)
    existing = None if overwrite else first_existing_output(plan)
    if existing is not None:
        raise BatchSetupError(f"{existing}: exists; use --overwrite to replace the outputs, "
                              "or choose another --output")
    return plan


def _reason(error: Exception, path: Path) -> str:
    """The error message without the leading file name (the CSV row names the file)."""
    message = str(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _draw_and_write(image: np.ndarray, boxes: List[Box], path: Path, overwrite: bool) -> None:
    write_image(path, draw_boxes(image, boxes), overwrite=overwrite)


def _fail(outcome: ImageOutcome, path: Path, reason: str) -> ImageOutcome:
    outcome.error = reason
    log.warning("%s: %s", path, reason)
    return outcome


def _predict_one(detector: Detector, plan: BatchPlan, relative: Path, read: Future,
                 score_threshold: float) -> Tuple[ImageOutcome, Optional[np.ndarray]]:
    """Waits for the decoded image and runs the model on it (in this thread)."""
    path = plan.input_dir / relative
    outcome = ImageOutcome(relative.as_posix())
    try:
        image = read.result()
    except ImageReadError as error:
        return _fail(outcome, path, _reason(error, path)), None
    outcome.height, outcome.width = image.shape[:2]
    try:
        boxes, outcome.latency = timed_detect(detector, image)
    except Exception as error:  # noqa: BLE001 - one image the model chokes on must not stop the folder
        return _fail(outcome, path, f"model failed ({type(error).__name__}: {error})"), None
    outcome.boxes = above_threshold(boxes, score_threshold)
    return outcome, image


def _collect_write(outcome: ImageOutcome, write: Future, plan: BatchPlan) -> Optional[ImageOutcome]:
    """The outcome once its annotated copy is written; None if the write never ran."""
    if write.cancelled() or not write.done():
        return None
    error = write.exception()
    if error is not None:
        path = plan.output_path(Path(outcome.filename))
        outcome.boxes = []
        return _fail(outcome, path, f"cannot write the annotated copy ({_reason(error, path)})")
    return outcome


def _identity(items):
    return items


def run_batch(detector: Detector, plan: BatchPlan, score_threshold: float,
              progress: Callable[[Iterable], Iterable] = _identity, workers: int = 2) -> BatchResult:
    """Annotates every image of ``plan`` and writes the two tables, even on Ctrl-C.

    Args:
      detector: a loaded (or, in tests, fake) :class:`busdet.inference.Detector`.
      score_threshold: boxes below it are neither drawn nor written.
      progress: wraps the image list, e.g. ``lambda items: tqdm(items, unit="img")``.
      workers: threads that read and write while the model runs.
    Returns:
      The outcomes of the images finished; ``interrupted`` is True after a
      KeyboardInterrupt, which is not re-raised (the tables are written first).
    """
    start = last_save = time.perf_counter()
    saved = False  # tables written by this run already (so they may be replaced)
    done: Dict[int, ImageOutcome] = {}
    writes: Dict[int, Tuple[ImageOutcome, Future]] = {}
    interrupted = False
    reads: Dict[int, Future] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="busdet-io")
    try:
        for index, relative in enumerate(progress(plan.images)):
            for ahead in range(index, min(index + READ_AHEAD + 1, len(plan.images))):
                if ahead not in reads:
                    reads[ahead] = pool.submit(read_image, plan.input_dir / plan.images[ahead])
            outcome, image = _predict_one(detector, plan, relative, reads.pop(index), score_threshold)
            if image is None:
                done[index] = outcome
            else:
                writes[index] = (outcome, pool.submit(_draw_and_write, image, outcome.boxes,
                                                      plan.output_path(relative), plan.overwrite))
            _finish_writes(writes, done, plan, keep_pending=MAX_PENDING_WRITES)
            if time.perf_counter() - last_save >= TABLE_SAVE_SECONDS:
                write_tables(_result_so_far(plan, done, start), replace=saved)
                saved, last_save = True, time.perf_counter()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Reads still queued are dropped; annotated copies already queued are
        # finished, so that their rows can be kept.
        for read in reads.values():
            read.cancel()
        pool.shutdown(wait=True)
        _finish_writes(writes, done, plan, keep_pending=0)
        result = _result_so_far(plan, done, start, interrupted)
        write_tables(result, replace=saved)
    return result


def _result_so_far(plan: BatchPlan, done: Dict[int, ImageOutcome], start: float,
                   interrupted: bool = False) -> BatchResult:
    return BatchResult(plan, [done[i] for i in sorted(done)], time.perf_counter() - start, interrupted)


def _finish_writes(writes: Dict[int, Tuple[ImageOutcome, Future]], done: Dict[int, ImageOutcome],
                   plan: BatchPlan, keep_pending: int) -> None:
    """Moves finished writes to ``done``, first waiting until at most ``keep_pending`` remain."""
    while len(writes) > keep_pending:
        pending = [future for _, future in writes.values() if not future.done()]
        if len(pending) <= keep_pending:
            break
        wait(pending, return_when=FIRST_COMPLETED)
    for index in [i for i, (_, future) in writes.items() if future.done()]:
        outcome, future = writes.pop(index)
        finished = _collect_write(outcome, future, plan)
        if finished is not None:
            done[index] = finished


def tables_from_outcomes(outcomes: List[ImageOutcome]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(predictions, images)`` frames in the ``predictions.csv`` / ``images.csv`` columns."""
    predictions = predictions_table((o.filename, o.boxes) for o in outcomes)
    images = pd.DataFrame([image_row(o.filename, o.width, o.height, o.boxes, o.error) for o in outcomes],
                          columns=IMAGE_COLUMNS)
    # Unreadable images have no size: keep the columns integer (not 512.0) with empty cells.
    for column in ["width", "height", "boxes"]:
        images[column] = images[column].astype("Int64")
    return predictions, images


def write_tables(result: BatchResult, replace: bool = False) -> None:
    """Writes ``predictions.csv`` and ``images.csv`` atomically into the output folder.

    ``replace``: the run itself wrote them before (an in-run save), so they may be replaced
    even without ``--overwrite``.
    """
    predictions, images = tables_from_outcomes(result.outcomes)
    predictions_path, images_path = result.plan.tables
    overwrite = result.plan.overwrite or replace
    write_csv(predictions, predictions_path, overwrite=overwrite)
    write_csv(images, images_path, overwrite=overwrite)


def format_summary(result: BatchResult, load_seconds: float) -> str:
    """The end-of-run report: load time, counts, median model latency, throughput."""
    plan, count = result.plan, len(result.outcomes)
    latencies = [o.latency for o in result.outcomes if o.latency is not None]
    median = f"{statistics.median(latencies) * 1000:.0f} ms" if latencies else "-"
    rate = count / result.elapsed if result.elapsed > 0 else 0.0
    lines = [
        f"model loaded in {load_seconds:.1f} s",
        f"{count} images processed, {len(result.failures)} failed, "
        f"{len(plan.skipped)} non-image files passed over",
        f"median inference {median}/image; {rate:.1f} images/s overall ({count} in {result.elapsed:.1f} s)",
        f"{result.box_count} boxes -> {plan.tables[0]}; one row per image -> {plan.tables[1]}",
    ]
    if plan.unsearched_folders:
        lines.append(f"{plan.unsearched_folders} sub-folders not searched (use --recursive)")
    if result.interrupted:
        lines.append(f"interrupted: {len(plan.images) - count} images not processed")
    return "\n".join(lines)
