"""The one inference path: the SavedModel contract, used by the page, the CLI and evaluation.

    detector = load_detector("saved_model", "label_map.pbtxt")
    boxes = detect(detector, image)                      # every box the model returns
    shown = above_threshold(boxes, detector.score_threshold)

``detect`` returns all detections (the model keeps those above its own low
pre-NMS floor), so a threshold can change without running the model again.

``model_info.json`` beside the SavedModel (input size, classes, operating point,
metrics) is read and written only through :func:`read_model_info` and
:func:`write_model_info`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from busdet.boxes import Box, boxes_from_normalized_yxyx
from busdet.files import write_json
from busdet.label_map import load_label_map

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "model_info.json"
# The seed's threshold, used when the model carries no operating point of its own.
DEFAULT_SCORE_THRESHOLD = 0.7
DEFAULT_INPUT_SIZE = (640, 640)


class ModelLoadError(RuntimeError):
    """The model or label map is missing or not what the contract expects."""


@dataclass
class Detector:
    """A loaded SavedModel with what is needed to read its outputs.

    ``predict`` maps a uint8 ``[1, H, W, 3]`` tensor to the signature's output dict.
    """

    predict: Callable
    classes: Dict[int, str]
    input_size: Tuple[int, int]
    score_threshold: float
    model_dir: Path
    info: dict
    owner: object = None  # the loaded SavedModel, kept alive for ``predict``


def read_model_info(model_dir: str | Path) -> dict:
    """The exporter's ``model_info.json`` beside the SavedModel ({} if absent).

    Raises:
      ModelLoadError: the file is damaged (not a JSON object, e.g. truncated).
    """
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:  # JSONDecodeError: cut short
        raise ModelLoadError(f"{path}: damaged ({error}); export the model again") from None
    if not isinstance(info, dict):
        raise ModelLoadError(f"{path}: damaged (not a JSON object); export the model again")
    return info


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


def load_detector(model_dir: str | Path, label_map_path: str | Path) -> Detector:
    """Loads the SavedModel's ``serving_default`` signature and the label map.

    Everything that can be checked without TensorFlow (label map, model info, their
    classes) is checked first, so that a mistake is reported in a second.

    Raises:
      ModelLoadError: with one line naming the path and what was expected.
    """
    model_dir, label_map_path = Path(model_dir), Path(label_map_path)
    if not (model_dir / "saved_model.pb").is_file():
        raise ModelLoadError(f"{model_dir}: no SavedModel here (expected {model_dir / 'saved_model.pb'})")
    try:
        classes = load_label_map(label_map_path)
    except FileNotFoundError:
        raise ModelLoadError(f"{label_map_path}: label map not found (expected a label_map.pbtxt)") from None
    except (OSError, UnicodeDecodeError) as error:  # a folder, no permission, not text
        raise ModelLoadError(f"{label_map_path}: cannot read the label map ({error})") from None
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    info = read_model_info(model_dir)
    check_classes(classes, info, label_map_path, model_dir)
    import tensorflow as tf  # slow import, only when a model is really loaded

    try:
        loaded = tf.saved_model.load(str(model_dir))
        predict = loaded.signatures["serving_default"]
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (IndexError for truncated variables)
        raise ModelLoadError(f"{model_dir}: cannot load the SavedModel's serving_default "
                             f"({type(error).__name__}: {_first_line(error)}); is the folder complete?") from None
    return Detector(predict=predict, classes=classes, input_size=tuple(info.get("input_size", DEFAULT_INPUT_SIZE)),
                    score_threshold=default_score_threshold(info), model_dir=model_dir, info=info, owner=loaded)


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
    import tensorflow as tf

    height, width = image.shape[:2]
    outputs = detector.predict(tf.constant(image[np.newaxis], dtype=tf.uint8))
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
