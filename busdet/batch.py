"""Batch prediction over a folder: the logic behind ``predict.py``.

    detector = load_detector("saved_model", "label_map.pbtxt")
    plan = plan_batch(Path("input"), Path("output"), recursive=False, overwrite=False)
    result = run_batch(detector, plan, detector.score_threshold, frames="all")
    print(format_summary(result, load_seconds))

For every image (an image extension) and DICOM file (``.dcm``, ``.dicom`` or the
``DICM`` preamble) the output folder gets an annotated copy under the same
relative name (a DICOM file's gets ``.png`` added, and a cine loop's also an
``.mp4``), at the image's own resolution (boxes at or above the threshold, or a
"no lesion" mark), one row in ``images.csv`` and one row per box (per frame of a
loop) in ``predictions.csv`` (geometry as ``tools/mask_to_bbox.py`` writes it).
A file that cannot be read gets an ``error`` row; the others are still done. So does one
whose outputs cannot all be written (a full disk, a read-only ``dicom_out``): its row names
the output that failed and why, and keeps the boxes found (in ``predictions.csv`` too).
With ``dicom_out``, every DICOM input also gets a Structured Report and an annotated
Secondary Capture there (:mod:`busdet.dicom_out`; they carry the source's identifiers).
The tables hold every finished image at all times (rewritten atomically every few
seconds and at the end), so a killed run keeps the rows of the images it did.
``run.json`` beside them records what made them (model digest, threshold,
runtime, frames), so that ``--resume`` can refuse to mix two runs' rows.

Everything that can go wrong with names is decided when the run is planned,
before any work: two inputs whose outputs would be one file (``scan`` beside
``scan.png``, ``a.dcm`` beside ``a.dcm.png``) leave the first input (in listing
order) its output and give the other an error row naming both; an output that
would land in the input tree through a link gives an error row; so does one whose
output name (its own name with ``.png``, ``.mp4``, ``.sr.dcm`` or ``.sc.dcm`` added)
would be longer than the file system allows (255 bytes); an input that is a link
into the output folder is passed over. Only regular files are read.

Reading the next images and drawing/writing finished ones run in a small thread
pool while the calling thread runs the model, one image at a time and in order
(TensorFlow, OpenCV, Pillow's codecs and file I/O release the GIL, so the work
really overlaps; batching does not speed the network up on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from busdet.dicom_out import DicomOutError, dicom_result_paths, read_source, write_dicom_results
from busdet.downloads import annotated_frames, annotated_image
from busdet.cli import Terminated, signals_deferred
from busdet.files import (FolderLockedError, OutputError, WriteError, check_writable_folder, folder_lock,
                          folder_problem, printable, read_text, unreadable_reason, write_csv, write_json, writing)
from busdet.images import IMAGE_EXTENSIONS, Scan, is_image_file, write_image, write_video
from busdet.inference import Detector, compute_saved_model_digest
from busdet.results import FrameChoice, ImageResult, analyse_image
from busdet.scans import is_input_file, read_scan
from busdet.tables import images_table, predictions_table, read_results

log = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
IMAGES_CSV = "images.csv"
RUN_FILE = "run.json"
# The settings in run.json that change the rows; --resume refuses to mix runs that differ in one.
RUN_SETTINGS = ("model_sha256", "runtime", "score_threshold", "frames")
# Images decoded ahead of the model, and annotated copies waiting to be written:
# enough to keep the model busy, few enough to bound memory on large frames.
READ_AHEAD = 3
MAX_PENDING_WRITES = 4
# Bytes a file name may have when the file system does not say (os.pathconf): Linux's and most others'.
NAME_MAX = 255
# The tables are rewritten (atomically) at most this often during a run, so that a
# hard kill or a power cut loses only the last few seconds of rows.
TABLE_SAVE_SECONDS = 5.0


class BatchSetupError(ValueError):
    """The folders cannot be used as asked (checked before any work); the message says why."""


@dataclass(frozen=True)
class BatchPlan:
    """What a run will read and write, all decided before any work.

    ``images`` and ``skipped`` are paths relative to ``input_dir``. ``done`` holds the
    records an earlier run finished (``--resume``), by index in ``images``; ``refused``
    the reason, by index, of the images whose outputs cannot be written safely (not
    read; see :func:`find_output_conflicts`). ``settings`` is what ``run.json`` records
    (:func:`with_settings`); None writes no ``run.json``. ``dicom_out``: the folder for
    the DICOM inputs' reports and annotated captures (``--dicom-out``), or None.
    """

    input_dir: Path
    output_dir: Path
    images: List[Path]
    skipped: List[Path]
    overwrite: bool = False
    unsearched_folders: int = 0
    done: Dict[int, ImageResult] = field(default_factory=dict)
    refused: Dict[int, str] = field(default_factory=dict)
    resume: bool = False
    settings: Optional[dict] = None
    dicom_out: Optional[Path] = None

    @property
    def todo(self) -> List[int]:
        """Indices in ``images`` of the images still to do, in input order."""
        return [index for index in range(len(self.images)) if index not in self.done and index not in self.refused]

    def output_path(self, relative: Path) -> Path:
        """The annotated copy: the same relative name, with ``.png`` added to a DICOM file's."""
        return self.output_dir / (relative if is_image_file(relative) else relative.with_name(relative.name + ".png"))

    def output_files(self, relative: Path) -> List[Path]:
        """Every file an input may get: its annotated copy, and an MP4 if it is DICOM (maybe a loop)."""
        copy = self.output_path(relative)
        return [copy] if is_image_file(relative) else [copy, self.video_path(relative), *self.dicom_paths(relative)]

    def dicom_paths(self, relative: Path) -> List[Path]:
        """The report and the annotated capture of a DICOM input (none without ``dicom_out``)."""
        return [] if self.dicom_out is None or is_image_file(relative) else \
            list(dicom_result_paths(self.dicom_out / relative))

    def video_path(self, relative: Path) -> Path:
        """The annotated MP4 of a cine loop: the DICOM file's name with ``.mp4`` added."""
        return self.output_dir / relative.with_name(relative.name + ".mp4")

    @property
    def tables(self) -> List[Path]:
        return [self.output_dir / PREDICTIONS_CSV, self.output_dir / IMAGES_CSV]

    @property
    def run_file(self) -> Path:
        return self.output_dir / RUN_FILE


