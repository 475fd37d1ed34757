#!/usr/bin/env python
"""Evaluate lesion predictions against annotations: metrics, plots, gallery and a report.

    python tools/evaluate.py --annotations annotations.csv --predictions predictions.csv --output report/ \
        [--images ../shared/busi/Dataset_BUSI_with_GT] [--score-threshold 0.5]

``annotations.csv`` is ``tools/mask_to_bbox.py --include-negatives`` output;
``predictions.csv`` is ``predict.py``'s, made at a low threshold (e.g. 0.01) so that
the precision-recall curves are complete. The report folder gets ``metrics.json``,
PNG plots, ``gallery/`` (with ``--images``) and ``report.md``. It holds pictures
of the images: keep it out of the repository (``/report/`` is ignored).

Both CSVs are checked row by row first: a NaN, an empty or negative width, a
negative corner, a score outside [0, 1], a box listed twice, a row with more or
fewer cells than the header, a label not in the label map or an empty file stops
the run with the file, line and reason. Neither file is ever written: a report
folder whose files would replace one, or that lies in --images, is refused.

Exit status: 0 report written, 1 written but some gallery images were missing or
unreadable (see stderr), 2 bad input (a bad row, predictions for images the
annotations do not list, an unusable label map, an output folder that cannot be
written), 130 interrupted (143 when stopped by SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet import evaluation  # noqa: E402
from busdet.cli import configure_logging, run_command, say  # noqa: E402
from busdet.files import check_writable_folder  # noqa: E402
from busdet.inference import (DEFAULT_SCORE_THRESHOLD, ModelLoadError, default_score_threshold,  # noqa: E402
                              read_model_info)
from busdet.label_map import load_label_map  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

HEADLINE = ["mAP50", "AP50_benign", "AP50_malignant", "AP50_lesion", "mAP50_95", "AUC_malignant_image",
            "lesion_recall", "lesion_precision", "malignant_sensitivity", "malignant_specificity",
            "normal_with_box_rate"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, type=Path, help="annotation CSV (with negative rows)")
    parser.add_argument("--predictions", required=True, type=Path, help="predictions CSV of predict.py")
    parser.add_argument("--output", required=True, type=Path, help="report folder to write")
    parser.add_argument("--images", type=Path, help="folder holding the images (searched recursively), "
                                                    "for the gallery of worst cases")
    parser.add_argument("--score-threshold", "--threshold", dest="score_threshold", type=float, default=None,
                        help="operating score threshold (default: that of --model, as predict.py and the "
                             f"page use it, else {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--model", type=Path, default=ROOT / "saved_model",
                        help="the model whose operating threshold is the default; only its model_info.json "
                             "is read (default: the project's)")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path, default=ROOT / "label_map.pbtxt",
                        help="label map naming the lesion classes (default: the project's)")
    return parser


def main(args: argparse.Namespace) -> int:
    configure_logging("%(levelname)s: %(message)s", logging.WARNING)
    if args.images is not None and not args.images.is_dir():
        say(f"error: --images {args.images}: not a folder")
        return 2
    try:
        threshold = args.score_threshold
        if threshold is None:
            threshold = default_score_threshold(read_model_info(args.model))
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--score-threshold {threshold} is not between 0 and 1")
        check_writable_folder(args.output)
        evaluation.check_report_folder(args.output, [args.annotations, args.predictions], args.images)
        classes = list(load_label_map(args.label_map).values())
        truth, image_labels, predictions = evaluation.read_inputs(args.annotations, args.predictions, classes)
        result = evaluation.compute_evaluation(truth, image_labels, predictions, threshold, classes)
    except (OSError, ValueError, ModelLoadError) as error:  # EvaluationInputError and OutputError are ValueErrors
        say(f"error: {error}")
        return 2
    outcome = evaluation.write_evaluation_report(
        result, truth, predictions, args.output, args.images,
        sources={"annotations": str(args.annotations), "predictions": str(args.predictions)})
    metrics = result.metrics
    print(f"{metrics['images']} images, {metrics['lesions']} lesions, {metrics['predicted_boxes']} boxes, "
          f"score threshold {threshold:g}")
    for key in (k for k in HEADLINE if k in metrics):
        print(f"  {key:24s} {'n/a' if metrics[key] is None else format(metrics[key], '.3f')}")
    print(f"report: {args.output / 'report.md'} ({len(outcome.gallery)} gallery pictures)")
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
