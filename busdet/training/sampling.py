"""How often each kind of training image is drawn: one number per ratio.

Training records are written per source (``<dataset>/train_<class>.tfrecord`` and the
lesion-free crops ``train_background``); Model Garden's input reader samples those
sources by weight (``task.train_data.input_path`` and ``.weights`` as dicts, through
``tf.data.Dataset.sample_from_datasets``). :func:`source_weights` turns the settings
of :class:`Sampling` and the record counts into those weights:

- ``dataset_weights``: the share of samples each dataset gets (equal when unset);
- ``malignant_boost``: malignant images are drawn this many times as often as their
  share of a dataset's lesion images says (they are a third of the lesions);
- ``negative_fraction``: the share of a dataset's samples that hold no lesion, so the
  model learns what nothing looks like (normals are 5% of the images);
- ``normal_share``: of those, the share taken by normal images when the dataset has
  any; the rest are lesion-free crops cut beside lesions.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

from official.modeling import hyperparams
from official.modeling.hyperparams import base_config

from busdet.annotations import DEFAULT_NEGATIVE_CLASS
from busdet.training.data import BACKGROUND_SOURCE

MALIGNANT_CLASS = "malignant"


@dataclasses.dataclass
class Sampling(hyperparams.Config):
    """Sampling ratios of the training sources (see the module doc)."""

    dataset_weights: Optional[base_config.Config] = None
    malignant_boost: float = 2.0
    negative_fraction: float = 0.3
    normal_share: float = 0.6


def source_weights(counts: Mapping[str, Mapping[str, int]], sampling: Sampling) -> Dict[str, float]:
    """``{"<dataset>_<source>": weight}`` summing to 1, for sources with at least one example.

    Args:
      counts: per dataset, the record counts of :func:`busdet.training.data.write_tfrecords`
        (``{"busi": {"train_benign": 260, ...}, ...}``).
    """
    given = sampling.dataset_weights.as_dict() if sampling.dataset_weights else {}
    unknown = set(given) - set(counts)
    if unknown:
        raise ValueError(f"sampling.dataset_weights names datasets not in --data: {sorted(unknown)}")
    dataset_weights = {name: float(given.get(name, 1.0 if not given else 0.0)) for name in counts}
    total = sum(dataset_weights.values())
    if total <= 0:
        raise ValueError("sampling.dataset_weights: no dataset has a positive weight")
    weights: Dict[str, float] = {}
    for dataset, share in dataset_weights.items():
        for source, weight in _within_dataset(counts[dataset], sampling).items():
            weights[f"{dataset}_{source}"] = share / total * weight
    return {key: value for key, value in weights.items() if value > 0}


def _within_dataset(counts: Mapping[str, int], sampling: Sampling) -> Dict[str, float]:
    """One dataset's source weights, summing to 1."""
    train = {stem.removeprefix("train_"): n for stem, n in counts.items() if stem.startswith("train_") and n > 0}
    negatives = {s: n for s, n in train.items() if s in (DEFAULT_NEGATIVE_CLASS, BACKGROUND_SOURCE)}
    lesions = {s: n * (sampling.malignant_boost if s == MALIGNANT_CLASS else 1.0)
               for s, n in train.items() if s not in negatives}
    if not lesions:
        raise ValueError("a dataset has no training images with lesions")
    negative_fraction = sampling.negative_fraction if negatives else 0.0
    weights = {s: (1 - negative_fraction) * v / sum(lesions.values()) for s, v in lesions.items()}
    if len(negatives) == 2:
        weights[DEFAULT_NEGATIVE_CLASS] = negative_fraction * sampling.normal_share
        weights[BACKGROUND_SOURCE] = negative_fraction * (1 - sampling.normal_share)
    elif negatives:
        weights[next(iter(negatives))] = negative_fraction
    return weights
