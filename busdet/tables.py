"""``predictions.csv`` and ``images.csv`` from per-image records: one builder for the CLI and the page.

    predictions_table(results)     # one row per shown box: filename,xmin,ymin,width,height,label,score
    images_table(results)          # one row per file: size, boxes, top label and score, status, error
    images_csv(results)            # the bytes predict.py writes and the page offers: identical

Both the batch writer and the page's downloads turn the tables into bytes with
:func:`busdet.files.csv_bytes`, so the same files give the same ``images.csv``.

``predictions.csv`` has the annotation CSV's geometry plus a score, so that it can
be compared with the output of ``tools/mask_to_bbox.py`` directly (and read back
by :func:`busdet.evaluation.read_predictions_csv`).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from busdet.boxes import Box, box_to_pixel_xywh
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
