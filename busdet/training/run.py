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

import cv2
import tensorflow as tf
from official.core import exp_factory, task_factory, train_lib, train_utils
from official.modeling import hyperparams

from busdet.annotations import annotate_dataset
from busdet.datasets import DatasetSpec, check_distinct, read_patient_groups, read_split_csv
from busdet.files import write_json
from busdet.label_map import load_label_map
from busdet.training import data
from busdet.training.copy_paste import LESION_BANK_FILE, build_lesion_bank
from busdet.training.experiment import EXPERIMENT_NAME
from busdet.training.sampling import source_weights

log = logging.getLogger(__name__)


def prepare_data(datasets: Sequence[DatasetSpec], label_map_path: Path, records_dir: Path, seed: int = 0,
                 background_crops: bool = True, progress=lambda items: items) -> Dict[str, Dict[str, int]]:
    """Annotates, splits (or reuses each split CSV) and writes TFRecords for every dataset.

    Records go to ``records_dir/<name>/``, with the lesion bank of the training split
    (``lesion_bank.npz``, for copy-paste). Returns, per dataset name, the example count
    per record file (``{"busi": {"train_benign": 260, "val": 100, ...}}``). A dataset's
    work is skipped when its folder already holds records made from the same split and
    options (``manifest.json``); a bank missing beside such records is made alone.
    """
    classes = load_label_map(label_map_path)
    check_distinct(datasets)
    return {spec.name: _prepare_dataset(spec, index, classes, records_dir / spec.name, seed, background_crops,
                                        progress)
            for index, spec in enumerate(datasets)}


def _prepare_dataset(spec: DatasetSpec, index: int, classes: Dict[int, str], records_dir: Path, seed: int,
                     background_crops: bool, progress) -> Dict[str, int]:
    images, problems = annotate_dataset(spec.path, list(classes.values()))
    for problem in problems:
        log.warning("%s", problem.report_line)
    if not images:
        raise ValueError(f"{spec.path}: no annotated images (expected one folder per class: "
                         f"{', '.join(classes.values())}, normal)")
    if spec.split_path.exists():
        split = read_split_csv(spec.split_path)
    else:
        groups = read_patient_groups(spec.path)
        split = data.build_split(images, seed=seed, groups=groups)
        data.write_split_csv(split, {i.filename: i.label for i in images}, spec.split_path, groups)
        log.info("wrote a new split to %s", spec.split_path)
    missing = [i.filename for i in images if i.filename not in split]
    if missing:
        raise ValueError(f"{spec.split_path}: {len(missing)} images are in no split, e.g. {missing[0]}")
    key = {"dataset": str(Path(spec.path).resolve()), "index": index, "split": sorted(split.items()),
           "background_crops": background_crops, "classes": classes, "format": 2}
    manifest_path = records_dir / "manifest.json"
    bank_path = records_dir / LESION_BANK_FILE
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") == json.loads(json.dumps(key)):
            # The bank is written before the manifest, so one beside matching records matches them too.
            if not bank_path.exists():
                _write_lesion_bank(spec, images, split, classes, bank_path)
            return manifest["counts"]
    counts = data.write_tfrecords(images, split, classes, records_dir, index, background_crops, progress)
    _write_lesion_bank(spec, images, split, classes, bank_path)
    write_json({"key": key, "counts": counts}, manifest_path)
    log.info("%s: examples per record file %s", spec.name, counts)
    return counts


def _write_lesion_bank(spec: DatasetSpec, images, split: Dict[str, str], classes: Dict[int, str],
                       path: Path) -> None:
    bank = build_lesion_bank(spec.path, images, split, classes, spec.name)
    bank.save(path)
    per_class = {label: len(bank.indices(label)) for label in sorted(set(bank.labels))}
    log.info("%s: lesion bank of %d training lesions %s in %s", spec.name, len(bank), per_class, path)


