"""The report folder: ``metrics.json``, the plots, ``gallery/`` and ``report.md`` tying them together.

    report/
      metrics.json            # the metrics dict of busdet.evaluation.metrics.evaluate
      pr_curves.png  roc_malignant_image.png  confusion_matrix.png  score_histograms.png
      gallery/*.png           # only with an images folder: truth | prediction, worst cases
      report.md               # readable on its own
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from busdet.boxes import Box
from busdet.evaluation.gallery import DEFAULT_PER_KIND, KIND_TITLES, GalleryCase, select_cases, write_gallery
from busdet.evaluation.metrics import DEFINITIONS, Evaluation
from busdet.evaluation.plots import PLOTS, write_plots
from busdet.files import OutputError, atomic_write, printable, write_json

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
GALLERY_DIR = "gallery"


@dataclass
class ReportOutcome:
    """What was written, and the gallery images that could not be drawn (one line each)."""

    output_dir: Path
    files: List[Path] = field(default_factory=list)
    gallery: List[Tuple[GalleryCase, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)


def check_report_folder(output_dir: Path, inputs: Sequence[Path], images_dir: Optional[Path] = None) -> None:
    """Refuses, before any work, a report folder whose files would replace an input, or that lies in the
    images folder (the gallery's pictures would be added to the images), links resolved.

    Raises:
      OutputError: naming the folder and the input.
    """
    output_dir = Path(output_dir)
    written = [output_dir / name for name in (METRICS_FILE, REPORT_FILE, *PLOTS)]
    for path in inputs:
        clash = next((w for w in written if os.path.realpath(w) == os.path.realpath(path)), None)
        if clash is not None:
            raise OutputError(f"--output {output_dir}: the report's {clash.name} would replace the input {path}; "
                              "choose another folder")
    if images_dir is not None:
        real_images, real_output = Path(os.path.realpath(images_dir)), Path(os.path.realpath(output_dir))
        if real_images == real_output or real_images in real_output.parents:
            raise OutputError(f"--output {output_dir}: inside --images {images_dir}, where the gallery's pictures "
                              "would be added to the images; choose a folder outside it")
        if real_output / GALLERY_DIR in (real_images, *real_images.parents):
            raise OutputError(f"--images {images_dir}: inside the report's {output_dir / GALLERY_DIR}, which the "
                              "gallery writes; choose another --output")


def write_evaluation_report(evaluation: Evaluation, truth: Mapping[str, Sequence[Box]],
                            predictions: Mapping[str, Sequence[Box]], output_dir: Path,
                            images_dir: Optional[Path] = None, sources: Optional[Mapping[str, str]] = None,
                            per_kind: int = DEFAULT_PER_KIND) -> ReportOutcome:
    """Writes the whole report folder for an :class:`Evaluation` of ``truth`` vs ``predictions``.

    Args:
      images_dir: where the images are (searched recursively by file name); without
        it there is no gallery.
      sources: ``{"annotations": path, "predictions": path}`` named in report.md.
    """
    output_dir = Path(output_dir)
    outcome = ReportOutcome(output_dir)
    write_json(evaluation.metrics, output_dir / METRICS_FILE)  # undefined values are already None
    plots = write_plots(evaluation, output_dir)
    if images_dir is not None:
        cases = select_cases(evaluation.matches_at_threshold(), per_kind)
        outcome.gallery, outcome.problems = write_gallery(
            cases, truth, predictions, evaluation.score_threshold, Path(images_dir), output_dir / GALLERY_DIR)
    markdown = render_markdown(evaluation, plots, outcome, images_dir, sources or {})
    with atomic_write(output_dir / REPORT_FILE, "w") as stream:
        stream.write(markdown)
    outcome.files = [output_dir / METRICS_FILE, *(output_dir / name for name in plots), output_dir / REPORT_FILE,
                     *(output_dir / GALLERY_DIR / name for _, name in outcome.gallery)]
    return outcome


def _code(text: str) -> str:
    """A file name as a Markdown code span on one line: control characters escaped, backticks fenced."""
    text = printable(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _value(metrics: Mapping[str, object], key: str) -> str:
    value = metrics.get(key)
    return "n/a" if value is None else f"{value:.3f}"


def _summary_lines(evaluation: Evaluation, sources: Mapping[str, str]) -> List[str]:
    m = evaluation.metrics
    image_counts = ", ".join(f"{m[k]} {k.removeprefix('images_')}" for k in m if k.startswith("images_"))
    lesion_counts = ", ".join(f"{m[f'lesions_{c}']} {c}" for c in evaluation.classes)
    lines = [f"- annotations: {_code(sources['annotations'])}" if "annotations" in sources else "",
             f"- predictions: {_code(sources['predictions'])}" if "predictions" in sources else "",
             f"- {m['images']} images ({image_counts}), {m['lesions']} true lesions ({lesion_counts})",
             f"- {m['predicted_boxes']} predicted boxes (all scores; AP and curves use them all)",
             f"- operating score threshold **{m['score_threshold']:g}** for the threshold metrics, gallery and "
             f"confusion matrix; a box matches a lesion at IoU >= {m['iou_threshold']:g}"]
    return [line for line in lines if line]


def _metrics_table(evaluation: Evaluation) -> List[str]:
    m = evaluation.metrics
    keys = [f"AP50_{c}" for c in evaluation.classes] + [
        "mAP50", "AP50_lesion", "mAP50_95", "AUC_malignant_image", "lesion_recall", "lesion_precision",
        "matched_class_accuracy", "malignant_sensitivity", "malignant_specificity", "normal_with_box_rate"]
    lines = ["| metric | value |", "| --- | ---: |", *(f"| `{k}` | {_value(m, k)} |" for k in keys)]
    if m["classes_without_truth"]:
        lines += ["", f"n/a (`null` in {METRICS_FILE}): no true box of class "
                      f"{', '.join(m['classes_without_truth'])}, so COCO defines no AP for it; "
                      "mAP50 and mAP50_95 average the other classes."]
    if any(m.get(k) is None for k in keys[len(evaluation.classes):]):
        lines += ["", "Other n/a values have an empty denominator (e.g. no box at the threshold, "
                      "no malignant or no negative image)."]
    return lines


def _gallery_lines(outcome: ReportOutcome, images_dir: Optional[Path]) -> List[str]:
    if images_dir is None:
        return ["No gallery: run `tools/evaluate.py` with `--images DIR` to draw the worst cases."]
    lines = ["Each picture shows the true boxes (left) and the predicted boxes at the threshold (right).", ""]
    for kind, title in KIND_TITLES.items():
        entries = [(case, name) for case, name in outcome.gallery if case.kind == kind]
        lines += [f"### {title}", ""]
        lines += [f"- [{name}]({GALLERY_DIR}/{name}) {_code(case.filename)}: {printable(case.reason)}"
                  for case, name in entries]
        lines += ([] if entries else ["- none"]) + [""]
    if outcome.problems:
        lines += ["Left out (image not found or unreadable):", "", *(f"- {printable(p)}" for p in outcome.problems)]
    return lines


def render_markdown(evaluation: Evaluation, plots: Mapping[str, str], outcome: ReportOutcome,
                    images_dir: Optional[Path], sources: Mapping[str, str]) -> str:
    """``report.md``: what was evaluated, the metrics, the plots, the gallery and the definitions."""
    written = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = ["# Lesion detection evaluation", "", f"Written {written} by `tools/evaluate.py`.", "",
             "## What was evaluated", "", *_summary_lines(evaluation, sources), "",
             "## Metrics", "", *_metrics_table(evaluation), "", "## Plots", ""]
    for filename, title in plots.items():
        lines += [f"### {title}", "", f"![{title}]({filename})", ""]
    lines += ["## Gallery of the worst cases", "", *_gallery_lines(outcome, images_dir), "",
              "## Definitions", "", *(f"- `{key}`: {text}" for key, text in DEFINITIONS.items()),
              "- Confusion matrix: lesions matched class-agnostically at the threshold; a true lesion "
              "without a box is *missed*, a box without a lesion is a *false box*.",
              "- Score histograms: per class, boxes of that class matching a true lesion of the same class "
              "(true positive) or not (false positive), at every score.", ""]
    return "\n".join(lines)
