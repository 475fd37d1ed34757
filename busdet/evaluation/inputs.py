"""Reading the annotation and prediction CSVs, and checking that they belong together.

``predictions.csv`` is ``predict.py``'s table: the seed's seven columns
``filename,xmin,ymin,width,height,label,score`` (:data:`busdet.tables.SEED_PREDICTION_COLUMNS`)
with ``width``/``height`` the pixel extent, one row per box, in both forms: alone
(the seed's and older runs' files) or followed by ``frame,width_mm,height_mm``
(today's, which are not read). An image without any box may have no row at all
or one row with empty box fields. The annotation CSV (``tools/mask_to_bbox.py``)
has the same geometry without a score.

Every cell is read as text and checked before use: a NaN, an empty or negative
width, a negative corner, a score outside [0, 1], a box listed twice, a row with
more or fewer cells than the header or an empty file is refused with the file, the
line and the reason, never used or dropped silently (it would change the metrics).
:func:`read_inputs` reads both files as ``tools/evaluate.py`` does and checks that
they belong together and to the label map.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from busdet.annotations import ANNOTATION_COLUMNS, DEFAULT_NEGATIVE_CLASS, image_label
from busdet.boxes import Box, box_from_xywh
from busdet.files import TEXT_ERRORS, TableError, name_some, read_table
from busdet.tables import SEED_PREDICTION_COLUMNS

BOX_FIELDS = ["xmin", "ymin", "width", "height"]


class EvaluationInputError(ValueError):
    """Inputs that cannot be evaluated together; the message names the files and why."""


class BoxRow(NamedTuple):
    """One row of a box CSV: its line in the file, the image, the label, and the box (None: no lesion)."""

    line: int
    filename: str
    label: str
    box: Optional[Box]


def read_box_rows(path: Path, columns: Sequence[str]) -> List[BoxRow]:
    """The rows of a box CSV, each with its line number; ``box`` None for an image without lesions.

    A row has all four box fields (finite numbers, the corner at 0 or beyond, width and
    height above 0) or none; with a ``score`` column, a box needs a score in [0, 1]. A box
    listed twice for an image would count twice: the same corners (for a prediction also the
    same class, score and ``frame``, where the file has that column) are refused.

    Raises:
      EvaluationInputError: a folder or a missing file, an empty file, a malformed table,
        a missing column, or the first bad row (file, line number and reason).
    """
    try:
        frame = read_table(path, columns)
    except TableError as error:
        raise EvaluationInputError(str(error)) from None
    frames = frame["frame"] if "frame" in frame.columns else [""] * len(frame)
    rows, seen = [], {}
    for line, row, frame_number in zip(frame.index, frame[list(columns)].itertuples(index=False), frames):
        try:
            box = _row_box(row, scored="score" in columns)
        except ValueError as error:
            raise EvaluationInputError(f"{path}: line {line}: {error}") from None
        if box is not None:  # a true lesion is one box whatever its class; a prediction may score two
            corners = (box.xmin, box.ymin, box.xmax, box.ymax)
            first = seen.setdefault((row.filename, frame_number, box if box.score is not None else corners), line)
            if first != line:
                raise EvaluationInputError(f"{path}: line {line}: the same box as line {first} (a box listed "
                                           "twice would count twice; remove one)")
        rows.append(BoxRow(line, row.filename, row.label, box))
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
    if xmin < 0 or ymin < 0:
        raise ValueError(f"xmin {given['xmin']} and ymin {given['ymin']} must both be 0 or more "
                         "(pixels of the image, from its top-left corner)")
    if not math.isfinite(xmin + width) or not math.isfinite(ymin + height):
        raise ValueError("the box's far corner is beyond any number (xmin + width or ymin + height)")
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
    for row in read_box_rows(path, SEED_PREDICTION_COLUMNS):
        predictions.setdefault(row.filename, []).extend([row.box] if row.box else [])
    return predictions


def read_annotations_csv(path: Path) -> Tuple[Dict[str, List[Box]], Dict[str, str]]:
    """Reads an annotation CSV into ``{filename: [Box]}`` and ``{filename: image label}``.

    Rows with empty box fields are negative images: they appear with an empty list.
    The image label is that of :func:`busdet.annotations.image_label` over the
    image's rows (malignant if any lesion is malignant).

    Raises:
      EvaluationInputError: see :func:`read_box_rows`; also an image listed both without
        lesions (a row without a box) and with one.
    """
    boxes: Dict[str, List[Box]] = {}
    labels: Dict[str, List[str]] = {}
    negative_lines: Dict[str, int] = {}
    for row in read_box_rows(path, ANNOTATION_COLUMNS):
        if row.box is None:
            negative_lines.setdefault(row.filename, row.line)
        boxes.setdefault(row.filename, []).extend([row.box] if row.box else [])
        labels.setdefault(row.filename, []).append(row.label)
    both = sorted((line, name) for name, line in negative_lines.items() if boxes[name])
    if both:
        line, name = both[0]
        raise EvaluationInputError(f"{path}: line {line}: {name} is listed without lesions here and with "
                                   f"{len(boxes[name])} on other lines; which is it?")
    return boxes, {name: image_label(names) for name, names in labels.items()}


def check_prediction_files(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, Sequence[Box]],
                           source: str = "predictions") -> None:
    """Refuses predictions for images the annotations do not list (the files do not belong together).

    Raises:
      EvaluationInputError: naming the first few such files and their count.
    """
    unknown = set(predictions) - set(truth)
    if unknown:
        known = {_as_text(name) for name in truth}
        recoded = sum(_as_text(name) in known for name in unknown)
        hint = (f"the annotations hold {recoded} of these names in another encoding: save both files as UTF-8"
                if recoded else "are the annotation and prediction files from the same image set?")
        raise EvaluationInputError(
            f"{source}: {len(unknown)} image(s) not in the annotations: {name_some(unknown)} ({hint})")


def _as_text(name: str) -> str:
    """A name as text whatever file it was read from: one holding bytes that are not UTF-8 (a CSV saved
    as Latin-1 or Windows-1252, read with those bytes kept) as those bytes read in Latin-1."""
    data = name.encode("utf-8", TEXT_ERRORS)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def key_by_annotation_names(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, List[Box]],
                            source: str = "predictions") -> Dict[str, List[Box]]:
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
        raise EvaluationInputError(f"{source}: several files share an annotated file name: {name_some(clashes)}")
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


def read_inputs(annotations_path: Path, predictions_path: Path, classes: Sequence[str],
                negative_class: str = DEFAULT_NEGATIVE_CLASS
                ) -> Tuple[Dict[str, List[Box]], Dict[str, str], Dict[str, List[Box]]]:
    """Both CSVs of ``tools/evaluate.py``, checked together: ``(truth, image labels, predictions)``.

    Predictions are keyed by the annotations' names (:func:`key_by_annotation_names`). Every
    message names the file it is about.

    Raises:
      EvaluationInputError: a file is unusable (:func:`read_box_rows`), the annotations list no
        image, a box's class is not one of ``classes`` (the label map's), an image without lesions
        is labelled neither one of them nor ``negative_class``, or predictions name images the
        annotations do not list.
    """
    truth, image_labels = read_annotations_csv(annotations_path)
    if not truth:
        raise EvaluationInputError(f"{annotations_path}: no rows under the header (an annotation CSV lists "
                                   "every image evaluated, those without lesions on a row without a box)")
    check_labels(truth, classes, str(annotations_path))
    odd = {image_labels[name] for name, boxes in truth.items() if not boxes} - {*classes, negative_class}
    if odd:
        raise EvaluationInputError(f"{annotations_path}: image label(s) {name_some(odd)} of rows without a box "
                                   f"are neither in the label map ({', '.join(classes)}) nor {negative_class}")
    source = str(predictions_path)
    predictions = key_by_annotation_names(truth, read_predictions_csv(predictions_path), source)
    check_prediction_files(truth, predictions, source)
    check_labels(predictions, classes, source)
    return truth, image_labels, predictions
