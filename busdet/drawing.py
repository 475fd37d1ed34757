"""The one drawing function, for ground truth and predictions alike.

    annotated = draw_boxes(image, boxes)                  # predictions: "malignant 0.91"
    annotated = draw_boxes(image, truth, caption="truth") # ground truth: "malignant"

Line width and text size follow the image size so that labels stay legible on
a 300 px crop and on a 1000 px frame. Colours are from the Okabe-Ito palette,
distinct for colour-blind readers too.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from busdet.boxes import Box

CLASS_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "benign": (86, 180, 233),    # sky blue
    "malignant": (213, 94, 0),   # vermillion
}
OTHER_COLOUR = (240, 228, 66)    # yellow, for classes outside the label map
TEXT_COLOUR = (0, 0, 0)
NO_LESION_TEXT = "no lesion above threshold"


def _style(image: np.ndarray) -> Tuple[int, float, int]:
    """Line thickness, font scale and text thickness for an image of this size."""
    short_side = min(image.shape[:2])
    thickness = max(2, int(round(short_side / 250)))
    font_scale = max(0.45, short_side / 700)
    return thickness, font_scale, max(1, thickness // 2)


def _label_text(box: Box) -> str:
    return box.label if box.score is None else f"{box.label} {box.score:.2f}"


def _draw_tag(canvas: np.ndarray, text: str, x: int, y: int, colour, font_scale: float, weight: int) -> None:
    """Draws ``text`` on a filled tag whose bottom-left is (x, y), kept inside the image."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, weight)
    height, width = canvas.shape[:2]
    pad = max(2, weight * 2)
    x = int(np.clip(x, 0, max(0, width - text_w - 2 * pad)))
    top = y - text_h - baseline - 2 * pad
    if top < 0:  # no room above the box: put the tag just inside it
        top = min(max(0, y), max(0, height - text_h - baseline - 2 * pad))
    cv2.rectangle(canvas, (x, top), (x + text_w + 2 * pad, top + text_h + baseline + 2 * pad), colour, -1)
    cv2.putText(canvas, text, (x + pad, top + pad + text_h), font, font_scale, TEXT_COLOUR, weight, cv2.LINE_AA)


def _on_canvas(edge: float, size: int) -> int:
    """A box edge in whole pixels, held to just outside an image ``size`` pixels across: a box beyond
    the image (a hand-made annotation, another image's box) is drawn along its border, never handed
    to OpenCV as a number it cannot hold."""
    return int(round(min(max(edge, -1.0), size + 1.0)))


def draw_boxes(image: np.ndarray, boxes: Sequence[Box], caption: Optional[str] = None,
               mark_empty: bool = True) -> np.ndarray:
    """Returns a copy of ``image`` with ``boxes`` drawn; the input is not modified.

    Args:
      image: RGB ``uint8 [H, W, 3]``.
      boxes: pixel-corner boxes; a box with a score is labelled "name score".
      caption: optional text in the top-left corner (e.g. "truth", "prediction").
      mark_empty: write :data:`NO_LESION_TEXT` when ``boxes`` is empty, so an image
        without findings is visibly processed, not silently skipped.
    Returns:
      RGB ``uint8 [H, W, 3]``.
    """
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    thickness, font_scale, weight = _style(canvas)
    # Draw the most confident last so that its outline and tag stay on top.
    for box in sorted(boxes, key=lambda b: -1.0 if b.score is None else b.score):
        colour = CLASS_COLOURS.get(box.label, OTHER_COLOUR)
        top_left = (_on_canvas(box.xmin, width), _on_canvas(box.ymin, height))
        bottom_right = (_on_canvas(box.xmax, width) - 1, _on_canvas(box.ymax, height) - 1)
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        _draw_tag(canvas, _label_text(box), top_left[0], top_left[1], colour, font_scale, weight)
    notes = [text for text in (caption, NO_LESION_TEXT if mark_empty and not boxes else None) if text]
    if notes:
        _draw_tag(canvas, " | ".join(notes), 0, canvas.shape[0], (255, 255, 255), font_scale, weight)
    return canvas
