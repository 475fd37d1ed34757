"""Reading ``predictions.csv`` and checking that it belongs to an annotation CSV.

``predictions.csv`` is ``predict.py``'s table (:data:`busdet.results.PREDICTION_COLUMNS`):
``filename,xmin,ymin,width,height,label,score`` with ``width``/``height`` the
pixel extent, one row per box. An image without any box may have no row at all
or one row with empty box fields.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Mapping, Sequence

import pandas as pd

from busdet.boxes import Box, box_from_xywh
from busdet.tables import PREDICTION_COLUMNS

BOX_FIELDS = ["xmin", "ymin", "width", "height"]
NAMES_SHOWN = 5  # how many offending names a message lists before "... and N more"


class EvaluationInputError(ValueError):
    """Inputs that cannot be evaluated together; the message names the files and why."""


def name_some(names: Iterable[str], shown: int = NAMES_SHOWN) -> str:
    """``"a.png, b.png, c.png and 7 more"``: the first few names of a sorted list and a count."""
    names = sorted(names)
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


def read_predictions_csv(path: Path) -> Dict[str, List[Box]]:
    """Reads ``predictions.csv`` into ``{filename: [Box]}`` (pixel corners, with scores).

    Files with only empty-box rows map to an empty list; an empty file gives ``{}``.

    Raises:
      EvaluationInputError: missing columns, or a box row without a numeric score.
    """
    try:
        frame = pd.read_csv(path, dtype={"filename": str, "label": str}, keep_default_na=False,
                            na_values={c: [""] for c in [*BOX_FIELDS, "score"]})
    except pd.errors.EmptyDataError:
        return {}
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise EvaluationInputError(f"{path}: missing column(s) {', '.join(missing)} "
                                   f"(expected {','.join(PREDICTION_COLUMNS)})")
    predictions: Dict[str, List[Box]] = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        boxes = predictions.setdefault(row.filename, [])
        if pd.isna(row.xmin):
            continue
        if pd.isna(row.score):
            raise EvaluationInputError(f"{path}: line {line}: box without a score")
        boxes.append(box_from_xywh(row.xmin, row.ymin, row.width, row.height, row.label, float(row.score)))
    return predictions


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
