"""Fit the in-distribution check (:mod:`busdet.ood`) on an exported model and measure it.

    python tools/fit_ood.py --model saved_model --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --write

1. Features: the model's ``image_features`` of every train, val and test image of each
   dataset, through the one inference path (:func:`busdet.inference.run_model`), cached
   under ``work/ood_features/<SavedModel digest>/`` (never committed: they are cut from
   dataset images).
2. Fit: one mean per dataset and one covariance shared by them (Ledoit-Wolf shrinkage:
   a few hundred features from a thousand or so images), on the **train** splits only.
3. Threshold: the lowest distance at which at most :data:`MAX_VAL_FLAGGED` of **each**
   dataset's validation images score above it.
4. Measure: the fraction flagged by the learned test alone and by all tests on each
   dataset's val and test splits, and on images that are not breast ultrasound
   (:mod:`busdet.ood_samples`).
5. Store (``write``): :data:`busdet.ood.OOD_FILE` beside the SavedModel and ``"ood"`` in its
   ``model_info.json`` (rule, what it was fitted on, the figures, both digests).

With ``int8=True`` (``tools/quantize_model.py --write``) the same is done on the int8 file's
features: :data:`busdet.ood.INT8_OOD_FILE`, recorded in ``"onnx_int8"``'s ``"ood"`` with the
int8 file's digest; ``--runtime onnx-int8`` (and ``auto`` where it serves int8) check with those.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from busdet.datasets import SPLIT_COLUMNS, SPLITS, DatasetSpec
from busdet.files import atomic_write, read_table
from busdet.images import read_image
from busdet.inference import (INT8_FILE, Detector, compute_file_digest, compute_saved_model_digest,
                              load_detector, read_model_info, run_model, write_model_info)
from busdet.ood import (INT8_OOD_FILE, MAX_COLOUR_FRACTION, MAX_FLAT_FRACTION, OOD_FILE, OodStats, check_image,
                        colour_fraction, flat_fraction, mahalanobis_distances, stats_bytes)

log = logging.getLogger(__name__)

MAX_VAL_FLAGGED = 0.01
SCORE = ("Mahalanobis distance of the model's image_features (backbone levels 3-5 averaged over the image) "
         "to the nearest training dataset's mean, under one Ledoit-Wolf covariance shared by the datasets")
THRESHOLD_RULE = "lowest distance flagging at most {:.0%} of each dataset's validation images"


@dataclass
class SplitFeatures:
    """What the check needs of one split's images: ``features`` float32 ``[N, D]`` and the
    colour and flat-area fractions ``[N]``, by ``filenames``."""

    filenames: List[str]
    features: np.ndarray
    colour: np.ndarray
    flat: np.ndarray


def split_members(spec: DatasetSpec) -> Dict[str, List[Path]]:
    """The image paths of each split in :data:`SPLITS` (``FOLDER/label/filename`` of the split CSV).

    Raises:
      ValueError: a split has no images or an image is missing.
    """
    table = read_table(spec.split_path, SPLIT_COLUMNS)
    members = {}
    for split in SPLITS:
        rows = table[table["split"] == split]
        paths = [spec.path / label / name for label, name in zip(rows["label"], rows["filename"])]
        if not paths:
            raise ValueError(f"{spec.split_path}: no {split} images")
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise ValueError(f"{missing}: listed in {spec.split_path} but not found")
        members[split] = paths
    return members


def extract_features(detector: Detector, images: Iterable[Tuple[str, np.ndarray]]) -> SplitFeatures:
    """The model's features and the cheap fractions of each ``(name, RGB uint8 [H, W, 3])``.

    Raises:
      ValueError: the model has no ``image_features`` output (exported before the check existed).
    """
    names, features, colour, flat = [], [], [], []
    for name, image in images:
        _, vector = run_model(detector, image)
        if vector is None:
            raise ValueError(f"{detector.model_dir}: the model has no image_features output; export it again "
                             "(tools/export_model.py)")
        names.append(name)
        features.append(vector)
        colour.append(colour_fraction(image))
        flat.append(flat_fraction(image))
    return SplitFeatures(names, np.asarray(features, np.float32), np.asarray(colour), np.asarray(flat))


def cached_split_features(detector: Detector, paths: Sequence[Path], cache: Path,
                          progress: Callable = lambda items: items) -> SplitFeatures:
    """:func:`extract_features` of ``paths``, from ``cache`` (an ``.npz``) when it holds these very files."""
    names = [str(p) for p in paths]
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if list(data["filenames"]) == names:
                return SplitFeatures(names, data["features"], data["colour"], data["flat"])
    split = extract_features(detector, ((str(p), read_image(p)) for p in progress(paths)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache) as stream:
        np.savez(stream, filenames=np.array(names), features=split.features, colour=split.colour, flat=split.flat)
    return split


def dataset_features(detector: Detector, datasets: Sequence[DatasetSpec], cache_dir: Path,
                     progress: Callable = lambda items: items) -> Dict[str, Dict[str, SplitFeatures]]:
    """``{dataset: {split: SplitFeatures}}`` for every split of every dataset, cached per model
    (:func:`features_cache_name`)."""
    folder = Path(cache_dir) / features_cache_name(detector)
    return {spec.name: {split: cached_split_features(detector, paths, folder / f"{spec.name}_{split}.npz", progress)
                        for split, paths in split_members(spec).items()}
            for spec in datasets}


def features_cache_name(detector: Detector) -> str:
    """The cache folder of a model's features: the SavedModel's digest (TensorFlow and ``model.onnx``
    give the same features), the int8 file's (prefixed ``int8_``) for the int8 file."""
    if detector.runtime == "onnx-int8":
        return "int8_" + compute_file_digest(detector.model_dir / INT8_FILE)[:16]
    return compute_saved_model_digest(detector.model_dir)[:16]


