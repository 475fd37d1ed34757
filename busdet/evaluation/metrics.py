"""The evaluation numbers: COCO AP, lesion recall/precision, image-level malignancy.

Inputs everywhere are ``truth = {filename: [Box]}`` (every annotated image,
negatives with an empty list), ``image_labels = {filename: "benign" | "malignant"
| "normal"}`` and ``predictions = {filename: [Box with score]}`` (pixel corners;
an image without predictions may be absent). See :data:`DEFINITIONS` for what each
key of the metrics dict means.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from busdet.annotations import DEFAULT_NEGATIVE_CLASS
from busdet.boxes import Box
from busdet.evaluation.coco import CocoResult, run_coco_eval
from busdet.evaluation.inputs import EvaluationInputError, check_labels, check_prediction_files, name_some
from busdet.evaluation.matching import LESION, Match, at_threshold, match_all, relabel
from busdet.inference import DEFAULT_SCORE_THRESHOLD

DEFAULT_CLASSES = ("benign", "malignant")
MALIGNANT = "malignant"
# The operating-point rule: the highest score threshold keeping this class-agnostic lesion recall.
DEFAULT_TARGET_RECALL = 0.90

DEFINITIONS = {
    "AP50_<class>": "COCO average precision of that class at IoU 0.5 (area under its interpolated "
                    "precision-recall curve, 101 recall points); null when the class has no true box.",
    "mAP50": "mean of the per-class AP50 (classes without true boxes left out, as COCO does).",
    "AP50_lesion": "AP50 with every true and predicted box relabelled as one class 'lesion': "
                   "finding the lesion, whatever class is predicted for it.",
    "mAP50_95": "COCO's AP@[.5:.95]: AP averaged over IoU thresholds 0.50, 0.55, ..., 0.95 and the classes.",
    "AUC_malignant_image": "ROC-AUC of each image's highest malignant box score (0 without one); "
                           "malignant images are positive, benign and normal images negative.",
    "lesion_recall": "at the threshold: share of true lesions matched by a box of any class "
                     "(IoU >= 0.5, greedy one-to-one by score).",
    "lesion_precision": "at the threshold: share of predicted boxes (any class, on any image, normal "
                        "ones included) that match a true lesion; null without boxes.",
    "matched_class_accuracy": "at the threshold: share of matched lesions given their true class.",
    "malignant_sensitivity": "at the threshold: share of malignant images with a malignant box.",
    "malignant_specificity": "at the threshold: share of benign and normal images without a malignant box.",
    "normal_with_box_rate": "at the threshold: share of normal images with any box.",
}


@dataclass
class Evaluation:
    """Everything a report draws on: the metrics dict, the curves and the matches.

    ``matches`` is the class-agnostic matching of all predictions (no threshold);
    ``class_matches[name]`` the matching of that class alone; ``malignant_scores``
    ``{filename: highest malignant score or 0}``.
    """

    metrics: Dict[str, object]
    classes: Tuple[str, ...]
    score_threshold: float
    coco: CocoResult
    lesion_coco: CocoResult
    matches: List[Match]
    class_matches: Dict[str, List[Match]]
    malignant_scores: Dict[str, float]
    image_labels: Dict[str, str]

    def matches_at_threshold(self) -> List[Match]:
        return at_threshold(self.matches, self.score_threshold)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def json_number(value: float) -> Optional[float]:
    """NaN (undefined) -> None, so that metrics.json says ``null``; others rounded to 6 places."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def highest_scores(predictions: Mapping[str, Sequence[Box]], filenames: Sequence[str],
                   label: str = MALIGNANT) -> Dict[str, float]:
    """``{filename: highest score of a ``label`` box, 0 without one}`` for every file of ``filenames``."""
    return {name: max((b.score for b in predictions.get(name, []) if b.label == label), default=0.0)
            for name in filenames}


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the chance that a positive outscores a negative,
    ties counting one half; NaN if a group is empty."""
    positive = np.asarray(positive_scores, float)
    negative = np.sort(np.asarray(negative_scores, float))
    if not positive.size or not negative.size:
        return float("nan")
    below = np.searchsorted(negative, positive, side="left")  # negatives strictly lower, per positive
    tied = np.searchsorted(negative, positive, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (positive.size * negative.size))


def roc_curve(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates ``[N+1]`` calling ``score >= t``, for every distinct score ``t``
    from the highest down, starting at (0, 0)."""
    positive, negative = np.asarray(positive_scores, float), np.asarray(negative_scores, float)
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    tpr = [(positive >= t).mean() if positive.size else 0.0 for t in thresholds]
    fpr = [(negative >= t).mean() if negative.size else 0.0 for t in thresholds]
    return np.array([0.0, *fpr]), np.array([0.0, *tpr])


