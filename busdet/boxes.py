"""The one box record used for ground truth, predictions, drawing, CSV/JSON and COCO.

Inside the code a box is *pixel corners*: ``xmin, ymin`` is the top-left corner of
the first pixel it covers and ``xmax, ymax`` the bottom-right corner of the last one
(max exclusive, continuous coordinates). A box covering columns 3..5 therefore has
``xmin=3, xmax=6``. The edges convert through named functions only:

- the annotation/prediction CSV and COCO use ``x, y, width, height`` with
  ``width = xmax - xmin`` (the inclusive pixel extent: columns 3..5 -> width 3);
- the SavedModel returns normalized ``[ymin, xmin, ymax, xmax]`` of the input image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable, List, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Box:
    """One lesion box in pixel corners (max exclusive), with its class and score.

    ``score`` is None for ground truth and a confidence in [0, 1] for predictions.
    """

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: str
    score: Optional[float] = None

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def with_label(self, label: str) -> "Box":
        return replace(self, label=label)

    def as_dict(self) -> dict:
        return asdict(self)


def box_from_xywh(x: float, y: float, width: float, height: float, label: str,
                  score: Optional[float] = None) -> Box:
    """``[x, y, width, height]`` (CSV / COCO convention) -> :class:`Box`."""
    return Box(float(x), float(y), float(x) + float(width), float(y) + float(height), label, score)


def box_to_xywh(box: Box) -> List[float]:
    """:class:`Box` -> ``[x, y, width, height]`` (CSV / COCO convention)."""
    return [box.xmin, box.ymin, box.width, box.height]


def box_to_pixel_xywh(box: Box) -> List[int]:
    """:class:`Box` -> integer ``[x, y, width, height]`` as written to the CSVs.

    Corners are rounded to the nearest pixel edge, so mask-derived boxes (integer
    corners) round-trip exactly and predicted boxes land on the nearest pixel.
    """
    xmin, ymin = int(round(box.xmin)), int(round(box.ymin))
    xmax, ymax = int(round(box.xmax)), int(round(box.ymax))
    return [xmin, ymin, xmax - xmin, ymax - ymin]


def offset_box(box: Box, dx: float, dy: float) -> Box:
    """``box`` moved by ``(dx, dy)`` pixels: from a crop's pixels to those of the frame it was cut from."""
    return replace(box, xmin=box.xmin + dx, ymin=box.ymin + dy, xmax=box.xmax + dx, ymax=box.ymax + dy)


def box_size_mm(box: Box, mm_per_pixel: Sequence[float]) -> List[float]:
    """``[width_mm, height_mm]`` of the box as the CSVs write it (:func:`box_to_pixel_xywh`), to 0.1 mm.

    ``mm_per_pixel`` is ``(x, y)``; the sizes are those integer pixel extents times it,
    so that they agree with the ``width``/``height`` columns beside them.
    """
    _, _, width, height = box_to_pixel_xywh(box)
    return [round(width * float(mm_per_pixel[0]), 1), round(height * float(mm_per_pixel[1]), 1)]


def boxes_from_normalized_yxyx(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                               class_names: dict, image_width: int, image_height: int) -> List[Box]:
    """Model output -> boxes in original-image pixels, clipped to the image.

    Args:
      boxes: float array ``[N, 4]`` of normalized ``[ymin, xmin, ymax, xmax]``.
      classes: int array ``[N]`` of label-map ids.
      scores: float array ``[N]``.
      class_names: ``{id: name}`` from the label map; unknown ids become ``"class_<id>"``.
      image_width, image_height: size of the image the boxes refer to, in pixels.
    """
    scale = np.array([image_height, image_width, image_height, image_width], dtype=np.float64)
    pixels = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0.0, 1.0) * scale
    result = []
    for (ymin, xmin, ymax, xmax), class_id, score in zip(pixels, classes, scores):
        name = class_names.get(int(class_id), f"class_{int(class_id)}")
        result.append(Box(float(xmin), float(ymin), float(xmax), float(ymax), name, float(score)))
    return result


def boxes_to_normalized_yxyx(boxes: Sequence[Box], image_width: int, image_height: int) -> np.ndarray:
    """:class:`Box` list -> float32 ``[N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``."""
    if not boxes:
        return np.zeros((0, 4), dtype=np.float32)
    corners = np.array([[b.ymin, b.xmin, b.ymax, b.xmax] for b in boxes], dtype=np.float64)
    scale = np.array([image_height, image_width, image_height, image_width], dtype=np.float64)
    return (corners / scale).astype(np.float32)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    inter_w = min(a.xmax, b.xmax) - max(a.xmin, b.xmin)
    inter_h = min(a.ymax, b.ymax) - max(a.ymin, b.ymin)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    return inter / (a.area + b.area - inter)


def above_threshold(boxes: Iterable[Box], score_threshold: float) -> List[Box]:
    """The boxes whose score is at or above ``score_threshold``."""
    return [b for b in boxes if b.score is not None and b.score >= score_threshold]