def fit_stats(train: Mapping[str, np.ndarray], threshold: float = np.inf) -> OodStats:
    """Per-dataset means and the Ledoit-Wolf covariance of the features centred on their own
    dataset's mean, pooled (``train``: ``{dataset: float [N, D]}``)."""
    from sklearn.covariance import LedoitWolf  # noqa: PLC0415 - fitting only, never when serving

    names = tuple(train)
    means = np.stack([np.asarray(train[name], np.float64).mean(axis=0) for name in names])
    centred = np.concatenate([np.asarray(train[name], np.float64) - mean for name, mean in zip(names, means)])
    estimator = LedoitWolf(assume_centered=True).fit(centred)
    return OodStats(means, estimator.precision_, float(threshold), names)


def choose_threshold(val_scores: Mapping[str, np.ndarray], max_flagged: float = MAX_VAL_FLAGGED) -> float:
    """The lowest threshold at which at most ``max_flagged`` of each dataset's scores lie above it."""
    needed = []
    for scores in val_scores.values():
        ordered = np.sort(np.asarray(scores, np.float64))
        allowed = int(np.floor(max_flagged * len(ordered) + 1e-9))
        needed.append(ordered[len(ordered) - 1 - allowed])
    return float(max(needed))


def flagged_fractions(split: SplitFeatures, stats: OodStats) -> Dict[str, float]:
    """Fraction of a split flagged by the learned test, by the cheap tests, and by any."""
    learned = mahalanobis_distances(split.features, stats) > stats.threshold
    cheap = (split.colour > MAX_COLOUR_FRACTION) | (split.flat > MAX_FLAT_FRACTION)
    return {"images": len(split.filenames), "learned": round(float(learned.mean()), 4),
            "colour_or_flat": round(float(cheap.mean()), 4), "any": round(float((learned | cheap).mean()), 4)}


def measure_images(detector: Detector, stats: OodStats, images: Iterable[Tuple[str, np.ndarray]]) -> dict:
    """Fractions flagged (learned, colour or flat, any) over named images, and each image's outcome."""
    rows = []
    for name, image in images:
        _, features = run_model(detector, image)
        check = check_image(image, features, stats)
        learned = check.score is not None and check.score > stats.threshold
        rows.append({"name": name, "score": round(check.score, 2) if check.score is not None else None,
                     "learned": bool(learned), "flagged": not check.in_distribution})
    flagged = [r["flagged"] for r in rows]
    return {"images": len(rows), "learned": round(float(np.mean([r["learned"] for r in rows])), 4),
            "any": round(float(np.mean(flagged)), 4), "per_image": rows}


def fit_and_measure(detector: Detector, datasets: Sequence[DatasetSpec], cache_dir: Path,
                    progress: Callable = lambda items: items,
                    max_val_flagged: float = MAX_VAL_FLAGGED) -> Tuple[OodStats, dict]:
    """Fits on train, chooses the threshold on val, measures val and test: ``(stats, record)``.

    ``record`` is what ``model_info.json``'s ``"ood"`` holds (without the file digests).
    """
    features = dataset_features(detector, datasets, cache_dir, progress)
    stats = fit_stats({name: parts["train"].features for name, parts in features.items()})
    threshold = choose_threshold({name: mahalanobis_distances(parts["val"].features, stats)
                                  for name, parts in features.items()}, max_val_flagged)
    stats = OodStats(stats.means, stats.precision, threshold, stats.datasets)
    record = {
        "score": SCORE, "threshold": round(threshold, 4), "threshold_rule": THRESHOLD_RULE.format(max_val_flagged),
        "fitted_on": {name: {"split": "train", "images": len(parts["train"].filenames)}
                      for name, parts in features.items()},
        "max_colour_fraction": MAX_COLOUR_FRACTION, "max_flat_fraction": MAX_FLAT_FRACTION,
        "largest_fractions_in_data": {name: {"colour": round(float(max(p.colour.max() for p in parts.values())), 4),
                                             "flat": round(float(max(p.flat.max() for p in parts.values())), 4)}
                                      for name, parts in features.items()},
        "flagged": {split: {name: flagged_fractions(parts[split], stats) for name, parts in features.items()}
                    for split in ("val", "test")},
    }
    return stats, record


