"""Training and validation curves from a run's TensorBoard logs, as one PNG.

    python tools/plot_training.py --runs runs/stage1_384 runs/stage2_640 --output docs/training_curves.png

Reads the scalars Model Garden's trainer writes (``train/``: losses and learning
rate; ``validation/``: loss, COCO AP/AP50 and, in runs made since the validation
evaluator reports them, per-class and class-agnostic AP50 and the malignancy AUC)
with TensorBoard's own reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from busdet.files import atomic_write  # noqa: E402

Series = Dict[str, List[Tuple[int, float]]]
# Validation scalars drawn, with their legend: Model Garden's, then busdet.training.validation's.
VALIDATION_CURVES = [("AP50", "mAP50 (benign, malignant)"), ("AP", "mAP@[.5:.95]"),
                     ("AP50_lesion", "lesion AP50 (class-agnostic)"), ("AP50_benign", "benign AP50"),
                     ("AP50_malignant", "malignant AP50"), ("AUC_malignant_image", "malignancy AUC")]


def read_scalars(log_dir: Path) -> Series:
    """``{tag: [(step, value)]}`` of every scalar logged in ``log_dir`` (empty if absent)."""
    if not log_dir.is_dir():
        return {}
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags()["tensors"]:
        points = {event.step: float(tensor_util.make_ndarray(event.tensor_proto))
                  for event in accumulator.Tensors(tag)}
        series[tag] = sorted(points.items())
    return series


def plot_runs(run_dirs: Sequence[Path]) -> plt.Figure:
    """Losses (top) and validation AP50/AP (bottom), one column per training stage."""
    figure, axes = plt.subplots(2, len(run_dirs), figsize=(5.5 * len(run_dirs), 7), squeeze=False)
    for column, run_dir in enumerate(run_dirs):
        train, validation = read_scalars(run_dir / "train"), read_scalars(run_dir / "validation")
        losses, scores = axes[0][column], axes[1][column]
        for series, tag, label in [(train, "total_loss", "train total"), (train, "cls_loss", "train focal"),
                                   (validation, "validation_loss", "validation total")]:
            if series.get(tag):
                steps, values = zip(*series[tag])
                losses.plot(steps, values, marker=".", label=label)
        for tag, label in VALIDATION_CURVES:
            if validation.get(tag):
                steps, values = zip(*validation[tag])
                scores.plot(steps, values, marker="o", markersize=3, label=label)
        losses.set(title=run_dir.name, ylabel="loss")
        scores.set(xlabel="step", ylabel="validation", ylim=(0, 1))
        for axis in (losses, scores):
            axis.grid(alpha=0.3)
            axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def write_training_curves(run_dirs: Sequence[Path], output: Path) -> None:
    """Writes :func:`plot_runs` as a PNG, atomically."""
    figure = plot_runs([Path(d) for d in run_dirs])
    with atomic_write(output, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


# What the screen of issue 18 compares, pooled and per dataset: the class decision first.
COMPARED_METRICS = ("AP50_malignant", "AUC_malignant_image", "AP50", "AP50_lesion", "target_mean")
# Pooled, Model Garden logs the mean over classes of AP50 as "AP50"; per dataset, busdet's
# validation logs the same figure as "NAME/mAP50".
DATASET_TAGS = {"AP50": "mAP50"}


def late_validation_means(run_dir: Path, last: int = 3) -> Dict[str, Tuple[float, int]]:
    """``{tag: (mean, count)}`` over each validation scalar's ``last`` evaluations.

    One evaluation on a few hundred images swings by a few hundredths from one to the
    next (model v3's stage 2 went 0.787, 0.819, 0.811, 0.813, 0.787 at 500-step
    intervals), so arms of an experiment are compared on the mean of their last few.
    """
    validation = read_scalars(Path(run_dir) / "validation")
    means = {}
    for tag, points in validation.items():
        values = [value for _, value in points[-last:]]
        if values:
            means[tag] = (sum(values) / len(values), len(values))
    return means


def comparison_rows(run_dirs: Sequence[Path], datasets: Sequence[str], last: int = 3,
                    metrics: Sequence[str] = COMPARED_METRICS) -> Tuple[List[str], List[List[str]]]:
    """A table's header and rows: one row per run, each metric pooled and per dataset.

    The first run is the baseline: the other rows also give their difference to it.
    A metric a run did not log is ``-``.
    """
    columns = [*metrics, *(f"{name}/{DATASET_TAGS.get(metric, metric)}" for name in datasets for metric in metrics)]
    summaries = [late_validation_means(run_dir, last) for run_dir in run_dirs]
    steps = [read_scalars(Path(run_dir) / "validation").get("target_mean", [(None, None)])[-1][0]
             for run_dir in run_dirs]
    header = ["run", "last step", "evaluations", *columns]
    rows = []
    for run_dir, summary, step in zip(run_dirs, summaries, steps):
        count = max((n for _, n in summary.values()), default=0)
        row = [Path(run_dir).name, "-" if step is None else str(step), str(count)]
        for column in columns:
            if column not in summary:
                row.append("-")
                continue
            value = summary[column][0]
            base = summaries[0].get(column)
            delta = "" if run_dir == run_dirs[0] or base is None else f" ({value - base[0]:+.3f})"
            row.append(f"{value:.3f}{delta}")
        rows.append(row)
    return header, rows
