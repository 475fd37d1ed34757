"""The one per-image record between the model and every output, and the one function that makes it.

    result, image = analyse_image(detector, "scan.png", lambda: read_image(path), score_threshold)
    result.shown_boxes                 # the boxes at or above result.score_threshold
    result.at_threshold(0.4)           # the same detections shown at another threshold
    result.message                     # "scan.png: not a recognised image format" for a failed file
    result.key_frame                   # a cine loop: the most suspicious frame (1-based), whose boxes
                                       # shown_boxes are; result.shown_frames: every frame the tables hold
    result.in_distribution             # False: the image does not look like the training images
    result.warning                     # (busdet.ood), and result.warning says why; its boxes stay

``app.py`` (through its cache) and ``predict.py`` (through :mod:`busdet.batch`)
both build every record with :func:`analyse_image`; :mod:`busdet.tables`,
:mod:`busdet.downloads` and the batch writer read nothing else, so the page and
the CLI cannot disagree on a file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from busdet.boxes import Box, above_threshold, box_size_mm, offset_box
from busdet.images import ImageReadError, Scan, as_scan
from busdet.inference import Detector, ImageShapeError, timed_run_model
from busdet.ood import WARNING, ImageCheck, check_image, summarise_checks

# --frames: every frame, every frame but only the key frame's rows in the tables, or an int N (every Nth).
FrameChoice = Union[str, int]
# The finding of an image the in-distribution check flags: no lesion reading at all.
UNTRUSTED_FINDING = f"not read: the image {WARNING}, its boxes are not to be trusted"
# What the annotated copy of such an image (or frame) says in its corner.
UNTRUSTED_CAPTION = "unlike the training images: boxes not to be trusted"


@dataclass(frozen=True)
class FrameBoxes:
    """Every detection of one frame of a multi-frame file; ``number`` is 1-based."""

    number: int
    boxes: Tuple[Box, ...]
    check: Optional[ImageCheck] = None


@dataclass(frozen=True)
class ImageResult:
    """What is known about one input file after detection.

    Attributes:
      filename: the file's name as the user gave it (relative path in a batch);
        shown and written as text only.
      width, height: the image's size in pixels; None when it could not be read.
      boxes: every detection, most confident first, in pixel corners (whatever the threshold).
      score_threshold: the threshold the boxes are shown at (:attr:`shown_boxes`).
      seconds: model wall time for this image (all its frames); None when the model did not run.
      error: why the file has no result (the reason only: :attr:`message` names the file), or which of
        its outputs could not be written (its detections then kept: :meth:`failed`); None if ok.
      frames: a multi-frame file's detections, one entry per frame run (``boxes`` is then empty).
      frame_count: how many frames a multi-frame file holds; None for a single image.
      key_frame_only: the tables keep only the key frame's boxes (``--frames key``).
      mm_per_pixel: ``(x, y)`` from the file's calibration (DICOM); None without one.
      check: the in-distribution check (:mod:`busdet.ood`) of the image, or of a loop's frames
        together (each frame's is in ``frames``); None when the model did not run.
    """

    filename: str
    width: Optional[int] = None
    height: Optional[int] = None
    boxes: Tuple[Box, ...] = ()
    score_threshold: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None
    frames: Tuple[FrameBoxes, ...] = ()
    frame_count: Optional[int] = None
    key_frame_only: bool = False
    mm_per_pixel: Optional[Tuple[float, float]] = None
    check: Optional[ImageCheck] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def in_distribution(self) -> Optional[bool]:
        """False when the image does not look like the training images; None when not checked."""
        return None if self.check is None else self.check.in_distribution

    @property
    def warning(self) -> str:
        """Why the boxes are not to be trusted (``""`` for an image in distribution or not checked)."""
        return self.check.warning if self.in_distribution is False else ""

    def _shown(self, boxes: Sequence[Box]) -> List[Box]:
        if self.score_threshold is None:
            return []
        return above_threshold(boxes, self.score_threshold)

    @property
    def key_frame(self) -> Optional[int]:
        """The most suspicious frame run (1-based) at this threshold; None for a single image.

        Frames that look like the training images rank first, then as their findings
        (:func:`image_finding`): any malignant box first, then the score; the earliest
        frame wins a tie (a loop without boxes: its first frame run).
        """
        if not self.frames:
            return None
        return max(self.frames, key=lambda f: (f.check is None or f.check.in_distribution,
                                               *suspicion(self._shown(f.boxes)), -f.number)).number

    @property
    def shown_boxes(self) -> List[Box]:
        """The boxes at or above :attr:`score_threshold` (none for a failed file); of the key frame in a loop."""
        return self.boxes_in_frame(self.key_frame) if self.frames else self._shown(self.boxes)

    def boxes_in_frame(self, number: int) -> List[Box]:
        """The shown boxes of frame ``number`` (1-based) of a loop; none for a frame not run."""
        return next((self._shown(f.boxes) for f in self.frames if f.number == number), [])

    def frame_check(self, number: Optional[int]) -> Optional[ImageCheck]:
        """The in-distribution check of frame ``number`` of a loop; of the image for ``None``."""
        if number is None:
            return self.check
        return next((f.check for f in self.frames if f.number == number), None)

    @property
    def shown_frames(self) -> List[Tuple[Optional[int], List[Box]]]:
        """``(frame number or None, shown boxes)`` for every frame the tables hold, in frame order."""
        if not self.frames:
            return [(None, self.shown_boxes)]
        numbers = [self.key_frame] if self.key_frame_only else [f.number for f in self.frames]
        return [(number, self.boxes_in_frame(number)) for number in numbers]

    def size_mm(self, box: Box) -> Optional[List[float]]:
        """``[width_mm, height_mm]`` of a box, or None when the file carries no calibration."""
        return None if self.mm_per_pixel is None else box_size_mm(box, self.mm_per_pixel)

    @property
    def message(self) -> str:
        """One line naming the file and what happened to it: ``"scan.png: file is empty"``."""
        return f"{self.filename}: {self.error or 'ok'}"

    def at_threshold(self, score_threshold: float) -> "ImageResult":
        """The same detections shown at another threshold (the model does not run again)."""
        return replace(self, score_threshold=score_threshold)

    def failed(self, reason: str, keep_result: bool = False) -> "ImageResult":
        """This file marked as failed: it keeps its size, loses its boxes and check; with ``keep_result``
        (the model ran, an output could not be written) it keeps them too, so the tables still hold them."""
        return replace(self, error=reason) if keep_result else replace(self, boxes=(), frames=(), check=None,
                                                                        error=reason)


def analyse_image(detector: Detector, filename: str, read: Callable[[], Union[np.ndarray, Scan]],
                  score_threshold: float, frames: FrameChoice = "all") -> Tuple[ImageResult, Optional[Scan]]:
    """Reads one file, runs the model on it (each frame of a loop) and records the outcome;
    never raises for a bad file.

    Args:
      filename: the name the record and every table carry.
      read: returns a :class:`busdet.images.Scan` or an RGB ``uint8 [H, W, 3]`` image, or raises
        ImageReadError (e.g. ``lambda: read_scan(path)``, a future's ``result``, an upload decoder).
      score_threshold: the threshold the record is shown at (the model keeps every box).
      frames: for a loop, ``"all"``, ``"key"`` (all run, the key frame's rows kept) or N (every Nth run).
    Returns:
      The record and the pixels (None when the file could not be read or the model failed).
    """
    try:
        scan = as_scan(read())
    except ImageReadError as error:
        return ImageResult(filename, error=error.reason), None
    height, width = scan.frames.shape[1:3]
    result = ImageResult(filename, int(width), int(height), score_threshold=score_threshold,
                         frame_count=scan.frame_count if scan.multi_frame else None,
                         key_frame_only=frames == "key", mm_per_pixel=scan.mm_per_pixel)
    try:
        detected, seconds = detect_frames(detector, scan, frame_numbers(scan.frame_count, frames))
    except ImageShapeError as error:
        return result.failed(str(error)), None
    except Exception as error:  # noqa: BLE001 - one image the model chokes on must not stop the others
        return result.failed(f"model failed ({type(error).__name__}: {error})"), None
    if scan.multi_frame:
        return replace(result, frames=detected, seconds=seconds,
                       check=summarise_checks([f.check for f in detected])), scan
    return replace(result, boxes=detected[0].boxes, seconds=seconds, check=detected[0].check), scan


def frame_numbers(frame_count: int, frames: FrameChoice = "all") -> List[int]:
    """The 1-based frames to run: all of them (``"all"``, ``"key"``) or every Nth from the first."""
    return list(range(1, frame_count + 1, frames if isinstance(frames, int) else 1))


def detect_frames(detector: Detector, scan: Scan, numbers: Sequence[int]) -> Tuple[Tuple[FrameBoxes, ...], float]:
    """Runs the model and the in-distribution check (:func:`busdet.ood.check_image`) on the imaging
    region of each frame; boxes come back in full-frame pixels.

    Returns:
      One :class:`FrameBoxes` per number, and the model's wall time over all of them.
    """
    xmin, ymin, xmax, ymax = scan.region or (0, 0, scan.frames.shape[2], scan.frames.shape[1])
    detected, total = [], 0.0
    for number in numbers:
        region = scan.frame(number)[ymin:ymax, xmin:xmax]
        boxes, features, seconds = timed_run_model(detector, region)
        detected.append(FrameBoxes(number, tuple(offset_box(b, xmin, ymin) for b in boxes),
                                   check_image(region, features, detector.ood)))
        total += seconds
    return tuple(detected), total


def untrusted_caption(check: Optional[ImageCheck]) -> Optional[str]:
    """:data:`UNTRUSTED_CAPTION` for a flagged image or frame, else None (for :func:`busdet.drawing.draw_boxes`)."""
    return UNTRUSTED_CAPTION if check is not None and not check.in_distribution else None


def top_box(boxes: Sequence[Box]) -> Optional[Box]:
    """The most confident box, or None."""
    return max(boxes, key=lambda b: b.score or 0.0, default=None)


def suspicion(boxes: Sequence[Box]) -> Tuple[int, float]:
    """A sortable rank of shown boxes: ``(1 if any is malignant, the finding's score or -1)``."""
    _, score = image_finding(boxes)
    return int(any(b.label == "malignant" for b in boxes)), -1.0 if score is None else score


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


def finding_line(boxes: Sequence[Box], mm_per_pixel: Optional[Sequence[float]] = None) -> str:
    """The image-level finding with its score, and the largest lesion's size when calibrated:
    ``"suspicious for malignancy (0.91); largest lesion 12.0 x 8.5 mm"``."""
    sentence, score = image_finding(boxes)
    line = sentence if score is None else f"{sentence} ({score:.2f})"
    if not boxes or mm_per_pixel is None:
        return line
    width, height = max((box_size_mm(b, mm_per_pixel) for b in boxes), key=lambda size: size[0] * size[1])
    return f"{line}; largest lesion {width:.1f} x {height:.1f} mm"


def result_finding(result: ImageResult) -> str:
    """The image-level reading of a record (:func:`image_finding`'s sentence), unless the image
    does not look like the training images: then :data:`UNTRUSTED_FINDING`, never a malignant headline."""
    if result.in_distribution is False:
        return UNTRUSTED_FINDING
    return image_finding(result.shown_boxes)[0]


def result_finding_line(result: ImageResult) -> str:
    """:func:`finding_line` of a record's shown boxes (the key frame of a loop), with its calibration;
    for an image unlike the training images, :data:`UNTRUSTED_FINDING` and the number of boxes drawn."""
    if result.in_distribution is False:
        return f"{UNTRUSTED_FINDING} ({len(result.shown_boxes)} box(es) drawn)"
    return finding_line(result.shown_boxes, result.mm_per_pixel)
