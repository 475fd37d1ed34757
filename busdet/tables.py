"""``predictions.csv`` and ``images.csv`` from per-image records: one builder for the CLI and the page.

    predictions_table(results)     # one row per shown box (per frame of a loop):
                                   # filename,xmin,ymin,width,height,label,score,frame,width_mm,height_mm,
                                   # in_distribution
    images_table(results)          # one row per file: size, boxes, top label and score, status, error,
                                   # frames and key frame (loops), in_distribution, ood_score, warning
    images_csv(results)            # the bytes predict.py writes and the page offers: identical
    read_results(predictions_path, images_path)   # the records back from the two files (--resume)

Both the batch writer and the page's downloads turn the tables into bytes with
:func:`busdet.files.csv_bytes`, so the same files give the same ``images.csv``.

``predictions.csv`` starts with the seed's seven columns, the annotation CSV's
geometry plus a score, so that it can be compared with the output of
``tools/mask_to_bbox.py`` directly (and read back by
:func:`busdet.evaluation.read_predictions_csv`). Then come ``frame`` (1-based in a
multi-frame file, empty otherwise), ``width_mm,height_mm`` (empty without calibration) and
``in_distribution``: False when the image does not look like the breast ultrasound the
model was trained on (:mod:`busdet.ood`), so its boxes are not to be trusted; ``images.csv``
then says why in ``warning``, beside the learned score ``ood_score``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from busdet.boxes import Box, box_from_xywh, box_to_pixel_xywh
from busdet.files import csv_bytes, read_csv
from busdet.ood import ImageCheck, reasons_from_warning
from busdet.results import ImageResult, result_finding, top_box

# The seed's columns, which tools/evaluate.py reads, then what DICOM adds.
SEED_PREDICTION_COLUMNS = ["filename", "xmin", "ymin", "width", "height", "label", "score"]
PREDICTION_COLUMNS = SEED_PREDICTION_COLUMNS + ["frame", "width_mm", "height_mm", "in_distribution"]
IMAGE_COLUMNS = ["filename", "width", "height", "boxes", "top_label", "top_score", "status", "error",
                 "frames", "key_frame", "in_distribution", "ood_score", "warning"]
BOX_COLUMNS = ["label", "score", "xmin", "ymin", "width", "height", "width_mm", "height_mm"]  # for display
# The numeric and true/false columns; the others hold text as ``object`` (a file name need not be valid
# UTF-8, which pandas' string type refuses). Columns that may be empty: nullable types, so that integers
# stay 512 (not 512.0) and gaps stay empty.
_PREDICTION_TYPES = {"xmin": "int64", "ymin": "int64", "width": "int64", "height": "int64", "score": "float64",
                     "frame": "Int64", "width_mm": "Float64", "height_mm": "Float64", "in_distribution": "boolean"}
_IMAGE_TYPES = {"width": "Int64", "height": "Int64", "boxes": "Int64", "top_score": "float64", "frames": "Int64",
                "key_frame": "Int64", "in_distribution": "boolean", "ood_score": "Float64"}


def build_table(rows: list, columns: List[str], numeric_types: dict) -> pd.DataFrame:
    """Rows -> a table whose ``numeric_types`` columns get those types and whose others stay ``object`` text."""
    return pd.DataFrame(rows, columns=columns, dtype=object).astype(numeric_types)


def prediction_rows(result: ImageResult) -> list:
    """One :data:`PREDICTION_COLUMNS` row per shown box of the file (per frame the tables hold),
    frame by frame, most confident first."""
    rows = []
    for frame, boxes in result.shown_frames:
        for box in sorted(boxes, key=lambda b: -(b.score or 0.0)):
            size = result.size_mm(box) or [None, None]
            rows.append([result.filename, *box_to_pixel_xywh(box), box.label, round(float(box.score), 4),
                         frame, *size, result.in_distribution])
    return rows


def predictions_frame(filename: str, boxes: Sequence[Box]) -> pd.DataFrame:
    """The :data:`PREDICTION_COLUMNS` rows of one single image's boxes (all of them, whatever their score)."""
    return predictions_table([ImageResult(filename, boxes=tuple(boxes), score_threshold=0.0)])


def predictions_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """``predictions.csv``: the shown boxes of every file, in input order."""
    rows = [row for result in results for row in prediction_rows(result)]
    return build_table(rows, PREDICTION_COLUMNS, _PREDICTION_TYPES)