def measure_others(detector: Detector, stats: OodStats, generated: int = 10) -> dict:
    """The fractions flagged (:func:`measure_images`) on the sample pictures of installed
    packages, and on ``generated`` photo-like, document-like, colour-Doppler phantom and plain phantom images."""
    from busdet.ood_samples import document_like, package_sample_images, photo_like, with_colour_overlay  # noqa: PLC0415
    from busdet.phantoms import generate_phantom  # noqa: PLC0415

    seeds = range(generated)
    sets = {"package_samples": package_sample_images(),
            "photo_like": [(f"photo {s}", photo_like(s)) for s in seeds],
            "document_like": [(f"document {s}", document_like(s)) for s in seeds],
            "doppler_on_phantom": [(f"doppler {s}", with_colour_overlay(generate_phantom(s, "benign").image, s))
                                   for s in seeds],
            # The generated phantoms themselves (busdet.phantoms, the demo images): not breast ultrasound either.
            "plain_phantom": [(f"phantom {s}", generate_phantom(s, "benign").image) for s in seeds]}
    return {name: measure_images(detector, stats, images) for name, images in sets.items()}


def fit_model(model_dir: Path, label_map_path: Path, datasets: Sequence[DatasetSpec], cache_dir: Path,
              write: bool = False, progress: Callable = lambda items: items, int8: bool = False) -> dict:
    """Loads the model (its recorded statistics left aside: they may be stale), fits, measures
    (:func:`fit_and_measure`, :func:`measure_others`) and, with ``write``, stores the result.

    The float model (``model.onnx`` when current, else the SavedModel), or with ``int8`` the int8 file.
    Returns the ``"ood"`` record. Raises ModelLoadError or ValueError (one line each).
    """
    detector = load_detector(model_dir, label_map_path, runtime="onnx-int8" if int8 else "auto", load_ood=False,
                             allow_int8=False)
    stats, record = fit_and_measure(detector, datasets, cache_dir, progress)
    record["flagged"]["other"] = measure_others(detector, stats)
    if write:
        (store_int8_ood_stats if int8 else store_ood_stats)(model_dir, stats, record)
    return record


def store_ood_stats(model_dir: Path, stats: OodStats, record: dict) -> Path:
    """Writes :data:`busdet.ood.OOD_FILE` beside the SavedModel and ``record`` (plus both digests)
    as ``model_info.json``'s ``"ood"``. Returns the statistics file's path."""
    model_dir = Path(model_dir)
    path = write_stats(model_dir / OOD_FILE, stats)
    info = read_model_info(model_dir)
    info["ood"] = {"file": OOD_FILE, "sha256": compute_file_digest(path),
                   "saved_model_sha256": compute_saved_model_digest(model_dir), **record}
    write_model_info(model_dir, info)
    log.info("wrote %s and the \"ood\" record of %s", path, model_dir / "model_info.json")
    return path


def store_int8_ood_stats(model_dir: Path, stats: OodStats, record: dict) -> Path:
    """Writes :data:`busdet.ood.INT8_OOD_FILE` beside the int8 file and ``record`` (plus its digest and the
    int8 file's) as ``model_info.json``'s ``"onnx_int8"`` ``"ood"``. Returns the statistics file's path."""
    model_dir = Path(model_dir)
    path = write_stats(model_dir / INT8_OOD_FILE, stats)
    info = read_model_info(model_dir)
    info["onnx_int8"]["ood"] = {"file": INT8_OOD_FILE, "sha256": compute_file_digest(path),
                                "int8_sha256": compute_file_digest(model_dir / INT8_FILE), **record}
    write_model_info(model_dir, info)
    log.info("wrote %s and the int8 file's \"ood\" record of %s", path, model_dir / "model_info.json")
    return path


def write_stats(path: Path, stats: OodStats) -> Path:
    """Writes ``stats`` to ``path`` atomically (:func:`busdet.ood.stats_bytes`)."""
    with atomic_write(path) as stream:
        stream.write(stats_bytes(stats))
    return path
