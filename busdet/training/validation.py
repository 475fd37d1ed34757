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

These are computed on all validation images pooled; when the run trains on several
datasets, the same numbers follow for each one under its name (``busi/AP50_lesion``,
``busbra/target_mean``), telling the images apart by source id
(:data:`busdet.training.data.SOURCE_ID_STRIDE`). The best checkpoint is chosen on
the pooled ``target_mean``.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from official.vision.evaluation import coco_evaluator, coco_utils

from busdet.annotations import DEFAULT_NEGATIVE_CLASS, image_label
from busdet.boxes import Box, box_from_xywh
from busdet.evaluation.metrics import compute_evaluation
from busdet.training.data import SOURCE_ID_STRIDE

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


def split_by_dataset(boxes: BoxesById, dataset_names: Sequence[str]) -> Dict[str, BoxesById]:
    """``{dataset name: its images' boxes}``, the dataset read off each image id."""
    parts: Dict[str, BoxesById] = {name: {} for name in dataset_names}
    for image_id, image_boxes in boxes.items():
        index = image_id // SOURCE_ID_STRIDE
        if index < len(dataset_names):
            parts[dataset_names[index]][image_id] = image_boxes
    return parts


def per_dataset_metrics(truth: BoxesById, predictions: BoxesById, class_names: Sequence[str],
                        dataset_names: Sequence[str]) -> Dict[str, float]:
    """The pooled :func:`model_card_metrics`, and with several datasets each one's, prefixed ``name/``."""
    values = model_card_metrics(truth, predictions, class_names)
    if len(dataset_names) > 1:
        truth_parts = split_by_dataset(truth, dataset_names)
        prediction_parts = split_by_dataset(predictions, dataset_names)
        for name in dataset_names:
            if truth_parts[name]:
                part = model_card_metrics(truth_parts[name], prediction_parts[name], class_names)
                values.update({f"{name}/{key}": value for key, value in part.items()})
    return values


class BusiCocoEvaluator(coco_evaluator.COCOEvaluator):
    """Model Garden's COCO evaluator plus :func:`per_dataset_metrics` (see the module doc)."""

    def __init__(self, class_names: Sequence[str], dataset_names: Sequence[str] = (), **kwargs):
        self._class_names = tuple(class_names)
        self._dataset_names = tuple(dataset_names)
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
        extra = per_dataset_metrics(*self._boxes(), self._class_names, self._dataset_names)
        metrics = super().evaluate()
        log.info("validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        metrics.update({key: np.float32(value) for key, value in extra.items() if key != "mAP50"})
        return metrics
