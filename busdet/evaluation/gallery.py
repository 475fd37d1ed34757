"""The worst cases side by side: true boxes on the left, predicted boxes on the right.

Four kinds, at the operating threshold and IoU 0.5 (class-agnostic matching):
missed lesions, false boxes, lesions found with the wrong class, and found
lesions with a loose box (IoU below :data:`LOOSE_IOU`, COCO's strict threshold).
Each kind keeps its worst ``per_kind`` images, one file per image and kind. The
pictures are output only: written under the report folder, never into the
repository.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from busdet.annotations import index_images
from busdet.boxes import Box, above_threshold
from busdet.drawing import draw_boxes
from busdet.evaluation.matching import Match
from busdet.evaluation.metrics import MALIGNANT
from busdet.files import safe_stem
from busdet.images import ImageReadError, read_image, write_image

log = logging.getLogger(__name__)

DEFAULT_PER_KIND = 8
PANEL_GAP = 8  # white pixels between the truth and the prediction panel
LOOSE_IOU = 0.75  # a found lesion is shown for its IoU only below this
KIND_TITLES = {"missed": "Missed lesions", "false_box": "False boxes",
               "wrong_class": "Wrong class", "worst_iou": f"Loosest boxes of found lesions (IoU < {LOOSE_IOU:g})"}


@dataclass(frozen=True)
class GalleryCase:
    """One gallery picture: which image, why it is there, and how bad (higher = worse)."""

    kind: str
    filename: str
    reason: str
    severity: Tuple[float, ...]


def _size(box: Box) -> str:
    return f"{box.width:.0f}x{box.height:.0f} px at ({box.xmin:.0f}, {box.ymin:.0f})"


def _describe(kind: str, match: Match) -> Tuple[str, Tuple[float, ...]]:
    """The reason line and severity of one outcome of ``kind``."""
    truth, prediction = match.truth, match.prediction
    if kind == "missed":
        # A missed cancer is worse than a missed benign lesion; then bigger is worse.
        return f"missed {truth.label} lesion {_size(truth)}", (truth.label == MALIGNANT, truth.area)
    if kind == "false_box":
        return f"false {prediction.label} box, score {prediction.score:.2f}, {_size(prediction)}", \
            (prediction.score,)
    if kind == "wrong_class":
        return f"{truth.label} lesion called {prediction.label} (score {prediction.score:.2f})", \
            (truth.label == MALIGNANT, prediction.score)
    return f"{truth.label} lesion found with IoU {match.iou:.2f}", (-match.iou,)


def _kind(match: Match) -> Optional[str]:
    if match.is_missed:
        return "missed"
    if match.is_false_box:
        return "false_box"
    return "wrong_class" if match.truth.label != match.prediction.label else None


def select_cases(matches: Sequence[Match], per_kind: int = DEFAULT_PER_KIND) -> List[GalleryCase]:
    """The worst ``per_kind`` images of each kind, worst first, from a thresholded matching."""
    grouped: Dict[Tuple[str, str], List[Tuple[str, Tuple[float, ...]]]] = defaultdict(list)
    for match in matches:
        kinds = [_kind(match)] + (["worst_iou"] if match.is_hit and match.iou < LOOSE_IOU else [])
        for kind in filter(None, kinds):
            grouped[kind, match.filename].append(_describe(kind, match))
    cases = []
    for kind in KIND_TITLES:
        of_kind = [GalleryCase(kind, filename, "; ".join(r for r, _ in items), max(s for _, s in items))
                   for (k, filename), items in grouped.items() if k == kind]
        cases.extend(sorted(of_kind, key=lambda c: c.severity, reverse=True)[:per_kind])
    return cases


def side_by_side(image: np.ndarray, truth: Sequence[Box], predictions: Sequence[Box]) -> np.ndarray:
    """RGB ``uint8 [H, 2W+gap, 3]``: truth panel, white gap, prediction panel."""
    gap = np.full((image.shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([draw_boxes(image, truth, caption="truth"), gap,
                           draw_boxes(image, predictions, caption="prediction")], axis=1)


def gallery_filename(case: GalleryCase, rank: int) -> str:
    """``missed_01_benign__10_.png``: kind, rank, and the image name made link-safe (:func:`safe_stem`)."""
    return f"{case.kind}_{rank:02d}_{safe_stem(case.filename)}.png"


def write_gallery(cases: Sequence[GalleryCase], truth: Mapping[str, Sequence[Box]],
                  predictions: Mapping[str, Sequence[Box]], score_threshold: float,
                  images_dir: Path, gallery_dir: Path) -> Tuple[List[Tuple[GalleryCase, str]], List[str]]:
    """Draws each case found under ``images_dir`` (searched recursively by file name).

    Returns the ``(case, file name in gallery_dir)`` written and one problem line per
    image that is missing or unreadable (also logged as a warning; the rest goes on).
    """
    index = index_images(images_dir)
    written, failed, ranks = [], {}, defaultdict(int)
    for case in cases:
        ranks[case.kind] += 1
        image = _read_indexed(case.filename, index, images_dir, failed)
        if image is None:
            continue
        name = gallery_filename(case, ranks[case.kind])
        shown = above_threshold(predictions.get(case.filename, []), score_threshold)
        write_image(Path(gallery_dir) / name, side_by_side(image, truth[case.filename], shown))
        written.append((case, name))
    return written, list(failed.values())


def _read_indexed(filename: str, index: Mapping[str, Path], images_dir: Path,
                  failed: Dict[str, str]) -> Optional[np.ndarray]:
    """The image called ``filename``, or None after one warning (remembered in ``failed``)."""
    if filename in failed:
        return None
    try:
        if filename not in index:
            raise ImageReadError(filename, f"not found under {images_dir}")
        return read_image(index[filename])
    except ImageReadError as error:
        failed[filename] = str(error)
        log.warning("gallery: %s", error)
        return None
