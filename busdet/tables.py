"""``predictions.csv`` and ``images.csv`` from per-image records: one builder for the CLI and the page.

    predictions_table(results)     # one row per shown box: filename,xmin,ymin,width,height,label,score
    images_table(results)          # one row per file: size, boxes, top label and score, status, error
    images_csv(results)            # the bytes predict.py writes and the page offers: identical
    read_results(predictions_path, images_path)   # the records back from the two files (--resume)

Both the batch writer and the page's downloads turn the tables into bytes with
:func:`busdet.files.csv_bytes`, so the same files give the same ``images.csv``.

``predictions.csv`` has the annotation CSV's geometry plus a score, so that it can
be compared with the output of ``tools/mask_to_bbox.py`` directly (and read back
by :func:`busdet.evaluation.read_predictions_csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import pandas as pd

from busdet.boxes import Box, box_from_xywh, box_to_pixel_xywh
from busdet.files import csv_bytes
from busdet.results import ImageResult, image_finding, top_box

PREDICTION_COLUMNS = ["filename", "xmin", "ymin", "width", "height", "label", "score"]
IMAGE_COLUMNS = ["filename", "width", "height", "boxes", "top_label", "top_score", "status", "error"]
BOX_COLUMNS = ["label", "score", "xmin", "ymin", "width", "height"]  # one image's boxes, for display


def predictions_frame(filename: str, boxes: Sequence[Box]) -> pd.DataFrame:
    """One row per box, most confident first, in :data:`PREDICTION_COLUMNS`."""
    rows = [[filename, *box_to_pixel_xywh(b), b.label, round(float(b.score), 4)]
            for b in sorted(boxes, key=lambda b: -(b.score or 0.0))]
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def predictions_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """``predictions.csv``: the shown boxes of every file, in input order."""
    frames = [predictions_frame(r.filename, r.shown_boxes) for r in results if r.shown_boxes]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)


def boxes_table(result: ImageResult) -> pd.DataFrame:
    """The shown boxes of one image for display, label and score first (:data:`BOX_COLUMNS`)."""
    return predictions_frame(result.filename, result.shown_boxes)[BOX_COLUMNS]


def image_row(result: ImageResult) -> list:
    """One ``images.csv`` row: size, shown box count, top label and score, status, error."""
    shown = result.shown_boxes
    best = top_box(shown)
    return [result.filename, result.width, result.height, len(shown), best.label if best else "",
            round(float(best.score), 4) if best else None, "ok" if result.ok else "error", result.error or ""]


def images_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """``images.csv``: one row per file given, unreadable ones included (status ``error`` and why)."""
    table = pd.DataFrame([image_row(r) for r in results], columns=IMAGE_COLUMNS)
    # Unreadable images have no size: keep the columns integer (not 512.0) with empty cells.
    return table.astype({"width": "Int64", "height": "Int64", "boxes": "Int64"})


def summary_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """:func:`images_table` with the image-level ``finding`` after the file name (the page's overview)."""
    table = images_table(results)
    table.insert(1, "finding", [image_finding(r.shown_boxes)[0] if r.ok else "" for r in results])
    return table


def predictions_csv(results: Sequence[ImageResult]) -> bytes:
    """``predictions.csv`` bytes (:func:`busdet.files.csv_bytes` of :func:`predictions_table`)."""
    return csv_bytes(predictions_table(results))


def images_csv(results: Sequence[ImageResult]) -> bytes:
    """``images.csv`` bytes (:func:`busdet.files.csv_bytes` of :func:`images_table`)."""
    return csv_bytes(images_table(results))


def read_results(predictions_path: Path, images_path: Path) -> List[ImageResult]:
    """The records behind a ``predictions.csv`` and ``images.csv`` written by this module.

    The inverse of :func:`predictions_table` and :func:`images_table`: the two tables of
    the records returned are the rows read, byte for byte. Each record holds its shown
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
    boxes = {name: tuple(box_from_xywh(*map(int, (r.xmin, r.ymin, r.width, r.height)), r.label, float(r.score))
                         for r in rows.itertuples())
             for name, rows in predictions.groupby("filename", sort=False)}
    return [_result_from_row(row, boxes.get(row.filename, ())) for row in images.itertuples()]


def _read_table(path: Path, columns: List[str]) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != columns:
        raise ValueError(f"columns {list(table.columns)}, expected {columns}")
    return table


def _result_from_row(row, boxes) -> ImageResult:
    """One ``images.csv`` row (all cells text) and its boxes -> the record that wrote them."""
    width, height = (int(row.width) if row.width else None), (int(row.height) if row.height else None)
    if row.status != "ok":
        return ImageResult(row.filename, width, height, error=row.error or "failed")
    result = ImageResult(row.filename, width, height, boxes, score_threshold=0.0)
    if len(boxes) != int(row.boxes):
        return result.failed("its rows in predictions.csv are incomplete")
    return result
