"""Reading the annotation and prediction CSVs, and checking that they belong together.

``predictions.csv`` is ``predict.py``'s table: the seed's seven columns
``filename,xmin,ymin,width,height,label,score`` (:data:`busdet.tables.SEED_PREDICTION_COLUMNS`)
with ``width``/``height`` the pixel extent, one row per box, in both forms: alone
(the seed's and older runs' files) or followed by ``frame,width_mm,height_mm``
(today's, which are not read). An image without any box may have no row at all
or one row with empty box fields. The annotation CSV (``tools/mask_to_bbox.py``)
has the same geometry without a score.

Every cell is read as text and checked before use: a NaN, an empty or negative
width, a score outside [0, 1] or an empty file is refused with the file, the
line and the reason, never used or dropped silently (it would change the metrics).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from busdet.annotations import ANNOTATION_COLUMNS, image_label
from busdet.boxes import Box, box_from_xywh
from busdet.files import read_csv
from busdet.tables import SEED_PREDICTION_COLUMNS

BOX_FIELDS = ["xmin", "ymin", "width", "height"]
NAMES_SHOWN = 5  # how many offending names a message lists before "... and N more"


class EvaluationInputError(ValueError):
    """Inputs that cannot be evaluated together; the message names the files and why."""


def name_some(names: Iterable[str], shown: int = NAMES_SHOWN) -> str:
    """``"a.png, b.png, c.png and 7 more"``: the first few names of a sorted list and a count."""
    names = sorted(names)
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


def read_box_rows(path: Path, columns: Sequence[str]) -> List[Tuple[str, str, Optional[Box]]]:
    """The rows of a box CSV as ``(filename, label, box or None)``; None for an image without lesions.

    A row has all four box fields (finite numbers, width and height above 0) or none;
    with a ``score`` column, a box needs a score in [0, 1].

    Raises:
      EvaluationInputError: an empty file, a missing column, or the first bad row
        (file, line number and reason).
    """
    try:
        frame = read_csv(path)
    except pd.errors.EmptyDataError:
        raise EvaluationInputError(f"{path}: file is empty (expected the header {','.join(columns)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: not a CSV table ({error})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationInputError(f"{path}: missing column(s) {', '.join(missing)} "
                                   f"(expected {','.join(columns)})")
    rows = []
    for line, row in enumerate(frame[list(columns)].itertuples(index=False), start=2):
        try:
            rows.append((row.filename, row.label, _row_box(row, scored="score" in columns)))
        except ValueError as error:
            raise EvaluationInputError(f"{path}: line {line}: {error}") from None
    return rows


def _row_box(row, scored: bool) -> Optional[Box]:
    """The box of one CSV row (all cells text), None without box fields; ValueError says what is wrong."""
    empty = [name for name in ("filename", "label") if not getattr(row, name)]
    if empty:
        raise ValueError(f"{' and '.join(empty)} empty")
    given = {name: getattr(row, name) for name in BOX_FIELDS}
    if not any(given.values()):
        return None
    if not all(given.values()):
        raise ValueError(f"{', '.join(n for n, v in given.items() if not v)} empty (give all four box fields, "
                         "or none for an image without lesions)")
    xmin, ymin, width, height = (_finite(name, text) for name, text in given.items())
    if width <= 0 or height <= 0:
        raise ValueError(f"width {given['width']} and height {given['height']} must both be above 0")
    if scored and not row.score:
        raise ValueError("score empty (every box needs one)")
    score = _finite("score", row.score) if scored else None
    if score is not None and not 0.0 <= score <= 1.0:
        raise ValueError(f"score {row.score} is not between 0 and 1")
    return box_from_xywh(xmin, ymin, width, height, row.label, score)


def _finite(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} {text!r} is not a finite number")
    return value


def read_predictions_csv(path: Path) -> Dict[str, List[Box]]:
    """Reads ``predictions.csv`` into ``{filename: [Box]}`` (pixel corners, with scores).

    Files with only empty-box rows map to an empty list; a header without rows gives ``{}``.

    Raises:
      EvaluationInputError: see :func:`read_box_rows`.
    """
    predictions: Dict[str, List[Box]] = {}
    for filename, _, box in read_box_rows(path, SEED_PREDICTION_COLUMNS):
        predictions.setdefault(filename, []).extend([box] if box else [])
    return predictions


def read_annotations_csv(path: Path) -> Tuple[Dict[str, List[Box]], Dict[str, str]]:
    """Reads an annotation CSV into ``{filename: [Box]}`` and ``{filename: image label}``.

    Rows with empty box fields are negative images: they appear with an empty list.
    The image label is that of :func:`busdet.annotations.image_label` over the
    image's rows (malignant if any lesion is malignant).

    Raises:
      EvaluationInputError: see :func:`read_box_rows`.
    """
    boxes: Dict[str, List[Box]] = {}
    labels: Dict[str, List[str]] = {}
    for filename, label, box in read_box_rows(path, ANNOTATION_COLUMNS):
        boxes.setdefault(filename, []).extend([box] if box else [])
        labels.setdefault(filename, []).append(label)
    return boxes, {name: image_label(names) for name, names in labels.items()}


def check_prediction_files(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, Sequence[Box]],
                           source: str = "predictions") -> None:
    """Refuses predictions for images the annotations do not list (the files do not belong together).

    Raises:
      EvaluationInputError: naming the first few such files and their count.
    """
    unknown = set(predictions) - set(truth)
    if unknown:
        raise EvaluationInputError(
            f"{source}: {len(unknown)} image(s) not in the annotations: {name_some(unknown)} "
            f"(are the annotation and prediction files from the same image set?)")


def key_by_annotation_names(truth: Mapping[str, Sequence[Box]],
                            predictions: Mapping[str, List[Box]]) -> Dict[str, List[Box]]:
    """Renames ``predict.py --recursive`` keys (``benign/x.png``) to the annotations' base names (``x.png``).

    A key the annotations list as it is, or whose base name they do not list, is
    kept unchanged (:func:`check_prediction_files` then names it).

    Raises:
      EvaluationInputError: two prediction paths share the base name of one annotated image.
    """
    renamed: Dict[str, List[Box]] = {}
    sources = defaultdict(list)
    for name, boxes in predictions.items():
        base = PurePosixPath(name.replace("\\", "/")).name
        key = base if name not in truth and base in truth else name
        sources[key].append(name)
        renamed[key] = boxes
    clashes = [f"{key} ({' and '.join(names)})" for key, names in sources.items() if len(names) > 1]
    if clashes:
        raise EvaluationInputError(f"predictions: several files share an annotated file name: {name_some(clashes)}")
    return renamed


def check_labels(boxes_by_image: Mapping[str, Sequence[Box]], classes: Sequence[str], source: str) -> None:
    """Refuses boxes whose class is not one of the label map's ``classes``.

    Raises:
      EvaluationInputError: naming the unknown labels.
    """
    unknown = {box.label for boxes in boxes_by_image.values() for box in boxes} - set(classes)
    if unknown:
        raise EvaluationInputError(f"{source}: label(s) {name_some(unknown)} not in the label map "
                                   f"({', '.join(classes)})")
