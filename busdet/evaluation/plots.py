"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display).

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes it as PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from busdet.drawing import CLASS_COLOURS
from busdet.evaluation.matching import LESION, Match
from busdet.evaluation.metrics import MALIGNANT, Evaluation, roc_curve
from busdet.files import atomic_write

MISSED = "missed"
FALSE_BOX = "false box"
LESION_COLOUR = "#333333"
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


def _colour(name: str) -> str:
    """The class colour of the drawings (RGB 0-255) as a matplotlib hex colour."""
    rgb = CLASS_COLOURS.get(name)
    return "#{:02x}{:02x}{:02x}".format(*rgb) if rgb else LESION_COLOUR


def save_figure(figure: Figure, path: Path) -> None:
    """Writes ``figure`` as PNG, atomically."""
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110, bbox_inches="tight")


def plot_precision_recall(evaluation: Evaluation) -> Figure:
    """COCO's interpolated precision-recall curves at IoU 0.5, per class and class-agnostic."""
    figure = Figure(figsize=(6, 5))
    axes = figure.add_subplot()
    curves = [(name, evaluation.coco, name) for name in evaluation.classes]
    curves.append((LESION, evaluation.lesion_coco, "lesion (any class)"))
    for name, result, title in curves:
        precision = result.precision[name]
        if (precision < 0).all():  # no true box of this class: COCO defines no curve
            continue
        axes.plot(result.recall, np.clip(precision, 0, None), color=_colour(name),
                  linestyle="--" if name == LESION else "-",
                  label=f"{title}: AP50 {result.ap50[name]:.3f}")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title="Precision-recall at IoU 0.5 (COCO, 101 points)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return figure


def plot_malignancy_roc(evaluation: Evaluation) -> Figure:
    """ROC of the image-level malignancy score (highest malignant box score, 0 without one)."""
    scores, labels = evaluation.malignant_scores, evaluation.image_labels
    positive = [s for n, s in scores.items() if labels[n] == MALIGNANT]
    negative = [s for n, s in scores.items() if labels[n] != MALIGNANT]
    fpr, tpr = roc_curve(positive, negative)
    auc = evaluation.metrics["AUC_malignant_image"]
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, color=_colour(MALIGNANT),
              label="AUC " + ("undefined" if auc is None else f"{auc:.3f}"))
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axes.set(xlabel="1 - specificity (benign and normal images called malignant)",
             ylabel="sensitivity (malignant images called malignant)", xlim=(0, 1), ylim=(0, 1.02),
             title=f"Image-level malignancy ({len(positive)} malignant, {len(negative)} other images)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def confusion_counts(matches: Sequence[Match], classes: Sequence[str]) -> Tuple[np.ndarray, List[str], List[str]]:
    """Counts ``[len(classes)+1, len(classes)+1]`` of matched lesions: rows true class then
    "false box", columns predicted class then "missed"."""
    rows, columns = [*classes, FALSE_BOX], [*classes, MISSED]
    counts = np.zeros((len(rows), len(columns)), dtype=int)
    for match in matches:
        row = rows.index(match.truth.label) if match.truth else len(classes)
        column = columns.index(match.prediction.label) if match.prediction else len(classes)
        counts[row, column] += 1
    return counts, rows, columns


def plot_confusion(evaluation: Evaluation) -> Figure:
    """Heatmap of :func:`confusion_counts` at the operating threshold, counts in the cells."""
    counts, rows, columns = confusion_counts(evaluation.matches_at_threshold(), evaluation.classes)
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(columns)), [f"pred. {c}" if c != MISSED else c for c in columns])
    axes.set_yticks(range(len(rows)), [f"true {r}" if r != FALSE_BOX else r for r in rows])
    high = counts.max() if counts.size else 0
    for (row, column), count in np.ndenumerate(counts):
        if row == len(rows) - 1 and column == len(columns) - 1:
            continue  # "false box" x "missed" is not an outcome
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > high / 2 else "black")
    axes.set_title(f"Lesions at score >= {evaluation.score_threshold:g}, IoU >= 0.5")
    return figure


def plot_score_histograms(evaluation: Evaluation) -> Figure:
    """Per class, the scores of boxes matching a true lesion of that class vs the other boxes (log counts)."""
    figure = Figure(figsize=(5 * len(evaluation.classes), 4), layout="constrained")
    for index, name in enumerate(evaluation.classes, start=1):
        axes = figure.add_subplot(1, len(evaluation.classes), index)
        matches = evaluation.class_matches[name]
        true_scores = [m.prediction.score for m in matches if m.is_hit]
        false_scores = [m.prediction.score for m in matches if m.is_false_box]
        axes.hist([true_scores, false_scores], bins=HISTOGRAM_BINS, color=[_colour(name), "grey"],
                  label=[f"true positive ({len(true_scores)})", f"false positive ({len(false_scores)})"])
        axes.axvline(evaluation.score_threshold, color="black", linestyle="--", label="threshold")
        axes.set(xlabel="score", ylabel="boxes", title=f"{name} boxes", xlim=(0, 1))
        if true_scores or false_scores:
            # Low-threshold predictions hold far more false than true boxes: a log scale shows both.
            axes.set(ylabel="boxes (log scale)", yscale="log")
        axes.legend()
    return figure


PLOTS: Dict[str, Tuple[str, object]] = {
    "pr_curves.png": ("Precision-recall curves (IoU 0.5)", plot_precision_recall),
    "roc_malignant_image.png": ("ROC of image-level malignancy", plot_malignancy_roc),
    "confusion_matrix.png": ("Confusion matrix of lesions at the threshold", plot_confusion),
    "score_histograms.png": ("Scores of true- and false-positive boxes", plot_score_histograms),
}


def write_plots(evaluation: Evaluation, output_dir: Path) -> Dict[str, str]:
    """Writes every figure of :data:`PLOTS` into ``output_dir``; returns ``{file name: title}``."""
    for filename, (_, plot) in PLOTS.items():
        save_figure(plot(evaluation), Path(output_dir) / filename)
    return {filename: title for filename, (title, _) in PLOTS.items()}