@dataclass
class BatchResult:
    """The finished (or interrupted) run: one record per image done, in input order."""

    plan: BatchPlan
    results: List[ImageResult]
    elapsed: float
    interrupted: bool = False
    terminated: bool = False  # stopped by SIGTERM (``interrupted`` too), not Ctrl-C

    @property
    def failures(self) -> List[ImageResult]:
        return [r for r in self.results if not r.ok]

    @property
    def box_count(self) -> int:
        """Rows of ``predictions.csv``: the shown boxes of every frame the tables hold."""
        return sum(len(boxes) for r in self.results for _, boxes in r.shown_frames)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _inside(path: str, folder: Optional[str]) -> bool:
    """True when the resolved ``path`` is the resolved ``folder`` or under it."""
    return folder is not None and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def list_inputs(input_dir: Path, recursive: bool = False,
                output_dir: Optional[Path] = None) -> Tuple[List[Path], List[Path], int]:
    """Files under ``input_dir``, sorted, hidden files and folders left out.

    With ``recursive``, linked folders are followed too; a folder reached a second
    time (a link loop, or two links to one folder) is listed as passed over, and
    so is a file or folder that resolves into ``output_dir`` (a link into the outputs).

    Returns:
      ``(images, others, folders)``: paths relative to ``input_dir`` of the files read
      (an image extension, or DICOM: :func:`busdet.scans.is_input_file`) and of the
      others (and folders read already), and the number of sub-folders not searched
      (0 when recursive).
    """
    images, others, folders, seen = [], [], 0, set()
    outputs = _linked_outputs(input_dir, output_dir)
    for root, dirs, files in os.walk(input_dir, followlinks=recursive):
        real = os.path.realpath(root)
        if real in seen or _inside(real, outputs):
            others.append(Path(root).relative_to(input_dir))
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not recursive:
            folders, dirs[:] = len(dirs), []
        for name in sorted(files):
            path = Path(root) / name
            relative = path.relative_to(input_dir)
            if not _is_hidden(relative):
                readable = is_input_file(path) and not _inside(os.path.realpath(path), outputs)
                (images if readable else others).append(relative)
    return images, others, folders