def lesion_rates(matches: Sequence[Match]) -> Dict[str, float]:
    """Class-agnostic recall, precision and class accuracy of an (already thresholded) matching."""
    hits = [m for m in matches if m.is_hit]
    lesions = sum(1 for m in matches if m.truth is not None)
    boxes = sum(1 for m in matches if m.prediction is not None)
    right_class = sum(1 for m in hits if m.truth.label == m.prediction.label)
    return {"lesion_recall": _ratio(len(hits), lesions), "lesion_precision": _ratio(len(hits), boxes),
            "matched_class_accuracy": _ratio(right_class, len(hits))}


def image_rates(predictions: Mapping[str, Sequence[Box]], image_labels: Mapping[str, str],
                score_threshold: float, negative_class: str = DEFAULT_NEGATIVE_CLASS) -> Dict[str, float]:
    """Image-level malignant sensitivity/specificity and the normal-with-box rate at ``score_threshold``."""
    def has_box(name: str, label: Optional[str] = None) -> bool:
        return any(b.score >= score_threshold and (label is None or b.label == label)
                   for b in predictions.get(name, []))

    malignant = [n for n, label in image_labels.items() if label == MALIGNANT]
    others = [n for n, label in image_labels.items() if label != MALIGNANT]
    normal = [n for n, label in image_labels.items() if label == negative_class]
    return {"malignant_sensitivity": _ratio(sum(has_box(n, MALIGNANT) for n in malignant), len(malignant)),
            "malignant_specificity": _ratio(sum(not has_box(n, MALIGNANT) for n in others), len(others)),
            "normal_with_box_rate": _ratio(sum(has_box(n) for n in normal), len(normal))}


def count_summary(truth: Mapping[str, Sequence[Box]], image_labels: Mapping[str, str],
                  predictions: Mapping[str, Sequence[Box]], classes: Sequence[str],
                  negative_class: str) -> Dict[str, int]:
    """How much was evaluated: images, true lesions per class, images per class, predicted boxes."""
    lesions = Counter(b.label for boxes in truth.values() for b in boxes)
    images = Counter(image_labels.values())
    counts = {"images": len(truth), "lesions": sum(lesions.values())}
    counts.update({f"lesions_{name}": lesions.get(name, 0) for name in classes})
    counts.update({f"images_{name}": images.get(name, 0) for name in sorted(set(classes) | set(images))})
    counts["normal_images"] = images.get(negative_class, 0)
    counts["predicted_boxes"] = sum(len(boxes) for boxes in predictions.values())
    return counts


