"""Measure an exported model on the committed split: operating point on val, metrics on test.

    python tools/measure_model.py --data ../shared/busi/Dataset_BUSI_with_GT --model saved_model

The threshold rule: the highest score threshold at which the class-agnostic
lesion recall on the *validation* split is still >= ``target_recall``
(:data:`busdet.evaluation.DEFAULT_TARGET_RECALL`). The test split is looked at
only to report, never to choose. :func:`store_operating_point` records the result
in the model's ``model_info.json``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Tuple

from busdet.annotations import AnnotatedImage, annotate_dataset
from busdet.boxes import Box
from busdet.evaluation import (DEFAULT_TARGET_RECALL, choose_operating_threshold, compute_evaluation,
                               write_evaluation_report)
from busdet.images import read_image
from busdet.inference import Detector, detect, read_model_info, write_model_info

log = logging.getLogger(__name__)

THRESHOLD_RULE = "highest score threshold keeping class-agnostic lesion recall >= {:.2f} on the validation split"


def stored_threshold(threshold: float) -> float:
    """``threshold`` cut (never rounded up) to 4 decimals: a box scoring exactly the
    chosen threshold must stay above the stored one, or the recall the rule kept is lost."""
    return math.floor(float(threshold) * 1e4 + 1e-9) / 1e4


def predict_images(detector: Detector, images: List[AnnotatedImage], progress=lambda items: items) -> Dict[str, List[Box]]:
    """``{filename: every detection}`` for annotated images (through the one inference path)."""
    return {image.filename: detect(detector, read_image(image.path)) for image in progress(images)}


def split_truth(images: List[AnnotatedImage], split: Dict[str, str], name: str
                ) -> Tuple[List[AnnotatedImage], Dict[str, List[Box]], Dict[str, str]]:
    """The images of one split, their boxes and their image labels."""
    members = [i for i in images if split.get(i.filename) == name]
    return members, {i.filename: i.boxes for i in members}, {i.filename: i.label for i in members}


def measure_model(detector: Detector, dataset_dir: Path, split_path: Path, report_dir: Path,
                  target_recall: float = DEFAULT_TARGET_RECALL, progress=lambda items: items) -> dict:
    """Predicts val and test, picks the threshold on val, writes both reports; returns a summary.

    The summary holds ``score_threshold``, ``threshold_rule`` and the ``val`` and
    ``test`` metric dicts (those of ``report_dir/{val,test}/metrics.json``).
    """
    from busdet.training.data import read_split_csv  # imports TensorFlow, loaded already for the detector

    images, problems = annotate_dataset(dataset_dir, list(detector.classes.values()))
    for problem in problems:
        log.warning("%s", problem.report_line)
    split = read_split_csv(split_path)
    summary = {"threshold_rule": THRESHOLD_RULE.format(target_recall)}
    results = {}
    for name in ("val", "test"):
        members, truth, labels = split_truth(images, split, name)
        results[name] = (truth, labels, predict_images(detector, members, progress))
    threshold = choose_operating_threshold(results["val"][0], results["val"][2], target_recall)
    if threshold is None:
        log.warning("lesion recall %.2f is out of reach on val: keeping the model's threshold", target_recall)
        threshold = detector.score_threshold
    summary["score_threshold"] = stored_threshold(threshold)
    for name, (truth, labels, predictions) in results.items():
        evaluation = compute_evaluation(truth, labels, predictions, summary["score_threshold"],
                                        classes=list(detector.classes.values()))
        write_evaluation_report(evaluation, truth, predictions, report_dir / name, images_dir=dataset_dir,
                                sources={"annotations": f"{dataset_dir} ({name} split of {split_path.name})",
                                         "predictions": str(detector.model_dir)})
        summary[name] = evaluation.metrics
    return summary


def store_operating_point(model_dir: Path, summary: dict) -> None:
    """Records :func:`measure_model`'s threshold, its rule and the metrics in ``model_info.json``."""
    info = read_model_info(model_dir)
    info.update(score_threshold=summary["score_threshold"], threshold_rule=summary["threshold_rule"],
                test_metrics=summary["test"], val_metrics=summary["val"])
    write_model_info(model_dir, info)
