"""The Ray engine of ``predict.py``: the same batch run on a pool of model actors (Ray Data).

    python predict.py --engine ray                                  # a local Ray instance, all cores
    python predict.py --engine ray --ray-address auto               # join the cluster this node is in
    python predict.py --engine ray --ray-address ray://head:10001   # join one through Ray Client

    result = run_batch(partial(load_detector, model, label_map), plan, threshold, address=None)

The images of a :class:`busdet.batch.BatchPlan` become a Ray Dataset of
``(index, filename)`` rows; ``map_batches`` sends them to a pool of actors, one
per CPU of the cluster, each of which loads the model once and, per image, reads
it, runs :func:`busdet.results.analyse_image` (as the local engine and the page
do), and writes the annotated copy. The records come back to this process, which
writes ``predictions.csv`` and ``images.csv`` through :func:`busdet.batch.write_tables`
in input order, so both engines write the same tables for the same folder.

Every node reads ``--input`` and writes ``--output`` under the same paths (a shared
file system); the model and label map too. Ray never reports usage statistics
from here and starts no dashboard: ``RAY_USAGE_STATS_ENABLED=0`` is set before
Ray is imported and passed to every worker. Workers log no file names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before Ray is imported: nothing leaves the machine

import numpy as np  # noqa: E402
import ray  # noqa: E402

from busdet import batch  # noqa: E402
from busdet.cli import Terminated, signals_deferred  # noqa: E402
from busdet.scans import read_scan  # noqa: E402
from busdet.inference import Detector  # noqa: E402
from busdet.results import FrameChoice, ImageResult, analyse_image  # noqa: E402


# Environment of every Ray worker: no usage statistics, no TensorFlow start-up chatter.
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
CPUS_PER_ACTOR = 1
# Rows per block of the input dataset: small blocks spread a folder over every actor.
ROWS_PER_BLOCK = 4


class RayEngineError(RuntimeError):
    """The Ray run could not start or stopped; ``status`` is predict.py's exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Starts a local Ray instance (``address`` None) or joins a cluster (``auto``, ``ray://host:port``).

    No dashboard and no usage statistics are started here; an existing cluster's own
    settings are its operator's (see docs/scaling.md).

    Raises:
      RayEngineError: status 2, the cluster cannot be reached.
    """
    options = {"runtime_env": {"env_vars": WORKER_ENV}, "logging_level": logging.WARNING,
               "configure_logging": False}
    if address is None:
        options.update(num_cpus=num_cpus, include_dashboard=False)
    # ray.init installs its own SIGTERM handler (sys.exit, no tables): put busdet.cli's back, so that
    # SIGTERM saves the tables as Ctrl-C does; run_batch's ray.shutdown() then stops what Ray started.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayEngineError(f"--ray-address {address}: cannot join the Ray cluster ({error})", 2) from None
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Annotator:
    """One Ray actor: loads the model once, then annotates the images of each batch it gets.

    ``load`` (picklable, e.g. ``functools.partial(load_detector, model, label_map)``)
    runs on the worker, so the model folder must be at the same path on every node.
    """

    def __init__(self, load: Callable[[], Detector], plan: batch.BatchPlan, score_threshold: float,
                 frames: FrameChoice = "all"):
        self.detector = load()
        self.plan, self.score_threshold, self.frames = plan, score_threshold, frames

    def __call__(self, rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``{"index": int64 [n], "filename": bytes [n]}`` -> ``{"index", "record"}`` (pickled ImageResult).

        Names travel as the file system's bytes: Arrow strings must be valid UTF-8, file names need not be.
        """
        records = [pickle.dumps(self.annotate(os.fsdecode(name))) for name in rows["filename"]]
        return {"index": rows["index"], "record": np.array(records, dtype=object)}

    def annotate(self, filename: str) -> ImageResult:
        """Reads, detects and writes the annotated copy (and a loop's MP4) of one file, as the local engine does."""
        result, scan = analyse_image(self.detector, filename, lambda: read_scan(self.plan.input_dir / filename),
                                     self.score_threshold, self.frames)
        if scan is None:
            return result
        try:
            batch.draw_and_write(scan, result, self.plan, Path(filename), self.detector.info)
        except Exception as error:  # noqa: BLE001 - as locally: the image gets an error row, the run goes on
            return batch.write_failed(result, error)
        return result


