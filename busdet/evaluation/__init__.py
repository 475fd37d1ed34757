"""Evaluation of lesion predictions against annotations: metrics, plots, gallery, report.

    python tools/evaluate.py --annotations annotations.csv --predictions predictions.csv --output report/

From code (e.g. the model card on the validation split)::

    from busdet.evaluation import evaluate, choose_operating_threshold
    threshold = choose_operating_threshold(truth, predictions, target_recall=0.90)
    metrics = evaluate(truth, image_labels, predictions, threshold)

Modules: ``inputs`` (predictions CSV, consistency checks), ``matching`` (greedy
IoU matching), ``coco`` (pycocotools AP), ``metrics``, ``plots``, ``gallery``,
``report``.
"""

from busdet.evaluation.inputs import (EvaluationInputError, check_prediction_files, key_by_annotation_names,
                                      read_predictions_csv)
from busdet.evaluation.metrics import (DEFAULT_CLASSES, DEFAULT_SCORE_THRESHOLD, DEFAULT_TARGET_RECALL,
                                       Evaluation, choose_operating_threshold, compute_evaluation, evaluate)
from busdet.evaluation.report import ReportOutcome, write_evaluation_report

__all__ = ["EvaluationInputError", "check_prediction_files", "key_by_annotation_names", "read_predictions_csv",
           "DEFAULT_CLASSES", "DEFAULT_SCORE_THRESHOLD", "DEFAULT_TARGET_RECALL", "Evaluation",
           "choose_operating_threshold", "compute_evaluation", "evaluate", "ReportOutcome",
           "write_evaluation_report"]
