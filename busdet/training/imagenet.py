"""``--init imagenet=PATH``: start the backbone from an ImageNet MobileNetV2 weights file.

Keras' ``MobileNetV2(include_top=False)`` and Model Garden's ``mobilenet``
backbone (``MobileNetV2``) are the same network built by different code: the
same convolutions and batch norms, in the same order. The weights are copied
unit by unit (one conv kernel, or one batch norm's four tensors), checking every
shape, into a backbone-only checkpoint that Model Garden's RetinaNet task loads
with ``init_checkpoint_modules: backbone``.

The weights are read from a file the user names (a Keras ``.h5`` of
``MobileNetV2(include_top=False)``), never downloaded and never looked up in
``~/.keras``: a run must say exactly what it started from. The file's sha256
goes into the run's ``params.yaml`` (``task.backbone_init``), is carried from
stage to stage by ``--init CHECKPOINT``, and ends in ``model_info.json``.
Note the input scaling differs (Keras [-1, 1], Model Garden ImageNet mean/std):
fine-tuning absorbs it, the first layer just starts slightly off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import tensorflow as tf
import tf_keras
from official.modeling import hyperparams
from official.vision.modeling.backbones import factory as backbone_factory

from busdet.inference import compute_file_digest

log = logging.getLogger(__name__)


def _ordered_units(model: tf_keras.Model) -> List[List[tf.Variable]]:
    """Conv kernels and batch norms of ``model`` in creation order, one list per unit.

    A batch norm unit is ``[gamma, beta, moving_mean, moving_variance]``.
    """
    by_name = {v.name: v for v in model.weights}
    units = []
    for variable in model.trainable_weights:
        prefix, leaf = variable.name.rsplit("/", 1)
        if leaf.startswith(("kernel", "depthwise_kernel")):
            units.append([variable])
        elif leaf.startswith("gamma"):
            units.append([by_name[f"{prefix}/{key}:0"] for key in ("gamma", "beta", "moving_mean", "moving_variance")])
    return units


def copy_keras_weights(source: tf_keras.Model, target: tf_keras.Model) -> int:
    """Copies Keras MobileNetV2 weights into a Model Garden MobileNetV2 backbone.

    Returns the number of tensors copied. Raises ValueError when the two
    networks do not line up (different width multiplier, another architecture).
    """
    source_units, target_units = _ordered_units(source), _ordered_units(target)
    if len(source_units) != len(target_units):
        raise ValueError(f"Keras model has {len(source_units)} conv/BN units, backbone {len(target_units)}")
    copied = 0
    for index, (src, dst) in enumerate(zip(source_units, target_units)):
        for s, d in zip(src, dst):
            if tuple(s.shape) != tuple(d.shape):
                raise ValueError(f"unit {index}: {s.name} {tuple(s.shape)} does not fit {d.name} {tuple(d.shape)}")
            d.assign(s)
            copied += 1
    return copied


def build_backbone(params: hyperparams.Config) -> tf_keras.Model:
    """The experiment's backbone alone, as the RetinaNet factory builds it."""
    model = params.task.model
    input_specs = tf_keras.layers.InputSpec(shape=[None, *model.input_size])
    return backbone_factory.build_backbone(input_specs=input_specs, backbone_config=model.backbone,
                                           norm_activation_config=model.norm_activation)


def parse_imagenet_init(value: str) -> Path:
    """The weights file named by ``--init imagenet=PATH``; ValueError/FileNotFoundError in one line."""
    _, _, path = value.partition("=")
    if not path:
        raise ValueError("--init imagenet needs the weights file: --init imagenet=PATH, e.g. "
                         "imagenet=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5 (nothing is downloaded)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init {value}: no such file")
    return Path(path)


def describe_weights_file(path: Path) -> dict:
    """What ``task.backbone_init`` and ``model_info.json`` record of the start: name and digest, not the
    user's folder layout."""
    return {"weights": "imagenet", "file": Path(path).name, "sha256": compute_file_digest(path)}


def build_backbone_checkpoint(params: hyperparams.Config, output_dir: Path, weights_file: Path) -> str:
    """Writes a backbone checkpoint initialised from a Keras weights file; returns its path.

    Raises:
      RuntimeError: the file is not MobileNetV2 weights of the configured width.
    """
    backbone = build_backbone(params)
    try:
        keras_model = tf_keras.applications.MobileNetV2(
            input_shape=(None, None, 3), include_top=False, weights=str(weights_file),
            alpha=params.task.model.backbone.mobilenet.filter_size_scale)
        copied = copy_keras_weights(keras_model, backbone)
    except Exception as error:  # h5py, Keras and our own checks raise several types
        raise RuntimeError(f"--init imagenet={weights_file}: not usable as MobileNetV2 "
                           f"(include_top=False) weights: {error}") from None
    log.info("copied %d tensors from %s", copied, weights_file)
    output_dir.mkdir(parents=True, exist_ok=True)
    return tf.train.Checkpoint(backbone=backbone).write(str(output_dir / "backbone"))
