"""Run a training stage: prepare data, resolve the config, train with Model Garden's trainer.

The same call resumes: data preparation is skipped when its outputs exist, and
Model Garden's checkpoint manager restores the latest checkpoint in the model
folder (``--init`` only applies to a fresh folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

import tensorflow as tf
from official.core import exp_factory, task_factory, train_lib, train_utils
from official.modeling import hyperparams

from busdet.annotations import annotate_dataset
from busdet.label_map import load_label_map
from busdet.training import data
from busdet.training.experiment import EXPERIMENT_NAME

log = logging.getLogger(__name__)


def prepare_data(dataset_dir: Path, label_map_path: Path, split_path: Path, records_dir: Path,
                 oversample: Dict[str, int], seed: int = 0, progress=lambda items: items) -> Dict[str, int]:
    """Annotates ``dataset_dir``, splits it (or reuses ``split_path``) and writes TFRecords.

    Returns the example counts per split. Skips the work when ``records_dir`` already
    holds records made from the same split and options (``manifest.json``).
    """
    manifest_path = records_dir / "manifest.json"
    classes = load_label_map(label_map_path)
    images, problems = annotate_dataset(dataset_dir, list(classes.values()))
    for problem in problems:
        log.warning("%s", problem.report_line)
    if split_path.exists():
        split = data.read_split_csv(split_path)
    else:
        split = data.build_split(images, seed=seed)
        data.write_split_csv(split, {i.filename: i.label for i in images}, split_path)
        log.info("wrote a new split to %s", split_path)
    missing = [i.filename for i in images if i.filename not in split]
    if missing:
        raise ValueError(f"{split_path}: {len(missing)} images are in no split, e.g. {missing[0]}")
    key = {"dataset": str(Path(dataset_dir).resolve()), "split": sorted(split.items()),
           "oversample": oversample, "classes": classes}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == json.loads(json.dumps(key)):
            return manifest["counts"]
    counts = data.write_tfrecords(images, split, classes, records_dir, oversample, progress)
    manifest_path.write_text(json.dumps({"key": key, "counts": counts}))
    return counts


def build_params(config_files: Sequence[Path], records_dir: Path, counts: Dict[str, int],
                 init: str = "none", overrides: Optional[str] = None,
                 model_dir: Optional[Path] = None,
                 class_names: Optional[Sequence[str]] = None) -> hyperparams.Config:
    """The experiment config with the stage YAML files, data paths and ``init`` applied.

    ``init``: ``none`` (random), ``imagenet`` (Keras MobileNetV2 weights copied into
    a backbone checkpoint under ``model_dir``, see :mod:`busdet.training.imagenet`)
    or a checkpoint file or folder of an earlier run to start the whole model from.
    ``class_names``: the label map's names in id order (validation names its metrics
    by them); the experiment's benign/malignant when None.
    """
    params = exp_factory.get_exp_config(EXPERIMENT_NAME)
    for path in config_files:
        params = hyperparams.override_params_dict(params, str(path), is_strict=True)
    params = hyperparams.override_params_dict(params, {"task": {
        "train_data": {"input_path": str(records_dir / "train.tfrecord")},
        "validation_data": {"input_path": str(records_dir / "val.tfrecord")}}}, is_strict=True)
    if class_names is not None:
        params.task.class_names = list(class_names)
    if overrides:
        params = hyperparams.override_params_dict(params, overrides, is_strict=True)
    # Evaluate the whole validation split, whatever its size.
    val_batch = params.task.validation_data.global_batch_size
    params.trainer.validation_steps = -(-counts["val"] // val_batch)
    if init == "imagenet" and not _has_checkpoint(model_dir):
        from busdet.training.imagenet import build_backbone_checkpoint
        params.task.init_checkpoint = build_backbone_checkpoint(params, Path(model_dir) / "imagenet_init")
        params.task.init_checkpoint_modules = "backbone"
    elif init not in ("none", "imagenet"):
        checkpoint = Path(init)
        params.task.init_checkpoint = tf.train.latest_checkpoint(str(checkpoint)) if checkpoint.is_dir() else init
        if not params.task.init_checkpoint:
            raise FileNotFoundError(f"--init {init}: no checkpoint found")
    params.validate()
    params.lock()
    return params


def load_run_params(model_dir: Path) -> hyperparams.Config:
    """The resolved config a run saved as ``model_dir/params.yaml`` (by :func:`train`)."""
    params_path = Path(model_dir) / "params.yaml"
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path}: not found (expected a run made by tools/train.py)")
    return hyperparams.override_params_dict(exp_factory.get_exp_config(EXPERIMENT_NAME), str(params_path),
                                            is_strict=True)


def _has_checkpoint(model_dir: Optional[Path]) -> bool:
    return model_dir is not None and tf.train.latest_checkpoint(str(model_dir)) is not None


def train(params: hyperparams.Config, model_dir: Path) -> dict:
    """Trains and evaluates (resuming from ``model_dir``); returns the last eval logs."""
    model_dir.mkdir(parents=True, exist_ok=True)
    train_utils.serialize_config(params, str(model_dir))
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=str(model_dir))
    _, logs = train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train_and_eval",
                                       params=params, model_dir=str(model_dir))
    return logs