def _identity(items, total=None):
    return items


def run_batch(load: Callable[[], Detector], plan: batch.BatchPlan, score_threshold: float,
              address: Optional[str] = None, progress: Callable[..., Iterable] = _identity,
              num_cpus: Optional[int] = None, frames: FrameChoice = "all") -> batch.BatchResult:
    """:func:`busdet.batch.run_batch` on Ray: same records, same files, same tables.

    Starts Ray (see :func:`start_ray`) unless this process is connected already, and
    stops what it started. ``progress(items, total=n)`` wraps the stream of finished images.

    Raises:
      RayEngineError: Ray cannot start, or the run stopped on a cluster failure (status 1;
        the tables hold the images finished, and ``--resume`` continues).
    """
    started = not ray.is_initialized()
    if started:
        start_ray(address, num_cpus)
    try:
        return _run(load, plan, score_threshold, progress, frames)
    finally:
        if started:
            ray.shutdown()


def _run(load, plan: batch.BatchPlan, score_threshold: float, progress, frames: FrameChoice) -> batch.BatchResult:
    start = last_save = time.perf_counter()
    save_every, saved = batch.TABLE_SAVE_SECONDS, False
    done: Dict[int, ImageResult] = batch.start_records(plan)
    interrupted, terminated, failure = False, False, None
    try:
        records = _annotate_all(load, plan, score_threshold, frames)
        for index, result in progress(records, total=len(plan.todo)):
            done[index] = batch.log_failure(result, plan)  # here, not on a worker
            if time.perf_counter() - last_save >= save_every:
                written, saved = time.perf_counter(), True
                batch.write_tables(batch.result_so_far(plan, done, start), replace=True)
                # A million rows take seconds to write: keep table saves to a tenth of the run.
                last_save = time.perf_counter()
                save_every = max(batch.TABLE_SAVE_SECONDS, 10 * (last_save - written))
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (busdet.cli.Terminated)
        interrupted, terminated = True, isinstance(stop, Terminated)
    except ray.exceptions.RayError as error:
        failure = error
    result = batch.result_so_far(plan, done, start, interrupted, terminated)
    with signals_deferred():  # a second Ctrl-C must not cut the last save short
        batch.write_tables(result, replace=saved)
    if failure is not None:
        # Ray's messages run to pages and carry terminal colours: the first line, plain.
        reason = re.sub(r"\x1b\[[0-9;]*m", "", (str(failure).strip().splitlines() or [""])[0])
        raise RayEngineError(f"the Ray run stopped ({type(failure).__name__}: {reason}); "
                             f"{len(result.results)} images are in the tables, --resume continues", 1)
    return result


def _annotate_all(load, plan: batch.BatchPlan, score_threshold: float, frames: FrameChoice) -> Iterator:
    """``(index, record)`` of every image of ``plan.todo``, as the actors finish them (any order)."""
    todo = plan.todo
    if not todo:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller's progress bar counts images
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes would break the progress line
    rows = [{"index": index, "filename": os.fsencode(plan.images[index].as_posix())} for index in todo]
    actors = max(1, min(len(todo), int(ray.cluster_resources().get("CPU", 1) // CPUS_PER_ACTOR)))
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // ROWS_PER_BLOCK)))
    annotated = dataset.map_batches(
        Annotator, batch_size=1, num_cpus=CPUS_PER_ACTOR, compute=ray.data.ActorPoolStrategy(size=actors),
        # Absolute paths: a worker on another node does not start in this process's folder.
        fn_constructor_kwargs={"load": load, "score_threshold": score_threshold, "frames": frames,
                               # Only the folders: the file list travels as rows, not with every actor.
                               "plan": dataclasses.replace(plan, input_dir=plan.input_dir.resolve(),
                                                           output_dir=plan.output_dir.resolve(),
                                                           images=[], skipped=[], done={}, refused={})})
    for row in annotated.iter_rows():
        yield int(row["index"]), pickle.loads(row["record"])

