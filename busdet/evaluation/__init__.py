"""Evaluation of lesion predictions against annotations: metrics, plots, gallery, report.

    python tools/evaluate.py --annotations annotations.csv --predictions predictions.csv --output report/
    python tools/measure_model.py --data DATASET_DIR --model saved_model      # an exported model, on the split

From code (e.g. the model card on the validation split)::

    from busdet.evaluation import evaluate, choose_operating_threshold
    score_threshold = choose_operating_threshold(truth, predictions)   # DEFAULT_TARGET_RECALL
    metrics = evaluate(truth, image_labels, predictions, score_threshold)

Modules: ``inputs`` (annotation and prediction CSVs, consistency checks),
``matching`` (greedy IoU matching), ``coco`` (pycocotools AP), ``metrics``,
``plots``, ``gallery``, ``report``, and ``measure`` (an exported model on the
committed split, imported on its own).
"""

from busdet.evaluation.inputs import (EvaluationInputError, check_prediction_files, key_by_annotation_names,
                                      read_annotations_csv, read_inputs, read_predictions_csv)
from busdet.evaluation.metrics import (DEFAULT_CLASSES, DEFAULT_TARGET_RECALL, Evaluation, choose_operating_threshold,
                                       compute_evaluation, evaluate)
from busdet.evaluation.report import ReportOutcome, check_report_folder, write_evaluation_report

__all__ = ["EvaluationInputError", "check_prediction_files", "key_by_annotation_names", "read_annotations_csv",
           "read_inputs", "read_predictions_csv", "DEFAULT_CLASSES", "DEFAULT_TARGET_RECALL", "Evaluation",
           "choose_operating_threshold", "compute_evaluation", "evaluate", "ReportOutcome", "check_report_folder",
           "write_evaluation_report"]
