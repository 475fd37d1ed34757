"""The one inference path: the SavedModel contract, used by the page, the CLI and evaluation.

    detector = load_detector("saved_model", "label_map.pbtxt")   # runtime="auto"
    boxes = detect(detector, image)                      # every box the model returns
    shown = above_threshold(boxes, detector.score_threshold)
    boxes, features = run_model(detector, image)         # and its pooled features (busdet.ood)

``detect`` returns all detections (the model keeps those above its own low
pre-NMS floor), so a threshold can change without running the model again.

Two runtimes serve the same graph: ONNX Runtime runs ``model.onnx`` (the
SavedModel converted by tf2onnx, its NMS as ONNX's own ``NonMaxSuppression``:
:func:`busdet.training.export.export_onnx`) and
TensorFlow runs the SavedModel itself. ``runtime="auto"`` takes ONNX Runtime when
``model.onnx`` is there and ``model_info.json`` says it was made from this very
SavedModel (a digest of its files), TensorFlow otherwise; ``"onnx"`` refuses a
missing or stale ONNX file. ``"onnx-int8"`` serves ``model_int8.onnx``
(:mod:`busdet.quantization`); ``auto`` takes it instead of ``model.onnx`` only where it is
faster and its not-ultrasound check as sound (:func:`find_int8_auto_problem`): a CPU with
int8 dot-product instructions (:data:`INT8_CPU_FLAGS`), the file current and within the
accuracy rule, and in-distribution statistics fitted on its own features. The ONNX path
never imports TensorFlow.

ONNX Runtime runs on as many threads as the process has cores (its CPU affinity,
capped by a cgroup CPU quota: :func:`available_cores`), and keeps the graph it
optimised at the first load beside ``model.onnx`` (a hidden file named by the ONNX
file's digest, the ONNX Runtime version and the CPU), so later loads skip the
optimisation; where the folder is read-only it optimises in memory every time.

``model_info.json`` beside the SavedModel (input size, classes, operating point,
metrics) is read and written only through :func:`read_model_info` and
:func:`write_model_info`. It may record the in-distribution statistics fitted on
this SavedModel (:mod:`busdet.ood`), and those fitted on the int8 file: the ones of the
file that serves are loaded with the model, and refused when missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from busdet.boxes import Box, boxes_from_normalized_yxyx
from busdet.files import read_text, write_json
from busdet.label_map import LabelMapError, load_label_map
from busdet.ood import OodStats, OodStatsError, load_int8_ood_stats, load_ood_stats

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "model_info.json"
# The seed's threshold, used when the model carries no operating point of its own.
DEFAULT_SCORE_THRESHOLD = 0.7
DEFAULT_INPUT_SIZE = (640, 640)
ONNX_FILE = "model.onnx"
# The int8 version of ONNX_FILE (tools/quantize_model.py), served only when asked for (--runtime onnx-int8).
INT8_FILE = "model_int8.onnx"
# The exported graph's pooled backbone features (busdet.training.export), scored by busdet.ood.
FEATURES_OUTPUT = "image_features"
RUNTIMES = ("auto", "onnx", "onnx-int8", "tensorflow")
# /proc/cpuinfo flags of int8 dot-product instructions: AVX-512 VNNI, AVX-VNNI, AMX. With one of them the
# int8 file ran the network faster than model.onnx (README, "Speed"); without, slower.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# What the runtimes are called to the user, with the package whose version is shown.
RUNTIME_NAMES = {"onnx": ("ONNX Runtime", "onnxruntime"), "onnx-int8": ("ONNX Runtime int8", "onnxruntime"),
                 "tensorflow": ("TensorFlow", "tensorflow")}


class ModelLoadError(RuntimeError):
    """The model or label map is missing or not what the contract expects."""


# Also filled in by the in-browser page (site.json), so both say the same.
TOO_ELONGATED = ("image is {width}x{height} px: too elongated for the model, whose {input_width}x{input_height} "
                 "input would shrink it to under 1 px across; crop it to the scan")


class ImageShapeError(ValueError):
    """The image cannot be given to the model at all (see :func:`find_shape_problem`); the message says why."""


def find_shape_problem(height: int, width: int, input_size: Sequence[int]) -> Optional[str]:
    """Why an image of ``height`` x ``width`` cannot be run, or None.

    The model scales the image, keeping its aspect ratio, until its longer side fits
    the input (Model Garden's ``resize_and_crop_image``); a strip such as 5000x1 would
    come out under one pixel across, which the graph's resize refuses with a runtime
    error deep inside (the page's ONNX Runtime Web too). It is refused here instead,
    with what to do about it.
    """
    scale = min(input_size[0] / height, input_size[1] / width)
    if min(height, width) * scale < 1:
        return TOO_ELONGATED.format(width=width, height=height, input_width=input_size[1], input_height=input_size[0])
    return None


@dataclass
class Detector:
    """A loaded model with what is needed to read its outputs.

    ``predict`` maps a numpy uint8 ``[1, H, W, 3]`` array to the signature's output
    dict (array-likes); ``runtime`` is ``"onnx"``, ``"onnx-int8"`` or ``"tensorflow"``.
    """

    predict: Callable
    classes: Dict[int, str]
    input_size: Tuple[int, int]
    score_threshold: float
    model_dir: Path
    info: dict
    runtime: str = "tensorflow"
    owner: object = None  # the loaded SavedModel or InferenceSession, kept alive for ``predict``
    ood: Optional[OodStats] = None  # the in-distribution statistics fitted on this model, if any


def read_model_info(model_dir: str | Path) -> dict:
    """The exporter's ``model_info.json`` beside the SavedModel ({} if absent).

    Raises:
      ModelLoadError: the file is damaged (not a JSON object, e.g. truncated), or a value the
        tools use has the wrong type (:func:`find_model_info_problem`).
    """
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:  # JSONDecodeError: cut short
        raise ModelLoadError(f"{path}: damaged ({error}); export the model again") from None
    if not isinstance(info, dict):
        raise ModelLoadError(f"{path}: damaged (not a JSON object); export the model again")
    problem = find_model_info_problem(info)
    if problem is not None:
        raise ModelLoadError(f"{path}: damaged ({problem}); export the model again")
    return info


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The values the tools read from model_info.json: their check, and what is expected. Absent or null: not checked.
_INFO_CHECKS = {
    "input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) and not isinstance(n, bool)
                                                                          and n > 0 for n in v),
                   "[height, width] in whole pixels"),
    "score_threshold": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number between 0 and 1"),
    "classes": (lambda v: isinstance(v, dict) and all(isinstance(n, str) for n in v.values()), "{id: name}"),
    "onnx": (lambda v: isinstance(v, dict), "an object"),
    "checkpoint": (lambda v: isinstance(v, str), "text"),
    "trained_on": (lambda v: isinstance(v, list) and all(isinstance(d, dict) for d in v), "a list of objects"),
    "test_metrics": (lambda v: isinstance(v, dict), "an object"),
}


def find_model_info_problem(info: dict) -> Optional[str]:
    """What is wrong with the first value of the wrong type in ``info``, or None."""
    for key, (valid, expected) in _INFO_CHECKS.items():
        value = info.get(key)
        if value is not None and not valid(value):
            return f"{key} is {json.dumps(value)[:60]}, expected {expected}"
    return None


def write_model_info(model_dir: str | Path, info: dict) -> None:
    """Writes ``model_info.json`` into ``model_dir`` atomically (``info`` must be JSON-ready)."""
    write_json(info, Path(model_dir) / MODEL_INFO_FILE)


def default_score_threshold(info: dict) -> float:
    """The model's operating point from its model info, else :data:`DEFAULT_SCORE_THRESHOLD`."""
    threshold = info.get("score_threshold")
    return DEFAULT_SCORE_THRESHOLD if threshold is None else float(threshold)


def check_classes(classes: Dict[int, str], info: dict, label_map_path: Path, model_dir: Path) -> None:
    """Refuses a label map whose ids and names differ from those the model was exported with.

    A model without recorded classes (an old export) is not checked.
    """
    recorded = info.get("classes")
    if recorded is None:
        return
    try:
        recorded = {int(class_id): name for class_id, name in recorded.items()}
    except (AttributeError, TypeError, ValueError):
        raise ModelLoadError(f"{model_dir / MODEL_INFO_FILE}: damaged (classes {recorded!r})") from None
    if recorded != classes:
        raise ModelLoadError(f"{label_map_path}: classes {_class_list(classes)} differ from the model's "
                             f"{_class_list(recorded)} (recorded in {model_dir / MODEL_INFO_FILE}); "
                             "use the label map the model was trained with")


def _class_list(classes: Dict[int, str]) -> str:
    return "{" + ", ".join(f"{class_id} {name}" for class_id, name in sorted(classes.items())) + "}"


def compute_saved_model_digest(model_dir: str | Path) -> str:
    """sha256 over the SavedModel's graph and weights (``saved_model.pb``, ``variables/*``:
    relative names and bytes), as hex: which SavedModel an ONNX file was made from."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    files = [model_dir / "saved_model.pb", *sorted((model_dir / "variables").glob("*"))]
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(compute_file_digest(path).encode())
    return digest.hexdigest()


def compute_file_digest(path: str | Path) -> str:
    """sha256 of one file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_onnx_problem(model_dir: Path, info: dict) -> Optional[str]:
    """Why ``model_dir/model.onnx`` cannot stand for the SavedModel beside it; None when it can.

    The exporter records in ``model_info.json`` (``"onnx"``) the digest of the
    SavedModel it converted and of the ONNX file it wrote; both must still hold.
    """
    path = model_dir / ONNX_FILE
    if not path.is_file():
        return f"{path}: no ONNX file"
    recorded = info.get("onnx")
    if not isinstance(recorded, dict) or not recorded.get("saved_model_sha256"):
        return f"{path}: {model_dir / MODEL_INFO_FILE} does not record which SavedModel it was made from"
    if recorded["saved_model_sha256"] != compute_saved_model_digest(model_dir):
        return f"{path}: stale, made from another SavedModel than the one beside it (digest differs)"
    if recorded.get("sha256") != compute_file_digest(path):
        return f"{path}: not the ONNX file the exporter wrote (digest differs)"
    return None


def find_int8_problem(model_dir: Path, info: dict) -> Optional[str]:
    """Why ``model_dir/model_int8.onnx`` cannot stand for the model; None when it can: it must be the
    file ``tools/quantize_model.py`` recorded (``onnx_int8`` in ``model_info.json``), made from the
    ``model.onnx`` beside it."""
    path = model_dir / INT8_FILE
    recorded = info.get("onnx_int8")
    if not path.is_file() or not isinstance(recorded, dict):
        return f"{path}: no int8 model here (tools/quantize_model.py --write makes it)"
    if recorded.get("onnx_sha256") != (info.get("onnx") or {}).get("sha256"):
        return f"{path}: stale, made from another model.onnx than the one beside it (digest differs)"
    if recorded.get("sha256") != compute_file_digest(path):
        return f"{path}: not the int8 file tools/quantize_model.py wrote (digest differs)"
    return None


def has_int8_instructions(flags: Optional[str] = None) -> bool:
    """Whether the CPU (its ``/proc/cpuinfo`` flags line, default this machine's) has one of
    :data:`INT8_CPU_FLAGS`."""
    return not set(INT8_CPU_FLAGS).isdisjoint((_cpu_flags() if flags is None else flags).split())


def find_int8_auto_problem(model_dir: Path, info: dict) -> Optional[str]:
    """Why ``auto`` serves ``model.onnx`` rather than ``model_int8.onnx`` here; None when it serves the
    int8 file: this CPU has int8 dot-product instructions, the int8 file is current
    (:func:`find_int8_problem`) and kept the accuracy rule, and its own in-distribution
    statistics are recorded and sound (the float file's would misjudge its features)."""
    if not has_int8_instructions():
        return "this CPU has no VNNI or AMX instructions: the int8 file is slower than model.onnx here"
    problem = find_int8_problem(model_dir, info)
    if problem is not None:
        return problem
    record = info["onnx_int8"]
    if (record.get("test") or {}).get("passes") is not True:
        return f"{model_dir / INT8_FILE}: written although it fails the accuracy rule (--force)"
    if "ood" not in record:
        return (f"{model_dir / INT8_FILE}: no in-distribution statistics fitted on its features "
                "(tools/quantize_model.py --write fits them)")
    try:
        load_int8_ood_stats(model_dir, info, record["sha256"])
    except OodStatsError as error:
        return str(error)
    return None


def choose_runtime(model_dir: Path, info: dict, runtime: str = "auto", allow_int8: bool = True) -> str:
    """``"onnx"``, ``"onnx-int8"`` or ``"tensorflow"`` for ``runtime`` in :data:`RUNTIMES`.

    ``auto`` is the float ONNX file when current, else TensorFlow; the int8 file instead of the
    float one where :func:`find_int8_auto_problem` finds nothing against it, unless
    ``allow_int8`` is False (measuring or fitting the float model itself).

    Raises:
      ModelLoadError: ``runtime="onnx"`` or ``"onnx-int8"`` with a missing or stale file, or an
      unknown runtime.
    """
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "tensorflow":
        return runtime
    problem = find_onnx_problem(model_dir, info)
    if problem is None and runtime == "onnx-int8":
        problem = find_int8_problem(model_dir, info)
        if problem is not None:
            raise ModelLoadError(f"{problem}; refused. Use --runtime onnx for the float model")
        return runtime
    if problem is None and runtime == "auto" and allow_int8:
        int8_problem = find_int8_auto_problem(model_dir, info)
        if int8_problem is None:
            return "onnx-int8"
        log.debug("not the int8 file: %s", int8_problem)
    if problem is None:
        return "onnx"
    if runtime in ("onnx", "onnx-int8"):
        raise ModelLoadError(f"{problem}; refused. Convert the SavedModel again "
                             f"(tools/export_model.py --onnx-for {model_dir}) or use the TensorFlow runtime")
    if (model_dir / ONNX_FILE).exists():
        log.warning("%s; using TensorFlow", problem)
    return "tensorflow"


def load_detector(model_dir: str | Path, label_map_path: str | Path, runtime: str = "auto",
                  load_ood: bool = True, allow_int8: bool = True) -> Detector:
    """Loads the model (ONNX Runtime or the SavedModel's ``serving_default``), the label map and
    the in-distribution statistics (not with ``load_ood=False``: to fit new ones).

    Everything that can be checked without loading a runtime (label map, model info,
    their classes, the ONNX file's digests) is checked first, so that a mistake is
    reported in a second; the statistics' digests once the model has loaded. ``runtime`` is one of
:data:`RUNTIMES` (see the module doc); ``allow_int8=False`` keeps ``auto`` to the float model.

    Raises:
      ModelLoadError: with one line naming the path and what was expected.
    """
    model_dir, label_map_path = Path(model_dir), Path(label_map_path)
    if not (model_dir / "saved_model.pb").is_file():
        raise ModelLoadError(f"{model_dir}: no SavedModel here (expected {model_dir / 'saved_model.pb'})")
    try:
        classes = load_label_map(label_map_path)
    except LabelMapError as error:  # missing, a folder, not text, not a label map: one line naming it
        raise ModelLoadError(str(error)) from None
    info = read_model_info(model_dir)
    check_classes(classes, info, label_map_path, model_dir)
    runtime = choose_runtime(model_dir, info, runtime, allow_int8)
    if runtime == "onnx":
        predict, owner = load_onnx_predict(model_dir / ONNX_FILE, info["onnx"]["sha256"])
    elif runtime == "onnx-int8":
        predict, owner = load_onnx_predict(model_dir / INT8_FILE, info["onnx_int8"]["sha256"])
    else:
        predict, owner = load_tensorflow_predict(model_dir)
    # After the runtime: damaged weights also change the digest, and are better named by its loader.
    ood = load_checked_ood_stats(model_dir, info, runtime) if load_ood else None
    return Detector(predict=predict, classes=classes, input_size=tuple(info.get("input_size", DEFAULT_INPUT_SIZE)),
                    score_threshold=default_score_threshold(info), model_dir=model_dir, info=info,
                    runtime=runtime, owner=owner, ood=ood)


def int8_ood_caveat(model_dir: Path, info: dict) -> str:
    """The warning for the in-distribution check under an int8 file without statistics of its own: the
    float file's were fitted on other features, and int8 features move the distance (figures from
    tools/quantize_model.py)."""
    test = (info.get("onnx_int8") or {}).get("test") or {}
    changed = [f"{figures['ood']['flag_changed']} of {figures['images']} {name} test images"
               for name, figures in test.items() if isinstance(figures, dict) and "ood" in figures]
    measured = f" (its flag changed on {', '.join(changed)})" if changed else ""
    return (f"{model_dir / INT8_FILE}: the in-distribution check was fitted on model.onnx's features and the "
            f"int8 file's differ{measured}: its not-ultrasound warnings are less reliable; use --runtime onnx "
            "where they matter, or quantize again (tools/quantize_model.py --write fits the int8 file's own)")


def load_checked_ood_stats(model_dir: Path, info: dict, runtime: str = "onnx") -> Optional[OodStats]:
    """The in-distribution statistics of the file that serves: for ``runtime="onnx-int8"`` those fitted on
    the int8 file (:func:`busdet.ood.load_int8_ood_stats`) when recorded, else (with a warning under
    int8: :func:`int8_ood_caveat`) the SavedModel's (:func:`busdet.ood.load_ood_stats`); None, with a
    warning, for a model that records none (only the colour and flat-image tests then run).

    Raises:
      ModelLoadError: recorded but missing, altered or fitted on another SavedModel or int8 file.
    """
    try:
        if runtime == "onnx-int8" and "ood" in (info.get("onnx_int8") or {}):
            return load_int8_ood_stats(model_dir, info, info["onnx_int8"]["sha256"])
        stats = load_ood_stats(model_dir, info, compute_saved_model_digest(model_dir))
    except OodStatsError as error:
        raise ModelLoadError(str(error)) from None
    if stats is None:
        log.warning("%s: no in-distribution statistics recorded (tools/fit_ood.py fits them); only the colour "
                    "and flat-image tests will flag images unlike breast ultrasound", model_dir / MODEL_INFO_FILE)
    elif runtime == "onnx-int8":
        log.warning("%s", int8_ood_caveat(model_dir, info))
    return stats


def load_tensorflow_predict(model_dir: Path) -> Tuple[Callable, object]:
    """``(predict, owner)`` of the SavedModel's ``serving_default`` (imports TensorFlow)."""
    import tensorflow as tf  # slow import, only when this runtime is chosen

    try:
        loaded = tf.saved_model.load(str(model_dir))
        signature = loaded.signatures["serving_default"]
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (IndexError for truncated variables)
        raise ModelLoadError(f"{model_dir}: cannot load the SavedModel's serving_default "
                             f"({type(error).__name__}: {_first_line(error)}); is the folder complete?") from None
    return (lambda batch: signature(inputs=tf.constant(batch, dtype=tf.uint8))), loaded


def available_cores() -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup CPU quota (a
    container's ``--cpus``), at least 1. ``os.cpu_count()`` counts the host's, which oversubscribes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, int(quota)) if quota else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> Optional[float]:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max`` "200000 100000" -> 2.0, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota or a cgroup file."""
    for quota_file, period_file in ((root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us",
                                                                 root / "cpu" / "cpu.cfs_period_us")):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1") or float(period) <= 0:
            return None
        return float(quota) / float(period)
    return None


def optimized_model_path(path: Path, onnx_digest: str, runtime_version: str) -> Path:
    """Where ONNX Runtime's optimised graph of ``path`` is kept: beside it, hidden, named by the ONNX
    file's digest, the runtime's version and this CPU (a fully optimised graph may use its layout)."""
    machine = hashlib.sha256(f"{platform.machine()} {_cpu_flags()}".encode()).hexdigest()[:8]
    return path.with_name(f".{path.stem}.{onnx_digest[:16]}.ort{runtime_version}.{machine}.onnx")


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def build_session_options(onnxruntime, threads: Optional[int] = None):
    """Session options for this machine: ``threads`` (default :func:`available_cores`) inside each
    operator, one stream of operators (the graph is a chain), idle threads that sleep, errors-only logs.

    Measured (issue 21, README "Speed"): threads that spin between operators cost a quarter
    more CPU for no gain when the cores are shared (decoding and writing in the folder path,
    or a training run); switching the memory arena off made runs slower, so it stays on.
    """
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimiser notes mean nothing to a user
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(onnxruntime, path: Path, onnx_digest: Optional[str] = None):
    """An InferenceSession of ``path`` on the CPU; with ``onnx_digest`` (the file's sha256, as
    ``model_info.json`` records it) the optimised graph is cached beside it (see the module doc)."""
    options = build_session_options(onnxruntime)
    providers = ["CPUExecutionProvider"]
    if onnx_digest is None:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    cached = optimized_model_path(path, onnx_digest, onnxruntime.__version__)
    if cached.is_file():
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # done already
        try:
            return onnxruntime.InferenceSession(str(cached), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            log.warning("%s: cannot load the cached optimised graph (%s); optimising again", cached, error)
            options = build_session_options(onnxruntime)
    if not os.access(path.parent, os.W_OK):  # a read-only model folder: optimised in memory only
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    options.optimized_model_filepath = str(partial)
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # noqa: BLE001 - perhaps only the saving failed: try without it
        partial.unlink(missing_ok=True)
        log.debug("%s: loading while saving the optimised graph failed (%s)", path, error)
        return onnxruntime.InferenceSession(str(path), build_session_options(onnxruntime), providers=providers)
    try:
        os.replace(partial, cached)  # whole or not at all, for a concurrent load
    except OSError as error:  # a read-only model folder: optimised in memory only
        log.debug("%s: optimised graph not cached (%s)", cached, error)
        partial.unlink(missing_ok=True)
        return session
    for stale in path.parent.glob(f".{path.stem}.*.onnx"):  # of an earlier model.onnx or runtime
        if stale != cached:
            stale.unlink(missing_ok=True)
    return session


def load_onnx_predict(path: Path, onnx_digest: Optional[str] = None) -> Tuple[Callable, object]:
    """``(predict, session)`` of an ONNX file on ONNX Runtime's CPU provider (no TensorFlow).

    ``onnx_digest``: the file's sha256 as the exporter recorded it; it names the cached
    optimised graph (:func:`create_session`). Without it nothing is cached.
    """
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(f"{path}: onnxruntime is not installed (pip install -r requirements.txt), "
                             "or use the TensorFlow runtime") from None
    try:
        session = create_session(onnxruntime, path, onnx_digest)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelLoadError(f"{path}: cannot load the ONNX model ({type(error).__name__}: "
                             f"{_first_line(error)})") from None
    names = [output.name for output in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return (lambda batch: dict(zip(names, session.run(names, {input_name: batch})))), session


def describe_runtime(detector: Detector) -> str:
    """What serves the model, for the user: ``"ONNX Runtime 1.32.0 (saved_model/model.onnx)"``."""
    name, package = RUNTIME_NAMES[detector.runtime]
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = "?"
    served = {"onnx": detector.model_dir / ONNX_FILE,
              "onnx-int8": detector.model_dir / INT8_FILE}.get(detector.runtime, detector.model_dir)
    return f"{name} {version} ({served})"


def _first_line(error: Exception) -> str:
    """TensorFlow's messages can run to pages; the first line says what happened."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def detect(detector: Detector, image: np.ndarray) -> List[Box]:
    """Runs the model on one image and returns every detection, most confident first.

    Args:
      image: RGB ``uint8 [H, W, 3]`` (see :func:`busdet.images.read_image`).
    Returns:
      Boxes in the image's own pixel corners, with label-map names and scores.
    """
    return run_model(detector, image)[0]


def run_model(detector: Detector, image: np.ndarray) -> Tuple[List[Box], Optional[np.ndarray]]:
    """:func:`detect`'s boxes and, from the same forward pass, the model's pooled backbone
    features (float32 ``[D]``; None for a model exported without them).

    Raises:
      ImageShapeError: the image is too elongated to resize to the model's input (:func:`find_shape_problem`).
    """
    problem = find_shape_problem(image.shape[0], image.shape[1], detector.input_size)
    if problem is not None:
        raise ImageShapeError(problem)
    outputs = detector.predict(np.ascontiguousarray(image[np.newaxis], dtype=np.uint8))
    features = outputs.get(FEATURES_OUTPUT)
    return read_boxes(detector, outputs, image.shape[:2]), None if features is None else np.asarray(features)[0]


def read_boxes(detector: Detector, outputs: dict, image_size: Tuple[int, int]) -> List[Box]:
    """The boxes of the signature's outputs for an image of ``(height, width)``, most confident first."""
    height, width = image_size
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    boxes = np.asarray(outputs["detection_boxes"])[0, :count]
    classes = np.asarray(outputs["detection_classes"])[0, :count].astype(int)
    scores = np.asarray(outputs["detection_scores"])[0, :count]
    result = boxes_from_normalized_yxyx(boxes, classes, scores, detector.classes, width, height)
    # Clipping to the image can flatten a box hanging over its edge to zero area:
    # such a box marks nothing the user could see.
    return sorted((b for b in result if b.width >= 1 and b.height >= 1), key=lambda b: -b.score)


def timed_detect(detector: Detector, image: np.ndarray) -> Tuple[List[Box], float]:
    """:func:`detect` and its wall time in seconds."""
    start = time.perf_counter()
    boxes = detect(detector, image)
    return boxes, time.perf_counter() - start


def timed_run_model(detector: Detector, image: np.ndarray) -> Tuple[List[Box], Optional[np.ndarray], float]:
    """:func:`run_model`'s boxes and features, and its wall time in seconds."""
    start = time.perf_counter()
    boxes, features = run_model(detector, image)
    return boxes, features, time.perf_counter() - start