def _linked_outputs(input_dir: Optional[Path], output_dir: Optional[Path]) -> Optional[str]:
    """The resolved output folder, which no input may link into; None when the input folder is itself
    inside it (``--input out/sub --output out``: its outputs are then kept off the inputs by
    :func:`find_output_conflicts`)."""
    if output_dir is None or (input_dir is not None and _inside(os.path.realpath(input_dir),
                                                                 os.path.realpath(output_dir))):
        return None
    return os.path.realpath(output_dir)


def skip_reason(path: Path, output_dir: Optional[Path] = None, input_dir: Optional[Path] = None) -> str:
    """Why a listed path is passed over (see :func:`list_inputs`)."""
    if _inside(os.path.realpath(path), _linked_outputs(input_dir, output_dir)):
        return "a link into the output folder; outputs are never read as inputs"
    if path.is_dir():
        return "a folder already read through another link; not read twice"
    unreadable = unreadable_reason(path)  # a broken link, a link loop, a named pipe, ...
    if unreadable is not None:
        return unreadable
    return f"not an image file ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}) nor DICOM"


def name_limit(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (that of its nearest
    existing folder, as the output folders may not exist yet); :data:`NAME_MAX` when it does not say."""
    existing = next((p for p in [folder, *folder.absolute().parents] if os.path.isdir(p)), None)
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX") if existing is not None else NAME_MAX
    except (OSError, ValueError):
        return NAME_MAX
    return limit if limit > 0 else NAME_MAX


def output_name_problem(plan: BatchPlan, relative: Path) -> Optional[str]:
    """Why an output of ``relative`` could not be created under its name, or None.

    An input's outputs add suffixes to its name (``a.dcm`` gets ``a.dcm.png``, ``a.dcm.mp4``
    and, with ``dicom_out``, ``a.dcm.sr.dcm``, ``a.dcm.sc.dcm``), so a legal input name of
    250-255 bytes can give an output name the file system refuses (ENAMETOOLONG): such an
    input is refused when the run is planned rather than failing its write after inference.
    """
    length, limit, path = max(((len(os.fsencode(path.name)), name_limit(path.parent), path)
                               for path in plan.output_files(relative)), key=lambda item: item[0] - item[1])
    if length <= limit:
        return None
    suffix = path.name[len(relative.name):]  # every output name is the input's with a suffix added
    what = f"its name + {suffix}" if suffix else "its name"
    return (f"output name would exceed the file system's {limit}-byte limit ({what} in {path.parent} "
            f"is {length} bytes); not read: shorten its name by {length - limit} byte{'s' * (length - limit > 1)}")


def find_output_conflicts(plan: BatchPlan) -> Dict[int, str]:
    """The images whose outputs cannot be written safely, by index, with the reason.

    The rule: an output name longer than its file system takes refuses its image
    (:func:`output_name_problem`). Outputs are compared after resolving every link. An
    output that would be an input file or lie in the input tree refuses its image; of two
    images with an output in common (``scan`` beside ``scan.png``), the first listed keeps
    it and the second is refused, naming the first. Refused images are not read.
    """
    source = os.path.realpath(plan.input_dir)
    inputs = {os.path.realpath(plan.input_dir / relative) for relative in plan.images}
    claimed: Dict[str, int] = {}
    refused: Dict[int, str] = {}
    for index, relative in enumerate(plan.images):
        too_long = output_name_problem(plan, relative)
        if too_long is not None:
            refused[index] = too_long
            continue
        for path in plan.output_files(relative):
            real = os.path.realpath(path)
            if real in inputs or _inside(real, source):
                refused[index] = f"its output {path} would be written into the input folder (through a link); not read"
            elif real in claimed:
                refused[index] = (f"its output {path} is also that of {plan.input_dir / plan.images[claimed[real]]} "
                                  "(listed first, which keeps it); not read: rename one of the two")
            if index in refused:
                break
        else:
            claimed.update((os.path.realpath(path), index) for path in plan.output_files(relative))
    return refused


def check_output_location(input_dir: Path, output_dir: Path) -> None:
    """Refuses an output folder that is the input folder or inside it (inputs are never touched),
    or one where files cannot be created."""
    source, target = Path(os.path.realpath(input_dir)), Path(os.path.realpath(output_dir))  # a link loop: as is
    if target == source or source in target.parents:
        raise BatchSetupError(f"{output_dir}: output folder is inside the input folder {input_dir}; "
                              "choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise BatchSetupError(f"{output_dir}: exists and is not a folder")
    try:
        check_writable_folder(output_dir)
    except OutputError as error:
        raise BatchSetupError(f"{error}; choose another --output") from None


def first_existing_output(plan: BatchPlan) -> Optional[Path]:
    """The first file the run would replace (tables first, then annotated copies), or None."""
    candidates = plan.tables + [path for index, relative in enumerate(plan.images) if index not in plan.refused
                                for path in plan.output_files(relative)] + [plan.run_file]
    return next((path for path in candidates if os.path.lexists(path)), None)


@contextlib.contextmanager
def output_lock(input_dir: Path, output_dir: Path) -> Iterator[None]:
    """Holds the output folder's lock (:func:`busdet.files.folder_lock`) for a whole run,
    checking the folder first (:func:`check_output_location`).

    Raises:
      BatchSetupError: the folder is unsafe or unwritable, or another run holds it.
    """
    check_output_location(Path(input_dir), Path(output_dir))
    try:
        with folder_lock(output_dir, "predict.py run"):
            yield
    except FolderLockedError as error:
        raise BatchSetupError(str(error)) from None


def plan_batch(input_dir: Path, output_dir: Path, recursive: bool = False, overwrite: bool = False,
               resume: bool = False, dicom_out: Optional[Path] = None) -> BatchPlan:
    """Lists the inputs and checks that the outputs are safe to write.

    ``resume``: continue an earlier run into the same output folder: the images it
    finished (see :func:`finished_earlier`) are not done again, the others' outputs are replaced.
    ``dicom_out``: also write DICOM results there (checked like the output folder).

    Raises:
      BatchSetupError: the input is not a folder, the output is inside it or cannot
        be written, or an output file exists and neither ``overwrite`` nor ``resume`` is set.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise BatchSetupError(f"{input_dir}: {folder_problem(input_dir)}; expected a folder of images")
    check_output_location(input_dir, output_dir)
    if dicom_out is not None:
        check_output_location(input_dir, Path(dicom_out))
    images, others, folders = list_inputs(input_dir, recursive, output_dir)
    plan = BatchPlan(input_dir, output_dir, images, others, overwrite, folders,
                     dicom_out=None if dicom_out is None else Path(dicom_out))
    plan = replace(plan, refused=find_output_conflicts(plan))
    if resume:
        return replace(plan, overwrite=True, resume=True, done=finished_earlier(plan))
    existing = None if overwrite else first_existing_output(plan)
    if existing is not None:
        raise BatchSetupError(f"{existing}: exists; use --overwrite to replace the outputs, "
                              "or choose another --output")
    return plan