def build_params(config_files: Sequence[Path], records_dir: Path, counts: Dict[str, Dict[str, int]],
                 init: str = "none", overrides: Optional[str] = None,
                 model_dir: Optional[Path] = None,
                 class_names: Optional[Sequence[str]] = None) -> hyperparams.Config:
    """The experiment config with the stage YAML files, data paths and ``init`` applied.

    ``init``: ``none`` (random), ``imagenet=PATH`` (a Keras MobileNetV2 weights file
    copied into a backbone checkpoint under ``model_dir``, see :mod:`busdet.training.imagenet`)
    or a checkpoint file or folder of an earlier run to start the whole model from
    (whose own ``backbone_init`` the new run inherits).
    ``class_names``: the label map's names in id order (validation names its metrics
    by them); the experiment's benign/malignant when None.
    """
    params = exp_factory.get_exp_config(EXPERIMENT_NAME)
    for path in config_files:
        params = hyperparams.override_params_dict(params, str(path), is_strict=True)
    if overrides:
        params = hyperparams.override_params_dict(params, overrides, is_strict=True)
    if class_names is not None:
        params.task.class_names = list(class_names)
    train_data = _training_sources(params.task.train_data.sampling, records_dir, counts)
    augmentation = params.task.train_data.augmentation
    if augmentation is not None and augmentation.copy_paste_probability > 0:
        train_data["augmentation"] = {"copy_paste_banks": [str(records_dir / name / LESION_BANK_FILE)
                                                           for name in counts]}
    params = hyperparams.override_params_dict(params, {"task": {
        "dataset_names": list(counts),
        "train_data": train_data,
        "validation_data": {"input_path": [str(records_dir / name / "val.tfrecord") for name in counts]}}},
        is_strict=True)
    # Evaluate the whole validation split of every dataset, whatever its size.
    val_batch = params.task.validation_data.global_batch_size
    params.trainer.validation_steps = -(-sum(c.get("val", 0) for c in counts.values()) // val_batch)
    if init.startswith("imagenet"):
        from busdet.training import imagenet

        weights_file = imagenet.parse_imagenet_init(init)
        params.task.backbone_init = imagenet.describe_weights_file(weights_file)
        if not _has_checkpoint(model_dir):  # a resumed run restores its own checkpoint instead
            params.task.init_checkpoint = imagenet.build_backbone_checkpoint(
                params, Path(model_dir) / "imagenet_init", weights_file)
            params.task.init_checkpoint_modules = "backbone"
    elif init != "none":
        checkpoint = Path(init)
        params.task.init_checkpoint = tf.train.latest_checkpoint(str(checkpoint)) if checkpoint.is_dir() else init
        if not params.task.init_checkpoint:
            raise FileNotFoundError(f"--init {init}: no checkpoint found")
        params.task.backbone_init = _backbone_init_of(Path(params.task.init_checkpoint))
    params.validate()
    params.lock()
    return params


def _training_sources(sampling, records_dir: Path, counts: Dict[str, Dict[str, int]]) -> dict:
    """``input_path`` and ``weights`` dicts for Model Garden's weighted sampling of the sources."""
    weights = source_weights(counts, sampling)
    for key, weight in weights.items():
        log.info("sampling %s: %.3f", key, weight)
    paths = {}
    for dataset, dataset_counts in counts.items():
        for stem in dataset_counts:
            key = f"{dataset}_{stem.removeprefix('train_')}"
            if key in weights:
                paths[key] = str(records_dir / dataset / f"{stem}.tfrecord")
    return {"input_path": paths, "weights": weights}


def load_run_params(model_dir: Path) -> hyperparams.Config:
    """The resolved config a run saved as ``model_dir/params.yaml`` (by :func:`train`)."""
    params_path = Path(model_dir) / "params.yaml"
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path}: not found (expected a run made by tools/train.py)")
    return hyperparams.override_params_dict(exp_factory.get_exp_config(EXPERIMENT_NAME), str(params_path),
                                            is_strict=True)


def _backbone_init_of(checkpoint: Path) -> dict:
    """The ``backbone_init`` recorded by the run that wrote ``checkpoint`` (its ``params.yaml`` is in
    the checkpoint's folder or, for ``best/``, the one above); ``unknown`` when none is found, rather
    than claim a random start nobody recorded."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "params.yaml").is_file():
            return load_run_params(folder).task.backbone_init.as_dict()
    return {"weights": "unknown", "file": "", "sha256": ""}


def _has_checkpoint(model_dir: Optional[Path]) -> bool:
    return model_dir is not None and tf.train.latest_checkpoint(str(model_dir)) is not None


class ValidationStalled(Exception):
    """Raised by :class:`StopWhenValidationStalls` to end a run early."""


def validation_stalled(model_dir: Path, patience_steps: int, step: int) -> Optional[str]:
    """Why the run should stop, or None: the best checkpoint is ``patience_steps`` older than ``step``.

    Reads the best checkpoint's step from Model Garden's exporter (``best/info.json``),
    so a resumed run goes on counting where it stopped.
    """
    info_path = Path(model_dir) / "best" / "info.json"
    if patience_steps <= 0 or not info_path.is_file():
        return None
    best_step = int(json.loads(info_path.read_text())["best_ckpt_global_step"])
    if step - best_step < patience_steps:
        return None
    return f"no better validation since step {best_step} (now {step}, patience {patience_steps} steps)"


class StopWhenValidationStalls:
    """An Orbit eval action: raises :class:`ValidationStalled` once :func:`validation_stalled` says so."""

    def __init__(self, model_dir: Path, patience_steps: int, global_step: tf.Variable):
        self._model_dir = model_dir
        self._patience_steps = patience_steps
        self._global_step = global_step

    def __call__(self, eval_output) -> None:
        reason = validation_stalled(self._model_dir, self._patience_steps, int(self._global_step.numpy()))
        if reason:
            raise ValidationStalled(reason)


def _latest_step(model_dir: Path) -> int:
    latest = tf.train.latest_checkpoint(str(model_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def train(params: hyperparams.Config, model_dir: Path) -> dict:
    """Trains and evaluates (resuming from ``model_dir``); returns the last eval logs.

    With ``task.early_stop_patience_steps`` the run ends early once validation has not
    improved for that many steps (the latest and the best checkpoints are kept).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    # A run that already stopped early stays stopped: re-running a pipeline costs nothing.
    reason = validation_stalled(model_dir, params.task.early_stop_patience_steps, _latest_step(model_dir))
    if reason:
        log.info("not resuming, the run stopped early: %s", reason)
        return {}
    train_utils.serialize_config(params, str(model_dir))
    # Augmentation runs OpenCV inside tf.data's parallel map: one thread per call, or
    # OpenCV's own pool competes with tf.data's and the model's for the same cores.
    cv2.setNumThreads(1)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=str(model_dir))
        trainer = train_utils.create_trainer(params, task, train=True, evaluate=True,
                                             checkpoint_exporter=train_lib.maybe_create_best_ckpt_exporter(
                                                 params, str(model_dir)))
    eval_actions = []
    if params.task.early_stop_patience_steps > 0:
        eval_actions.append(StopWhenValidationStalls(model_dir, params.task.early_stop_patience_steps,
                                                     trainer.global_step))
    try:
        _, logs = train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train_and_eval",
                                           params=params, model_dir=str(model_dir), trainer=trainer,
                                           eval_actions=eval_actions)
    except ValidationStalled as stop:
        log.info("stopped early: %s", stop)
        return {}
    return logs
