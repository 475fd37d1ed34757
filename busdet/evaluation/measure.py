"""Measure an exported model on the committed splits of one or more datasets.

    python tools/measure_model.py --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --model saved_model

The threshold rule (``each``, the default): the highest score threshold at which the
class-agnostic lesion recall on the *validation* split of **every** dataset is still
>= ``target_recall`` (:data:`busdet.evaluation.DEFAULT_TARGET_RECALL`), i.e. the lowest
of the datasets' own thresholds, so that the operating point holds for the dataset the
model finds hardest, not only on average. ``pooled`` (model v2's rule) asks it of the
validation splits pooled instead. The test splits are looked at only to report, never
to choose. Metrics are reported per dataset and
pooled, and per scanner where a dataset names them (BUS-BRA's ``Device``).
:func:`store_operating_point` records the result in the model's ``model_info.json``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from busdet.annotations import AnnotatedImage, annotate_dataset
from busdet.boxes import Box
from busdet.datasets import SPLIT_DIGEST, DatasetSpec, citation_line, read_devices, read_split_csv
from busdet.evaluation import (DEFAULT_TARGET_RECALL, choose_operating_threshold, compute_evaluation,
                               write_evaluation_report)
from busdet.images import read_image
from busdet.inference import Detector, compute_file_digest, detect, read_model_info, run_model, write_model_info

log = logging.getLogger(__name__)

THRESHOLD_RULE = ("highest score threshold keeping class-agnostic lesion recall >= {:.2f} "
                  "on the validation split{}")
THRESHOLD_RULES = ("each", "pooled")
POOLED = "pooled"
SPLITS = ("val", "test")
# What the per-scanner table keeps of each group's metrics.
GROUP_METRICS = ("AP50_lesion", "mAP50", "AUC_malignant_image", "lesion_recall", "lesion_precision")


def stored_threshold(threshold: float) -> float:
    """``threshold`` cut (never rounded up) to 4 decimals: a box scoring exactly the
    chosen threshold must stay above the stored one, or the recall the rule kept is lost."""
    return math.floor(float(threshold) * 1e4 + 1e-9) / 1e4


@dataclass
class SplitPredictions:
    """One split of one dataset: truth, image labels and the model's every detection, by file name."""

    truth: Dict[str, List[Box]]
    labels: Dict[str, str]
    predictions: Dict[str, List[Box]]


def annotated_splits(spec: DatasetSpec, classes: Sequence[str],
                     splits: Sequence[str] = SPLITS) -> Dict[str, List[AnnotatedImage]]:
    """``{split: annotated images}`` of ``spec``'s folder as its committed split CSV divides them
    (files that cannot be annotated are logged, one line each).

    Raises:
      ValueError: a split in ``splits`` has no images.
    """
    images, problems = annotate_dataset(spec.path, list(classes))
    for problem in problems:
        log.warning("%s", problem.report_line)
    split = read_split_csv(spec.split_path)
    members = {name: [i for i in images if split.get(i.filename) == name] for name in splits}
    for name, part in members.items():
        if not part:
            raise ValueError(f"{spec.split_path}: no {name} images of {spec.path}")
    return members


def split_truth(members: Sequence[AnnotatedImage], predictions: Mapping[str, List[Box]]) -> SplitPredictions:
    """A split's truth and image labels from its annotated images, with ``predictions`` by file name."""
    return SplitPredictions({i.filename: i.boxes for i in members}, {i.filename: i.label for i in members},
                            dict(predictions))


@dataclass
class RunsInTurn:
    """Several models run one after the other on each image: per model, the detections by file
    name, the pooled features (in image order) and each call's wall and CPU seconds."""

    predictions: Dict[str, Dict[str, List[Box]]]
    features: Dict[str, list]
    wall: Dict[str, List[float]]
    cpu: Dict[str, List[float]]


def run_in_turn(detectors: Mapping[str, Detector], members: Sequence[AnnotatedImage],
                progress=lambda items: items) -> RunsInTurn:
    """Runs every detector on each image in turn (the one inference path): comparing two exports or
    runtimes this way sees the same images under the same machine load."""
    runs = RunsInTurn(*({name: ({} if field == "predictions" else []) for name in detectors}
                        for field in ("predictions", "features", "wall", "cpu")))
    for image in progress(members):
        pixels = read_image(image.path)
        for name, detector in detectors.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            runs.predictions[name][image.filename], features = run_model(detector, pixels)
            runs.wall[name].append(time.perf_counter() - started)
            runs.cpu[name].append(time.process_time() - started_cpu)
            runs.features[name].append(features)
    return runs


def predict_split(detector: Detector, spec: DatasetSpec, progress=lambda items: items) -> Dict[str, SplitPredictions]:
    """Annotates ``spec``'s folder and runs the model on its val and test images (the one inference path)."""
    return {name: split_truth(members, {i.filename: detect(detector, read_image(i.path)) for i in progress(members)})
            for name, members in annotated_splits(spec, detector.classes.values()).items()}


def pool(parts: Mapping[str, SplitPredictions]) -> SplitPredictions:
    """Several datasets' splits as one, file names prefixed ``dataset/`` to keep them apart."""
    pooled = SplitPredictions({}, {}, {})
    for dataset, part in parts.items():
        pooled.truth.update({f"{dataset}/{k}": v for k, v in part.truth.items()})
        pooled.labels.update({f"{dataset}/{k}": v for k, v in part.labels.items()})
        pooled.predictions.update({f"{dataset}/{k}": v for k, v in part.predictions.items()})
    return pooled


def subset(part: SplitPredictions, names: Sequence[str]) -> SplitPredictions:
    """The images ``names`` of a split."""
    return SplitPredictions({n: part.truth[n] for n in names}, {n: part.labels[n] for n in names},
                            {n: part.predictions[n] for n in names})