def compute_evaluation(truth: Mapping[str, Sequence[Box]], image_labels: Mapping[str, str],
                       predictions: Mapping[str, Sequence[Box]],
                       score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                       classes: Sequence[str] = DEFAULT_CLASSES,
                       negative_class: str = DEFAULT_NEGATIVE_CLASS) -> Evaluation:
    """Runs every metric and keeps what the plots and the gallery need.

    Raises:
      EvaluationInputError: predictions for images not in ``truth``, unknown labels,
        or ``truth`` without images.
    """
    classes = tuple(classes)
    _check_inputs(truth, image_labels, predictions, classes)
    coco = run_coco_eval(truth, predictions, classes)
    lesion_coco = run_coco_eval(relabel(truth), relabel(predictions), [LESION])
    matches = match_all(truth, predictions)
    malignant_scores = highest_scores(predictions, sorted(truth))
    positive = [s for n, s in malignant_scores.items() if image_labels[n] == MALIGNANT]
    negative = [s for n, s in malignant_scores.items() if image_labels[n] != MALIGNANT]
    defined_ap50 = [v for v in coco.ap50.values() if not math.isnan(v)]
    metrics = {f"AP50_{name}": coco.ap50[name] for name in classes}
    metrics.update({"mAP50": float(np.mean(defined_ap50)) if defined_ap50 else float("nan"),
                    "AP50_lesion": lesion_coco.ap50[LESION], "mAP50_95": coco.map50_95,
                    "AUC_malignant_image": roc_auc(positive, negative)})
    metrics.update(lesion_rates(at_threshold(matches, score_threshold)))
    metrics.update(image_rates(predictions, image_labels, score_threshold, negative_class))
    metrics = {key: json_number(value) for key, value in metrics.items()}
    metrics.update({"score_threshold": score_threshold, "iou_threshold": 0.5,
                    "classes_without_truth": [n for n in classes if math.isnan(coco.ap50[n])]})
    metrics.update(count_summary(truth, image_labels, predictions, classes, negative_class))
    class_matches = {name: match_all(truth, predictions, label=name) for name in classes}
    return Evaluation(metrics, classes, score_threshold, coco, lesion_coco, matches, class_matches,
                      malignant_scores, dict(image_labels))


def _check_inputs(truth, image_labels, predictions, classes) -> None:
    if not truth:
        raise EvaluationInputError("the annotations list no image")
    missing_labels = set(truth) - set(image_labels)
    if missing_labels:
        raise EvaluationInputError(f"no image label for {name_some(missing_labels)}")
    check_prediction_files(truth, predictions)
    check_labels(truth, classes, "annotations")
    check_labels(predictions, classes, "predictions")


def evaluate(truth: Mapping[str, Sequence[Box]], image_labels: Mapping[str, str],
             predictions: Mapping[str, Sequence[Box]], score_threshold: float = DEFAULT_SCORE_THRESHOLD,
             classes: Sequence[str] = DEFAULT_CLASSES,
             negative_class: str = DEFAULT_NEGATIVE_CLASS) -> Dict[str, object]:
    """The metrics dict written to ``metrics.json`` (undefined values are None).

    Args:
      truth: ``{filename: [Box]}``, every annotated image (negatives with ``[]``).
      image_labels: ``{filename: image class}``, e.g. from ``read_annotations_csv``.
      predictions: ``{filename: [Box with score]}`` made at a low score threshold.
      score_threshold: the operating point of the ``*_recall``/``*_sensitivity`` keys.
      classes: the label map's lesion classes.
    """
    return compute_evaluation(truth, image_labels, predictions, score_threshold, classes, negative_class).metrics


def choose_operating_threshold(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, Sequence[Box]],
                               target_recall: float = DEFAULT_TARGET_RECALL) -> Optional[float]:
    """The highest score threshold keeping class-agnostic lesion recall >= ``target_recall``.

    Returns None when no threshold reaches the target (or there is no true lesion);
    the recall at the returned threshold is ``lesion_recall`` of :func:`evaluate`.
    """
    check_prediction_files(truth, predictions)
    hit_scores = sorted((m.prediction.score for m in match_all(truth, predictions) if m.is_hit), reverse=True)
    lesions = sum(len(boxes) for boxes in truth.values())
    needed = math.ceil(target_recall * lesions - 1e-9)  # hits needed; the epsilon absorbs 0.9 * 10 = 9.000...1
    if lesions == 0 or not hit_scores or needed > len(hit_scores):
        return None
    return float(hit_scores[max(needed, 1) - 1])
