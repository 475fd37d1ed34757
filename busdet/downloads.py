"""Take-away files for analysed images, built in memory for the page's download buttons.

    annotated_png(result, image)            # PNG bytes of the image with its shown boxes drawn
    predictions_json([result])              # one record per image, boxes as integer x, y, width, height
    results_zip(results, images)            # tables, JSON and annotated PNGs of several images, one archive

The CSV tables come from :mod:`busdet.tables`, byte for byte what ``predict.py``
writes. Nothing here touches the disk: the bytes go straight to the browser, so an
uploaded image never lands in a file on the server.
"""

from __future__ import annotations

import io
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from busdet.boxes import Box, box_to_pixel_xywh
from busdet.drawing import draw_boxes
from busdet.files import json_text, safe_stem
from busdet.images import encode_png
from busdet.results import ImageResult, image_finding
from busdet.tables import images_csv, predictions_csv

# A fixed timestamp inside the ZIP: the archive then depends on the results only
# and does not record when someone looked at the images.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def annotated_image(result: ImageResult, image: np.ndarray) -> np.ndarray:
    """``image`` (RGB ``uint8 [H, W, 3]``) with the result's shown boxes drawn, a new array."""
    return draw_boxes(image, result.shown_boxes)


def annotated_png(result: ImageResult, image: np.ndarray) -> bytes:
    """PNG bytes of :func:`annotated_image` (lossless, full resolution)."""
    return encode_png(annotated_image(result, image))


def box_record(box: Box) -> Dict:
    """A box as JSON-ready integers ``x, y, width, height`` (the CSV's geometry)."""
    xmin, ymin, width, height = box_to_pixel_xywh(box)
    score = None if box.score is None else round(float(box.score), 4)
    return {"xmin": xmin, "ymin": ymin, "width": width, "height": height, "label": box.label, "score": score}


def image_record(result: ImageResult) -> Dict:
    """Everything known about one file as a JSON-ready dict (the shown boxes only)."""
    sentence, score = image_finding(result.shown_boxes) if result.ok else ("", None)
    return {"filename": result.filename, "width": result.width, "height": result.height,
            "score_threshold": result.score_threshold, "finding": sentence,
            "finding_score": None if score is None else round(float(score), 4),
            "inference_seconds": None if result.seconds is None else round(result.seconds, 3),
            "error": result.error, "boxes": [box_record(b) for b in result.shown_boxes]}


def predictions_json(results: Sequence[ImageResult]) -> bytes:
    """A JSON list of :func:`image_record` (UTF-8, indented)."""
    return json_text([image_record(r) for r in results]).encode("utf-8")


def image_downloads(result: ImageResult, image: np.ndarray) -> List[Tuple[str, str, str, Callable[[], bytes]]]:
    """The take-away files of one image: ``(label, file name, MIME type, build)``.

    ``build`` makes the bytes only when called, so that a page can offer the
    files without encoding them on every redraw.
    """
    stem = safe_stem(result.filename)
    return [("Annotated PNG", f"{stem}_annotated.png", "image/png", lambda: annotated_png(result, image)),
            ("Boxes CSV", f"{stem}_predictions.csv", "text/csv", lambda: predictions_csv([result])),
            ("Boxes JSON", f"{stem}_predictions.json", "application/json", lambda: predictions_json([result]))]


def _unique_names(stems: Sequence[str], suffix: str) -> List[str]:
    """``stem + suffix`` for each, with ``_2``, ``_3``... where two uploads share a name."""
    seen: Dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}{suffix}" if seen[stem] == 1 else f"{stem}_{seen[stem]}{suffix}")
    return names


def results_zip(results: Sequence[ImageResult], images: Sequence[Optional[np.ndarray]]) -> bytes:
    """One ZIP with ``predictions.csv``, ``images.csv``, ``predictions.json`` and
    ``annotated/<name>_annotated.png`` for every readable image.

    ``images[i]`` holds the pixels of ``results[i]`` (None where there are none).
    """
    drawn = [(r, image) for r, image in zip(results, images) if r.ok and image is not None]
    png_names = _unique_names([safe_stem(r.filename) for r, _ in drawn], "_annotated.png")
    members = [("predictions.csv", predictions_csv(results)), ("images.csv", images_csv(results)),
               ("predictions.json", predictions_json(results))]
    members += [(f"annotated/{name}", annotated_png(r, image)) for name, (r, image) in zip(png_names, drawn)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
