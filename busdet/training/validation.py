"""Validation during training in the model card's terms, every epoch.

Model Garden's COCO evaluator reports the class-mean AP. Its per-class numbers
need a patched COCOeval (``category_stats``) that the registry's pycocotools does
not have, so they never reach TensorBoard, and it has no class-agnostic AP or
image-level AUC at all. :class:`BusiCocoEvaluator` keeps Model Garden's numbers and
adds, from the same accumulated detections, the ones ``tools/evaluate.py`` reports
(through :func:`busdet.evaluation.compute_evaluation`, so that a training curve and
the final report cannot disagree on a definition):

- ``AP50_benign``, ``AP50_malignant``, ``AP50_lesion`` (class-agnostic),
  ``AUC_malignant_image``;
- ``target_mean``: the mean of the issue's three targets (lesion AP50, benign/malignant
  mAP50, malignancy AUC), the default metric for choosing the best checkpoint.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from official.vision.evaluation import coco_evaluator, coco_utils

from busdet.annotations import DEFAULT_NEGATIVE_CLASS, image_label
from busdet.boxes import Box, box_from_xywh
from busdet.evaluation.metrics import compute_evaluation

log = logging.getLogger(__name__)

EXTRA_METRICS = ("AP50_benign", "AP50_malignant", "AP50_lesion", "AUC_malignant_image")
TARGET_METRICS = ("AP50_lesion", "mAP50", "AUC_malignant_image")
SELECTION_METRIC = "target_mean"

BoxesById = Dict[int, List[Box]]


def truth_from_coco(dataset: Mapping, class_names: Sequence[str]) -> BoxesById:
    """A Model Garden COCO ground-truth dataset -> ``{image id: [Box]}``, every image present."""
    truth: BoxesById = {int(image["id"]): [] for image in dataset["images"]}
    for annotation in dataset["annotations"]:
        label = class_names[int(annotation["category_id"]) - 1]
        truth[int(annotation["image_id"])].append(box_from_xywh(*annotation["bbox"], label=label))
    return truth


def predictions_from_coco(annotations: Sequence[Mapping], class_names: Sequence[str]) -> BoxesById:
    """Model Garden COCO result rows -> ``{image id: [Box with score]}``.

    Padding rows (class 0, outside the label map) are dropped.
    """
    predictions: BoxesById = {}
    for row in annotations:
        class_id = int(row["category_id"])
        if 1 <= class_id <= len(class_names):
            box = box_from_xywh(*row["bbox"], label=class_names[class_id - 1], score=float(row["score"]))
            predictions.setdefault(int(row["image_id"]), []).append(box)
    return predictions


def model_card_metrics(truth: BoxesById, predictions: BoxesById,
                       class_names: Sequence[str]) -> Dict[str, float]:
    """The extra metrics (NaN when undefined, e.g. no malignant image) and ``target_mean``."""
    names = {image_id: str(image_id) for image_id in truth}
    evaluation = compute_evaluation(
        {names[i]: boxes for i, boxes in truth.items()},
        # The image class as the annotation CSV reader derives it; no box: a normal image.
        {names[i]: image_label([b.label for b in boxes]) if boxes else DEFAULT_NEGATIVE_CLASS
         for i, boxes in truth.items()},
        {names[i]: boxes for i, boxes in predictions.items() if i in names},
        classes=class_names)
    values = {key: evaluation.metrics.get(key) for key in (*EXTRA_METRICS, "mAP50")}
    values = {key: np.nan if value is None else float(value) for key, value in values.items()}
    # Over the defined ones: a validation set without a malignant image still ranks checkpoints.
    values[SELECTION_METRIC] = float(np.nanmean([values[key] for key in TARGET_METRICS]))
    return values


class BusiCocoEvaluator(coco_evaluator.COCOEvaluator):
    """Model Garden's COCO evaluator plus :func:`model_card_metrics` (see the module doc)."""

    def __init__(self, class_names: Sequence[str], **kwargs):
        self._class_names = tuple(class_names)
        super().__init__(**kwargs)

    def _boxes(self) -> Tuple[BoxesById, BoxesById]:
        # Model Garden's converter rewrites the boxes in place (yxyx -> xywh): give it copies,
        # the parent class converts the originals afterwards.
        copies = {key: [np.copy(batch) for batch in batches] for key, batches in self._predictions.items()}
        dataset = coco_utils.convert_groundtruths_to_coco_dataset(self._groundtruths)
        detections = coco_utils.convert_predictions_to_coco_annotations(copies)
        return (truth_from_coco(dataset, self._class_names),
                predictions_from_coco(detections, self._class_names))

    def evaluate(self):
        if self._annotation_file or not self._groundtruths:
            return super().evaluate()  # ground truth not accumulated here: nothing to add
        extra = model_card_metrics(*self._boxes(), self._class_names)
        metrics = super().evaluate()
        log.info("validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        metrics.update({key: np.float32(value) for key, value in extra.items() if key != "mAP50"})
        return metrics