def evaluate(part: SplitPredictions, score_threshold: float, classes: Sequence[str]):
    """:func:`busdet.evaluation.compute_evaluation` of one split's truth, labels and predictions."""
    return compute_evaluation(part.truth, part.labels, part.predictions, score_threshold, classes=classes)


def metrics_by_group(part: SplitPredictions, groups: Mapping[str, str], score_threshold: float,
                     classes: Sequence[str]) -> Dict[str, dict]:
    """``{group: {images, AP50_lesion, mAP50, AUC, recall, precision}}``, e.g. per scanner."""
    members: Dict[str, List[str]] = {}
    for name in part.truth:
        members.setdefault(groups.get(name, "unknown"), []).append(name)
    table = {}
    for group, names in sorted(members.items()):
        metrics = evaluate(subset(part, names), score_threshold, classes).metrics
        table[group] = {"images": len(names), **{key: metrics.get(key) for key in GROUP_METRICS}}
    return table


def measured_datasets(datasets: Sequence[DatasetSpec]) -> List[dict]:
    """The summary's ``datasets``: each one's name, citation and the sha256 of its split CSV
    (``split_sha256``): equal image and lesion counts do not prove the same split, the digest does."""
    return [{"name": s.name, "citation": citation_line(s.name), SPLIT_DIGEST: compute_file_digest(s.split_path)}
            for s in datasets]


def choose_threshold(val: Mapping[str, SplitPredictions], target_recall: float, rule: str) -> tuple:
    """``(threshold or None, rule text, {dataset: its own threshold})`` on the validation splits ``val``
    (by dataset, plus ``pooled`` with several datasets) by ``rule`` (:data:`THRESHOLD_RULES`)."""
    datasets = [name for name in val if name != POOLED]
    own = {name: choose_operating_threshold(val[name].truth, val[name].predictions, target_recall)
           for name in datasets}
    if len(datasets) == 1:
        return own[datasets[0]], THRESHOLD_RULE.format(target_recall, ""), own
    if rule == "pooled":
        threshold = choose_operating_threshold(val[POOLED].truth, val[POOLED].predictions, target_recall)
        note = f"s of {', '.join(datasets)} pooled"
    else:
        reached = [t for t in own.values() if t is not None]
        threshold = min(reached) if len(reached) == len(own) else None
        note = f" of each of {', '.join(datasets)} (the lowest of their thresholds)"
    return threshold, THRESHOLD_RULE.format(target_recall, note), own


def measure_model(detector: Detector, datasets: Sequence[DatasetSpec], report_dir: Path,
                  target_recall: float = DEFAULT_TARGET_RECALL, progress=lambda items: items,
                  threshold_rule: str = "each") -> dict:
    """Predicts every dataset's val and test, picks the threshold on val by ``threshold_rule``, writes the reports.

    Reports go to ``report_dir/<dataset>/{val,test}`` (with a gallery of the worst cases)
    and, with several datasets, ``report_dir/pooled/{val,test}``. Returns a summary:
    ``score_threshold``, ``threshold_rule``, ``val_threshold_by_dataset`` (the threshold
    each dataset's val alone would give), ``datasets`` (names, citations and split CSV digests:
    :func:`measured_datasets`), and
    ``val``/``test`` as ``{dataset or "pooled": metrics}``, plus ``test_by_scanner``
    ``{dataset: {scanner: metrics}}`` for datasets that name their scanners.
    """
    classes = list(detector.classes.values())
    measured_on = measured_datasets(datasets)  # the split CSVs as they are read below, not after a long run
    parts = {spec.name: predict_split(detector, spec, progress) for spec in datasets}
    per_split = {name: {dataset: parts[dataset][name] for dataset in parts} for name in SPLITS}
    if len(datasets) > 1:
        for name in SPLITS:
            per_split[name][POOLED] = pool(per_split[name])
    threshold, rule_text, own = choose_threshold(per_split["val"], target_recall, threshold_rule)
    if threshold is None:
        log.warning("lesion recall %.2f is out of reach on val: keeping the model's threshold", target_recall)
        threshold = detector.score_threshold
    summary = {"threshold_rule": rule_text, "score_threshold": stored_threshold(threshold),
               "val_threshold_by_dataset": {name: None if t is None else stored_threshold(t) for name, t in own.items()},
               "datasets": measured_on}
    folders = {spec.name: spec.path for spec in datasets}
    for name in SPLITS:
        summary[name] = {}
        for dataset, part in per_split[name].items():
            evaluation = evaluate(part, summary["score_threshold"], classes)
            write_evaluation_report(evaluation, part.truth, part.predictions, report_dir / dataset / name,
                                    images_dir=folders.get(dataset),
                                    sources={"annotations": f"{dataset} ({name} split)",
                                             "predictions": str(detector.model_dir)})
            summary[name][dataset] = evaluation.metrics
    summary["test_by_scanner"] = {}
    for spec in datasets:
        devices = read_devices(spec.path)
        if devices:
            summary["test_by_scanner"][spec.name] = metrics_by_group(
                per_split["test"][spec.name], devices, summary["score_threshold"], classes)
    return summary


def store_operating_point(model_dir: Path, summary: dict) -> None:
    """Records :func:`measure_model`'s threshold, its rule, datasets and metrics in ``model_info.json``."""
    info = read_model_info(model_dir)
    info.update(score_threshold=summary["score_threshold"], threshold_rule=summary["threshold_rule"],
                val_threshold_by_dataset=summary["val_threshold_by_dataset"],
                measured_on=summary["datasets"], test_metrics=summary["test"], val_metrics=summary["val"],
                test_by_scanner=summary["test_by_scanner"])
    write_model_info(model_dir, info)