def draw_and_write(scan: Scan, result: ImageResult, plan: BatchPlan, relative: Path,
                   model_info: Optional[dict] = None) -> None:
    """The annotated copy (a loop's key frame), a loop's annotated MP4, and with ``plan.dicom_out`` a
    DICOM input's report and capture (``model_info``: the model's ``model_info.json``, which they name).

    Raises:
      WriteError: naming the output that failed (:func:`write_failed` turns it into the row's error).
      DicomOutError: the DICOM results cannot be made for this input.
    """
    copy, video = plan.output_path(relative), plan.video_path(relative)
    with writing("annotated copy", copy):
        write_image(copy, annotated_image(result, scan), overwrite=plan.overwrite)
    if result.frames:
        with writing("annotated MP4", video):
            write_video(video, annotated_frames(result, scan), overwrite=plan.overwrite)
    if plan.dicom_paths(relative):
        write_dicom_results(result, scan, read_source(plan.input_dir / relative), model_info or {},
                            plan.dicom_out / relative, overwrite=plan.overwrite)


def finished_earlier(plan: BatchPlan) -> Dict[int, ImageResult]:
    """The records, by index in ``plan.images``, of the images whose rows are in the output
    folder's tables already, with status ok and their annotated copy present.

    Error rows are done again (a file fixed or a disk emptied since deserves another try).

    Raises:
      BatchSetupError: the tables exist but cannot be read back.
    """
    predictions_path, images_path = plan.tables
    if not images_path.exists():
        return {}
    try:
        earlier = read_results(predictions_path, images_path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise BatchSetupError(f"{images_path}: cannot resume from it ({error}); "
                              "use --overwrite to start again") from None
    index = {relative.as_posix(): i for i, relative in enumerate(plan.images) if i not in plan.refused}
    # DICOM files are done again: their rows (frames, sizes in mm) are not read back into records.
    return {index[r.filename]: r for r in earlier
            if r.ok and r.filename in index and is_image_file(Path(r.filename))
            and plan.output_path(Path(r.filename)).is_file()}


def run_settings(detector: Detector, score_threshold: float, frames: FrameChoice = "all") -> dict:
    """What ``run.json`` records of a run: the model's digest (None for a model without
    ``saved_model.pb``, e.g. a test's fake) and checkpoint, runtime, threshold and frames setting."""
    has_graph = (Path(detector.model_dir) / "saved_model.pb").is_file()
    return {"model_sha256": compute_saved_model_digest(detector.model_dir) if has_graph else None,
            "model_checkpoint": detector.info.get("checkpoint"), "runtime": detector.runtime,
            "score_threshold": score_threshold, "frames": frames}


def read_run_record(path: Path) -> Optional[dict]:
    """``run.json`` as written by :func:`write_tables`, or None when it is missing or not such a file."""
    try:
        record = json.loads(read_text(path))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def with_settings(plan: BatchPlan, settings: dict, mixed_ok: bool = False) -> BatchPlan:
    """``plan`` recording ``settings`` (:func:`run_settings`) in ``run.json``.

    On ``--resume`` over existing tables, the earlier run's settings must be the same
    (:data:`RUN_SETTINGS`); with ``mixed_ok`` the run goes on and ``run.json`` keeps
    the earlier settings under ``earlier_runs``, so the mix stays on record.

    Raises:
      BatchSetupError: a resume whose earlier settings differ or are unknown (no ``run.json``).
    """
    if not (plan.resume and plan.tables[1].exists()):
        return replace(plan, settings=dict(settings))
    earlier = read_run_record(plan.run_file)
    history = list(earlier.get("earlier_runs", [])) if earlier else []
    if earlier is None:
        differences = [f"no readable {RUN_FILE}, so what made the tables is unknown"]
        history.append({"unknown": True})
    else:
        differences = [f"{key} {earlier.get(key)!r} there, {settings.get(key)!r} now" for key in RUN_SETTINGS
                       if earlier.get(key) != settings.get(key)]
        if differences:
            history.append({key: value for key, value in earlier.items() if key != "earlier_runs"})
    if differences and not mixed_ok:
        raise BatchSetupError(f"{plan.run_file}: --resume would mix rows of two runs ({'; '.join(differences)}); "
                              "run with the same settings, --overwrite to start again, or --resume-anyway")
    return replace(plan, settings={**settings, "earlier_runs": history} if history else dict(settings))


def write_failed(result: ImageResult, error: BaseException) -> ImageResult:
    """``result`` marked failed because one of its outputs could not be written (the error names which
    file, what it is and why: :class:`busdet.files.WriteError`) or its DICOM results made. Its boxes
    stay: the model's result is not lost with a file, and the tables keep it beside the error."""
    if isinstance(error, DicomOutError):
        reason = f"no DICOM results: {error}"
    elif isinstance(error, WriteError):
        reason = f"cannot write its {error.what} {printable(error.path)} ({error.reason})"
    else:
        reason = f"cannot write its outputs ({type(error).__name__}: {error})"
    return result.failed(reason, keep_result=True)


def log_failure(result: ImageResult, plan: BatchPlan) -> ImageResult:
    """``result``, after one warning line naming its input file and the reason if it failed
    (both engines, in the process that runs the batch)."""
    if not result.ok:
        log.warning("%s: %s", printable(plan.input_dir / result.filename), result.error)
    return result


def start_records(plan: BatchPlan) -> Dict[int, ImageResult]:
    """The records a run starts with: the earlier run's (``--resume``) and the refused images'
    error rows; logs one line for each file passed over and each image refused."""
    for relative in plan.skipped:
        path = plan.input_dir / relative
        log.warning("%s: passed over: %s", printable(path), skip_reason(path, plan.output_dir, plan.input_dir))
    refused = {index: log_failure(ImageResult(plan.images[index].as_posix(), error=reason), plan)
               for index, reason in plan.refused.items()}
    return {**plan.done, **refused}


def _collect_write(result: ImageResult, write: Future, plan: BatchPlan) -> Optional[ImageResult]:
    """The record once its outputs are written; None if the write never ran."""
    if write.cancelled() or not write.done():
        return None
    error = write.exception()
    if error is None:
        return result
    return log_failure(write_failed(result, error), plan)


def _identity(items):
    return items


def run_batch(detector: Detector, plan: BatchPlan, score_threshold: float,
              progress: Callable[[Iterable], Iterable] = _identity, workers: int = 2,
              frames: FrameChoice = "all") -> BatchResult:
    """Annotates every image of ``plan`` and writes the two tables, even on Ctrl-C.

    Every record comes from :func:`busdet.results.analyse_image`, as on the page. The
    images of ``plan.done`` (``--resume``) are not done again; their records are kept.

    Args:
      detector: a loaded (or, in tests, fake) :class:`busdet.inference.Detector`.
      score_threshold: boxes below it are neither drawn nor written.
      progress: wraps the list of images to do, e.g. ``lambda items: tqdm(items, unit="img")``.
      workers: threads that read and write while the model runs.
      frames: which frames of a cine loop run and are written (``--frames``: "all", "key" or every Nth).
    Returns:
      The records of the images finished; ``interrupted`` is True after a
      KeyboardInterrupt, which is not re-raised (the tables are written first).
    """
    start = last_save = time.perf_counter()
    saved = False  # tables written by this run already (so they may be replaced)
    done = start_records(plan)
    todo = plan.todo
    writes: Dict[int, Tuple[ImageResult, Future]] = {}
    interrupted = terminated = False
    reads: Dict[int, Future] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="busdet-io")
    try:
        for position, index in enumerate(progress(todo)):
            for ahead in todo[position:position + READ_AHEAD + 1]:
                if ahead not in reads:
                    reads[ahead] = pool.submit(read_scan, plan.input_dir / plan.images[ahead])
            relative = plan.images[index]
            result, scan = analyse_image(detector, relative.as_posix(), reads.pop(index).result, score_threshold,
                                         frames)
            if scan is None:
                done[index] = log_failure(result, plan)
            else:
                writes[index] = (result, pool.submit(draw_and_write, scan, result, plan, relative,
                                                          detector.info))
            _finish_writes(writes, done, plan, keep_pending=MAX_PENDING_WRITES)
            if time.perf_counter() - last_save >= TABLE_SAVE_SECONDS:
                saved = True  # from now on the tables are this run's, even if this save fails half-way
                write_tables(result_so_far(plan, done, start), replace=True)
                last_save = time.perf_counter()
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (busdet.cli.Terminated)
        interrupted, terminated = True, isinstance(stop, Terminated)
    finally:
        # Reads still queued are dropped (and not waited for: a stop is prompt); annotated
        # copies already queued are finished, so that their rows can be kept.
        for read in reads.values():
            read.cancel()
        with signals_deferred():  # a second Ctrl-C must not cut the last save short
            _finish_writes(writes, done, plan, keep_pending=0)
            pool.shutdown(wait=not interrupted, cancel_futures=True)
            result = result_so_far(plan, done, start, interrupted, terminated)
            write_tables(result, replace=saved)
    return result


