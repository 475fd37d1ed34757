"""Take-away files for analysed images, built in memory for the page's download buttons.

    result = ImageResult("scan.png", image, shown_boxes, score_threshold=0.7, seconds=0.4)
    annotated_png(result)                   # PNG bytes of the image with its boxes drawn
    predictions_csv([result])               # predictions.csv columns (busdet.results.PREDICTION_COLUMNS)
    predictions_json([result])              # one record per image, boxes as integer x, y, width, height
    results_zip(results)                    # all of the above for several images, one archive

Nothing here touches the disk: the bytes go straight to the browser, so an
uploaded image never lands in a file on the server.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from busdet.boxes import Box, box_to_pixel_xywh
from busdet.drawing import draw_boxes
from busdet.images import encode_png
from busdet import results as results_lib
from busdet.results import IMAGE_COLUMNS, image_finding, image_row

# A fixed timestamp inside the ZIP: the archive then depends on the results only
# and does not record when someone looked at the images.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class ImageResult:
    """What the page knows about one file after detection.

    Attributes:
      filename: the name the user gave the file (shown and written as text only).
      image: the decoded RGB ``uint8 [H, W, 3]``; None when the file could not be read.
      boxes: the boxes shown, already above ``score_threshold``, in pixel corners.
      score_threshold: the threshold the boxes were filtered with.
      seconds: model wall time for this image (None when it did not run).
      error: one line naming the file and why it could not be read, else None.
    """

    filename: str
    image: Optional[np.ndarray] = None
    boxes: Tuple[Box, ...] = ()
    score_threshold: Optional[float] = None
    seconds: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None

    @property
    def size(self) -> Tuple[Optional[int], Optional[int]]:
        """(width, height) in pixels, (None, None) for an unreadable file."""
        return (int(self.image.shape[1]), int(self.image.shape[0])) if self.ok else (None, None)


def download_stem(filename: str) -> str:
    """A file-name stem safe to offer for download: ``"../a b*.png"`` -> ``"a_b_"``.

    Keeps letters, digits, ``-``, ``_`` and ``.``; anything else (path parts,
    spaces, quotes, markup) becomes ``_``.
    """
    stem = PurePath(filename.replace("\\", "/")).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "image"


def finding_line(boxes: Sequence[Box]) -> str:
    """The image-level finding with its score: ``"suspicious for malignancy (0.91)"``."""
    sentence, score = image_finding(boxes)
    return sentence if score is None else f"{sentence} ({score:.2f})"


def annotated_image(result: ImageResult) -> np.ndarray:
    """The image with its shown boxes drawn: RGB ``uint8 [H, W, 3]``."""
    return draw_boxes(result.image, result.boxes)


def annotated_png(result: ImageResult) -> bytes:
    """PNG bytes of :func:`annotated_image` (lossless, full resolution)."""
    return encode_png(annotated_image(result))


def predictions_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """One row per shown box of the readable images, in :data:`PREDICTION_COLUMNS`."""
    return results_lib.predictions_table((r.filename, r.boxes) for r in results if r.ok)


def boxes_table(result: ImageResult) -> pd.DataFrame:
    """The boxes of one image for display: label, score, xmin, ymin, width, height."""
    return predictions_table([result])[["label", "score", "xmin", "ymin", "width", "height"]]


def predictions_csv(results: Sequence[ImageResult]) -> bytes:
    """``predictions.csv`` bytes (UTF-8), the CLI's columns, for one or several images."""
    return predictions_table(results).to_csv(index=False).encode("utf-8")


def images_table(results: Sequence[ImageResult]) -> pd.DataFrame:
    """One row per file: ``filename``, the image-level ``finding``, then the rest of :data:`IMAGE_COLUMNS`.

    Unreadable files are rows with status ``error`` and the reason, so that a
    batch summary accounts for every file the user gave.
    """
    rows = [image_row(r.filename, *r.size, r.boxes, error=r.error) for r in results]
    table = pd.DataFrame(rows, columns=IMAGE_COLUMNS)
    table.insert(1, "finding", [image_finding(r.boxes)[0] if r.ok else "" for r in results])
    return table


def images_csv(results: Sequence[ImageResult]) -> bytes:
    """``images.csv`` bytes: :data:`IMAGE_COLUMNS` only, as the CLI writes them."""
    return images_table(results)[IMAGE_COLUMNS].to_csv(index=False).encode("utf-8")


def box_record(box: Box) -> Dict:
    """A box as JSON-ready integers ``x, y, width, height`` (the CSV's geometry)."""
    xmin, ymin, width, height = box_to_pixel_xywh(box)
    score = None if box.score is None else round(float(box.score), 4)
    return {"xmin": xmin, "ymin": ymin, "width": width, "height": height, "label": box.label, "score": score}


def image_record(result: ImageResult) -> Dict:
    """Everything known about one file as a JSON-ready dict."""
    width, height = result.size
    sentence, score = image_finding(result.boxes) if result.ok else ("", None)
    return {"filename": result.filename, "width": width, "height": height,
            "score_threshold": result.score_threshold, "finding": sentence,
            "finding_score": None if score is None else round(float(score), 4),
            "inference_seconds": None if result.seconds is None else round(result.seconds, 3),
            "error": result.error, "boxes": [box_record(b) for b in result.boxes]}


def predictions_json(results: Sequence[ImageResult]) -> bytes:
    """A JSON list of :func:`image_record` (UTF-8, indented)."""
    return json.dumps([image_record(r) for r in results], indent=2, ensure_ascii=False).encode("utf-8")


def image_downloads(result: ImageResult) -> List[Tuple[str, str, str, Callable[[], bytes]]]:
    """The take-away files of one image: ``(label, file name, MIME type, build)``.

    ``build`` makes the bytes only when called, so that a page can offer the
    files without encoding them on every redraw.
    """
    stem = download_stem(result.filename)
    return [("Annotated PNG", f"{stem}_annotated.png", "image/png", lambda: annotated_png(result)),
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


def results_zip(results: Sequence[ImageResult]) -> bytes:
    """One ZIP with ``predictions.csv``, ``images.csv``, ``predictions.json`` and
    ``annotated/<name>_annotated.png`` for every readable image."""
    readable = [r for r in results if r.ok]
    png_names = _unique_names([download_stem(r.filename) for r in readable], "_annotated.png")
    members = [("predictions.csv", predictions_csv(results)), ("images.csv", images_csv(results)),
               ("predictions.json", predictions_json(results))]
    members += [(f"annotated/{name}", annotated_png(r)) for name, r in zip(png_names, readable)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
