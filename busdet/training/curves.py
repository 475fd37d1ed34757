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