def boxes_table(result: ImageResult, frame: Optional[int] = None) -> pd.DataFrame:
    """The shown boxes of one image (or of frame ``frame`` of a loop) for display, label and
    score first (:data:`BOX_COLUMNS`)."""
    if frame is not None:
        result = replace(result, frames=tuple(f for f in result.frames if f.number == frame), key_frame_only=False)
    return predictions_table([result])[BOX_COLUMNS]


def image_row(result: ImageResult) -> list:
    """One ``images.csv`` row: size, shown box count (all frames held), top label and score (the key
    frame's), status, error, frame count and key frame (loops), and the in-distribution check's outcome."""
    best = top_box(result.shown_boxes)
    score = result.check.score if result.check is not None else None
    return [result.filename, result.width, result.height, len(prediction_rows(result)), best.label if best else "",
            round(float(best.score), 4) if best else None, "ok" if result.ok else "error", result.error or "",
            result.frame_count, result.key_frame, result.in_distribution,
            None if score is None else round(score, 2), result.warning]


def images_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """``images.csv``: one row per file given, unreadable ones included (status ``error`` and why; one whose
    output could not be written keeps its boxes, here and in ``predictions.csv``)."""
    return build_table([image_row(r) for r in results], IMAGE_COLUMNS, _IMAGE_TYPES)


def summary_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """:func:`images_table` with the image-level ``finding`` after the file name (the page's overview)."""
    table = images_table(results)
    table.insert(1, "finding", [result_finding(r) if r.ok else "" for r in results])
    return table


def predictions_csv(results: Sequence[ImageResult]) -> bytes:
    """``predictions.csv`` bytes (:func:`busdet.files.csv_bytes` of :func:`predictions_table`)."""
    return csv_bytes(predictions_table(results))


def images_csv(results: Sequence[ImageResult]) -> bytes:
    """``images.csv`` bytes (:func:`busdet.files.csv_bytes` of :func:`images_table`)."""
    return csv_bytes(images_table(results))


def read_results(predictions_path: Path, images_path: Path) -> List[ImageResult]:
    """The records behind a ``predictions.csv`` and ``images.csv`` written by this module.

    The inverse of :func:`predictions_table` and :func:`images_table` for single images:
    the two tables of the records returned are the rows read, byte for byte. A DICOM
    file's frames and sizes in mm are not read back (the calibration is not in the
    tables), so ``--resume`` runs DICOM files again. Each record holds its shown
    boxes only (pixel geometry, scores rounded as written), at threshold 0. A record
    whose ``boxes`` count differs from its rows in ``predictions.csv`` (a run killed
    between the two writes) is marked failed, so that it is done again.

    Raises:
      OSError: a file cannot be read.
      ValueError: a file is not such a table (columns or cells), with the reason.
    """
    images = _read_table(images_path, IMAGE_COLUMNS)
    predictions = _read_table(predictions_path, PREDICTION_COLUMNS) if Path(predictions_path).exists() \
        else pd.DataFrame(columns=PREDICTION_COLUMNS)
    boxes: dict = {}  # by file name; not pandas' groupby, which turns names into its string type
    for r in predictions.itertuples():
        boxes.setdefault(r.filename, []).append(
            box_from_xywh(*map(int, (r.xmin, r.ymin, r.width, r.height)), r.label, float(r.score)))
    return [_result_from_row(row, tuple(boxes.get(row.filename, ()))) for row in images.itertuples()]


def _read_table(path: Path, columns: List[str]) -> pd.DataFrame:
    table = read_csv(path)
    if list(table.columns) != columns:
        raise ValueError(f"columns {list(table.columns)}, expected {columns}")
    return table


def _result_from_row(row, boxes) -> ImageResult:
    """One ``images.csv`` row (all cells text) and its boxes -> the record that wrote them."""
    width, height = (int(row.width) if row.width else None), (int(row.height) if row.height else None)
    if row.status != "ok":
        return ImageResult(row.filename, width, height, error=row.error or "failed")
    result = ImageResult(row.filename, width, height, boxes, score_threshold=0.0, check=_check_from_row(row))
    if len(boxes) != int(row.boxes):
        return result.failed("its rows in predictions.csv are incomplete")
    return result


def _check_from_row(row) -> Optional[ImageCheck]:
    """The in-distribution check an ``images.csv`` row records (its reasons read back from ``warning``)."""
    if not row.in_distribution:
        return None
    score = float(row.ood_score) if row.ood_score else None
    if row.in_distribution == "True":
        return ImageCheck(score)
    try:
        return ImageCheck(score, reasons_from_warning(row.warning))
    except ValueError as error:
        raise ValueError(f"{row.filename}: {error}") from None
