"""Greedy one-to-one matching of predicted boxes to true boxes, as COCO does it.

Predictions are taken most confident first; each takes the still unmatched true
box it overlaps most, if that overlap reaches ``iou_threshold``. Because earlier
(more confident) matches never change when less confident boxes are added, the
matching at a score threshold ``t`` is the full matching restricted to scores
``>= t``; :func:`busdet.evaluation.metrics.choose_operating_threshold` relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from busdet.boxes import Box, iou

IOU_THRESHOLD = 0.5
LESION = "lesion"  # the one class of class-agnostic evaluation


@dataclass(frozen=True)
class Match:
    """One outcome: a hit (both boxes), a missed lesion (no prediction) or a false box (no truth)."""

    filename: str
    truth: Optional[Box]
    prediction: Optional[Box]
    iou: float = 0.0

    @property
    def is_hit(self) -> bool:
        return self.truth is not None and self.prediction is not None

    @property
    def is_missed(self) -> bool:
        return self.prediction is None

    @property
    def is_false_box(self) -> bool:
        return self.truth is None


def match_image(filename: str, truth: Sequence[Box], predictions: Sequence[Box],
                iou_threshold: float = IOU_THRESHOLD) -> List[Match]:
    """Matches one image's boxes whatever their class (filter both lists for a per-class match).

    Returns hits and false boxes in descending score order, then the missed lesions.
    """
    unmatched = list(truth)
    matches = []
    for prediction in sorted(predictions, key=lambda b: -(b.score or 0.0)):
        overlaps = [iou(prediction, t) for t in unmatched]
        best = max(range(len(unmatched)), key=overlaps.__getitem__, default=None)
        if best is not None and overlaps[best] >= iou_threshold:
            matches.append(Match(filename, unmatched.pop(best), prediction, overlaps[best]))
        else:
            matches.append(Match(filename, None, prediction))
    matches.extend(Match(filename, t, None) for t in unmatched)
    return matches


def match_all(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, Sequence[Box]],
              iou_threshold: float = IOU_THRESHOLD, label: Optional[str] = None) -> List[Match]:
    """Matches every annotated image; with ``label`` only that class's true and predicted boxes."""
    def keep(boxes: Sequence[Box]) -> List[Box]:
        return [b for b in boxes if label is None or b.label == label]

    matches = []
    for filename in sorted(truth):
        matches.extend(match_image(filename, keep(truth[filename]), keep(predictions.get(filename, [])),
                                   iou_threshold))
    return matches


def at_threshold(matches: Sequence[Match], score_threshold: float) -> List[Match]:
    """The matching at ``score_threshold``: predictions below it dropped, their lesions now missed."""
    result = []
    for match in matches:
        if match.prediction is None or match.prediction.score >= score_threshold:
            result.append(match)
        elif match.truth is not None:
            result.append(Match(match.filename, match.truth, None))
    return result


def relabel(boxes_by_image: Mapping[str, Sequence[Box]], label: str = LESION) -> Dict[str, List[Box]]:
    """Every box renamed to one class, for class-agnostic evaluation."""
    return {name: [b.with_label(label) for b in boxes] for name, boxes in boxes_by_image.items()}
