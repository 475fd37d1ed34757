"""The one inference path: the SavedModel contract, used by the page, the CLI and evaluation.

    detector = load_detector("saved_model", "label_map.pbtxt")
    boxes = detect(detector, image)                      # every box the model returns
    shown = above_threshold(boxes, detector.score_threshold)

``detect`` returns all detections (the model keeps those above its own low
pre-NMS floor), so a threshold can change without running the model again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from busdet.boxes import Box, boxes_from_normalized_yxyx
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


def read_model_info(model_dir: Path) -> dict:
    """The exporter's ``model_info.json`` beside the SavedModel ({} if absent)."""
    path = Path(model_dir) / MODEL_INFO_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_detector(model_dir: str | Path, label_map_path: str | Path) -> Detector:
    """Loads the SavedModel's ``serving_default`` signature and the label map.

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
    except ValueError as error:
        raise ModelLoadError(str(error)) from None
    import tensorflow as tf  # slow import, only when a model is really loaded

    try:
        loaded = tf.saved_model.load(str(model_dir))
        predict = loaded.signatures["serving_default"]
    except (OSError, KeyError, ValueError, tf.errors.OpError) as error:
        raise ModelLoadError(f"{model_dir}: cannot load the SavedModel's serving_default ({error})") from None
    info = read_model_info(model_dir)
    threshold = info.get("score_threshold")
    detector = Detector(predict=predict, classes=classes,
                        input_size=tuple(info.get("input_size", DEFAULT_INPUT_SIZE)),
                        score_threshold=DEFAULT_SCORE_THRESHOLD if threshold is None else float(threshold),
                        model_dir=model_dir, info=info, owner=loaded)
    return detector


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