def result_so_far(plan: BatchPlan, done: Dict[int, ImageResult], start: float,
                  interrupted: bool = False, terminated: bool = False) -> BatchResult:
    return BatchResult(plan, [done[i] for i in sorted(done)], time.perf_counter() - start, interrupted, terminated)


def _finish_writes(writes: Dict[int, Tuple[ImageResult, Future]], done: Dict[int, ImageResult],
                   plan: BatchPlan, keep_pending: int) -> None:
    """Moves finished writes to ``done``, first waiting until at most ``keep_pending`` remain."""
    while len(writes) > keep_pending:
        pending = [future for _, future in writes.values() if not future.done()]
        if len(pending) <= keep_pending:
            break
        wait(pending, return_when=FIRST_COMPLETED)
    for index in [i for i, (_, future) in writes.items() if future.done()]:
        result, future = writes.pop(index)
        finished = _collect_write(result, future, plan)
        if finished is not None:
            done[index] = finished


def write_tables(result: BatchResult, replace: bool = False) -> None:
    """Writes ``predictions.csv`` and ``images.csv`` (:mod:`busdet.tables`) atomically into the output folder.

    ``replace``: the run itself wrote them before (an in-run save), so they may be replaced
    even without ``--overwrite``. ``run.json`` is written first when the plan has settings.
    """
    predictions_path, images_path = result.plan.tables
    overwrite = result.plan.overwrite or replace
    if result.plan.settings is not None:  # first: tables are never without what made them
        write_json(result.plan.settings, result.plan.run_file, overwrite=overwrite)
    write_csv(predictions_table(result.results), predictions_path, overwrite=overwrite)
    write_csv(images_table(result.results), images_path, overwrite=overwrite)


