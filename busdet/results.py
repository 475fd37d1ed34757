"""The one per-image record between the model and every output, and the one function that makes it.

    result, image = analyse_image(detector, "scan.png", lambda: read_image(path), score_threshold)
    result.shown_boxes                 # the boxes at or above result.score_threshold
    result.at_threshold(0.4)           # the same detections shown at another threshold
    result.message                     # "scan.png: not a recognised image format" for a failed file

``app.py`` (through its cache) and ``predict.py`` (through :mod:`busdet.batch`)
both build every record with :func:`analyse_image`; :mod:`busdet.tables`,
:mod:`busdet.downloads` and the batch writer read nothing else, so the page and
the CLI cannot disagree on a file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from busdet.boxes import Box, above_threshold
from busdet.images import ImageReadError
from busdet.inference import Detector, timed_detect


@dataclass(frozen=True)
class ImageResult:
    """What is known about one input file after detection.

    Attributes:
      filename: the file's name as the user gave it (relative path in a batch);
        shown and written as text only.
      width, height: the image's size in pixels; None when it could not be read.
      boxes: every detection, most confident first, in pixel corners (whatever the threshold).
      score_threshold: the threshold the boxes are shown at (:attr:`shown_boxes`).
      seconds: model wall time for this image; None when the model did not run.
      error: why the file has no result (the reason only: :attr:`message` names the file); None if ok.
    """

    filename: str
    width: Optional[int] = None
    height: Optional[int] = None
    boxes: Tuple[Box, ...] = ()
    score_threshold: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def shown_boxes(self) -> List[Box]:
        """The boxes at or above :attr:`score_threshold` (none for a failed file)."""
        if not self.ok or self.score_threshold is None:
            return []
        return above_threshold(self.boxes, self.score_threshold)

    @property
    def message(self) -> str:
        """One line naming the file and what happened to it: ``"scan.png: file is empty"``."""
        return f"{self.filename}: {self.error or 'ok'}"

    def at_threshold(self, score_threshold: float) -> "ImageResult":
        """The same detections shown at another threshold (the model does not run again)."""
        return replace(self, score_threshold=score_threshold)

    def failed(self, reason: str) -> "ImageResult":
        """This file marked as failed: it keeps its size, loses its boxes."""
        return replace(self, boxes=(), error=reason)


def analyse_image(detector: Detector, filename: str, read: Callable[[], np.ndarray],
                  score_threshold: float) -> Tuple[ImageResult, Optional[np.ndarray]]:
    """Reads one image, runs the model on it and records the outcome; never raises for a bad file.

    Args:
      filename: the name the record and every table carry.
      read: returns the image as RGB ``uint8 [H, W, 3]`` or raises ImageReadError
        (e.g. ``lambda: read_image(path)``, a future's ``result``, an upload decoder).
      score_threshold: the threshold the record is shown at (the model keeps every box).
    Returns:
      The record and the pixels (None when the file could not be read or the model failed).
    """
    try:
        image = read()
    except ImageReadError as error:
        return ImageResult(filename, error=error.reason), None
    result = ImageResult(filename, int(image.shape[1]), int(image.shape[0]), score_threshold=score_threshold)
    try:
        boxes, seconds = timed_detect(detector, image)
    except Exception as error:  # noqa: BLE001 - one image the model chokes on must not stop the others
        return result.failed(f"model failed ({type(error).__name__}: {error})"), None
    return replace(result, boxes=tuple(boxes), seconds=seconds), image


def top_box(boxes: Sequence[Box]) -> Optional[Box]:
    """The most confident box, or None."""
    return max(boxes, key=lambda b: b.score or 0.0, default=None)


def image_finding(boxes: Sequence[Box]) -> Tuple[str, Optional[float]]:
    """The image-level reading of the boxes shown (already thresholded).

    Any malignant box makes the image suspicious, whatever benign boxes it also has:
    missing a cancer costs more than a second look at a benign lesion.
    Returns the sentence and the score it rests on (None without boxes).
    """
    malignant = [b.score for b in boxes if b.label == "malignant"]
    if malignant:
        return "suspicious for malignancy", max(malignant)
    if boxes:
        best = top_box(boxes)
        return f"{best.label}-appearing lesion", best.score
    return "no lesion above the threshold", None


def finding_line(boxes: Sequence[Box]) -> str:
    """The image-level finding with its score: ``"suspicious for malignancy (0.91)"``."""
    sentence, score = image_finding(boxes)
    return sentence if score is None else f"{sentence} ({score:.2f})"
