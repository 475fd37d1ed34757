"""Result tables and the image-level finding, shared by ``predict.py`` and the app.

``predictions.csv`` has the annotation CSV's geometry plus a score
(``filename,xmin,ymin,width,height,label,score``), so that it can be compared
with the output of ``tools/mask_to_bbox.py`` directly.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from busdet.boxes import Box, box_to_pixel_xywh

PREDICTION_COLUMNS = ["filename", "xmin", "ymin", "width", "height", "label", "score"]
IMAGE_COLUMNS = ["filename", "width", "height", "boxes", "top_label", "top_score", "status", "error"]


def predictions_frame(filename: str, boxes: Sequence[Box]) -> pd.DataFrame:
    """One row per box, most confident first, in the ``predictions.csv`` columns."""
    rows = [[filename, *box_to_pixel_xywh(b), b.label, round(float(b.score), 4)]
            for b in sorted(boxes, key=lambda b: -(b.score or 0.0))]
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def predictions_table(boxes_by_file: Iterable[Tuple[str, Sequence[Box]]]) -> pd.DataFrame:
    """``predictions.csv`` rows of several images: ``(filename, boxes)`` pairs -> one frame."""
    frames = [predictions_frame(name, boxes) for name, boxes in boxes_by_file if boxes]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)


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


def image_row(filename: str, width: Optional[int], height: Optional[int], boxes: Sequence[Box],
              error: Optional[str] = None) -> List:
    """One ``images.csv`` row: size, box count, top label and score, status, error."""
    best = top_box(boxes)
    return [filename, width, height, len(boxes), best.label if best else "",
            round(float(best.score), 4) if best else None, "error" if error else "ok", error or ""]