def format_throughput(result: BatchResult) -> str:
    """Images/s of this run, counting only the images it produced a result for (an error row
    costs next to nothing, so counting it would flatter the rate); none: said instead of a rate."""
    produced = sum(1 for r in result.results if r.ok) - len(result.plan.done)  # the kept ones are ok rows
    failed = len(result.results) - len(result.plan.done) - produced
    if produced == 0:
        tried = f"no image gave a result ({failed} failed in {result.elapsed:.1f} s)" if failed else "no image was run"
        return f"no images/s figure: {tried}"
    rate = produced / result.elapsed if result.elapsed > 0 else 0.0
    not_counted = f"; the {failed} failed not counted" if failed else ""
    return f"{rate:.1f} images/s overall ({produced} with a result in {result.elapsed:.1f} s{not_counted})"


def format_summary(result: BatchResult, load_seconds: float) -> str:
    """The end-of-run report: load time, counts, median model latency, throughput."""
    plan, count = result.plan, len(result.results)
    latencies = [r.seconds for r in result.results if r.seconds is not None]
    median = f"{statistics.median(latencies) * 1000:.0f} ms" if latencies else "-"
    lines = [
        f"model loaded in {load_seconds:.1f} s",
        f"{count} images processed, {len(result.failures)} failed, "
        f"{len(plan.skipped)} other files passed over (named above)",
        f"median inference {median}/image; {format_throughput(result)}",
        f"{result.box_count} boxes -> {plan.tables[0]}; one row per image -> {plan.tables[1]}",
    ]
    loops = [r for r in result.results if r.frames]
    if loops:
        lines.append(f"{len(loops)} cine loop(s): {sum(len(r.frames) for r in loops)} frames run "
                     f"({sum(r.seconds or 0.0 for r in loops):.1f} s of inference)")
    if plan.dicom_out is not None:
        reported = sum(1 for r in result.results if r.ok and plan.dicom_paths(Path(r.filename)))
        lines.append(f"{reported} DICOM report(s) and annotated image(s) -> {plan.dicom_out} "
                     "(these carry their sources' patient and study identifiers)")
    if plan.done:
        lines.append(f"{len(plan.done)} of them kept from the earlier run's tables (--resume)")
    if plan.unsearched_folders:
        lines.append(f"{plan.unsearched_folders} sub-folders not searched (use --recursive)")
    if result.interrupted:
        how = "stopped by SIGTERM" if result.terminated else "interrupted"
        lines.append(f"{how}: {len(plan.images) - count} images not processed")
    return "\n".join(lines)
