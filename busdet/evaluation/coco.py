"""COCO average precision through pycocotools, built from in-memory box dicts.

Every annotated image, negatives included, is an image of the COCO set, so that
boxes on normal images count as false positives. A class without any true box
has no AP in COCO (its precision is -1); it comes out here as NaN.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from busdet.annotations import coco_dataset
from busdet.boxes import Box, box_to_xywh

log = logging.getLogger(__name__)

MAX_DETECTIONS = (1, 10, 100)  # COCO's defaults; the last one grows to the busiest image


@dataclass
class CocoResult:
    """AP per class and the interpolated precision-recall curves behind AP@0.5.

    ``ap50`` and ``ap50_95`` map class name -> AP (NaN without true boxes);
    ``map50_95`` is COCO's AP@[.5:.95] over the classes that have true boxes.
    ``recall`` is COCO's 101 recall points ``[101]``; ``precision[name]`` the
    precision at each ``[101]`` (-1 where undefined) at IoU 0.5.
    """

    ap50: Dict[str, float]
    ap50_95: Dict[str, float]
    map50_95: float
    recall: np.ndarray
    precision: Dict[str, np.ndarray]


def _quiet(function, *args):
    """Runs a pycocotools call with its progress prints sent to the debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = function(*args)
    log.debug(buffer.getvalue().strip())
    return result


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def build_ground_truth(truth: Mapping[str, Sequence[Box]], classes: Sequence[str]) -> COCO:
    """``{filename: [Box]}`` -> a COCO ground-truth set (:func:`busdet.annotations.coco_dataset`);
    image ids follow the sorted file names, category ids the order of ``classes`` from 1."""
    dataset = coco_dataset({name: truth[name] for name in sorted(truth)}, dict(enumerate(classes, start=1)))
    return _coco_from_dict(dataset)


def build_detections(ground_truth: COCO, predictions: Mapping[str, Sequence[Box]]) -> COCO:
    """``{filename: [Box with score]}`` -> COCO results on ``ground_truth``'s images."""
    image_ids = {image["file_name"]: image["id"] for image in ground_truth.dataset["images"]}
    category_ids = {c["name"]: c["id"] for c in ground_truth.dataset["categories"]}
    results = [{"image_id": image_ids[filename], "category_id": category_ids[box.label],
                "bbox": box_to_xywh(box), "score": float(box.score)}
               for filename, boxes in predictions.items() for box in boxes]
    if not results:  # loadRes cannot take an empty list
        return _coco_from_dict({"images": list(ground_truth.dataset["images"]), "annotations": [],
                                "categories": list(ground_truth.dataset["categories"])})
    return _quiet(ground_truth.loadRes, results)


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the entries COCO defines (> -1), NaN when there are none."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else float("nan")


def run_coco_eval(truth: Mapping[str, Sequence[Box]], predictions: Mapping[str, Sequence[Box]],
                  classes: Sequence[str]) -> CocoResult:
    """COCOeval (bbox, all areas, most detections) per class of ``classes``."""
    ground_truth = build_ground_truth(truth, classes)
    evaluator = COCOeval(ground_truth, build_detections(ground_truth, predictions), iouType="bbox")
    busiest = max((len(boxes) for boxes in predictions.values()), default=0)
    evaluator.params.maxDets = [*MAX_DETECTIONS[:-1], max(MAX_DETECTIONS[-1], busiest)]
    _quiet(evaluator.evaluate)
    _quiet(evaluator.accumulate)
    # precision: [IoU thresholds, recall points, classes, area ranges, max detections];
    # area range 0 is "all" and the last max-detections entry the largest.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    iou50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    return CocoResult(
        ap50={name: _mean_defined(precision[iou50, :, k]) for k, name in enumerate(classes)},
        ap50_95={name: _mean_defined(precision[:, :, k]) for k, name in enumerate(classes)},
        map50_95=_mean_defined(precision),
        recall=np.asarray(evaluator.params.recThrs),
        precision={name: precision[iou50, :, k] for k, name in enumerate(classes)})
