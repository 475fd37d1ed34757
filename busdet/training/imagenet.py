"""``--init imagenet``: start the backbone from Keras' ImageNet MobileNetV2 weights.

Keras' ``MobileNetV2(include_top=False)`` and Model Garden's ``mobilenet``
backbone (``MobileNetV2``) are the same network built by different code: the
same convolutions and batch norms, in the same order. The weights are copied
unit by unit (one conv kernel, or one batch norm's four tensors), checking every
shape, into a backbone-only checkpoint that Model Garden's RetinaNet task loads
with ``init_checkpoint_modules: backbone``.

Keras fetches the weights file on first use and caches it in ``~/.keras/models``;
with no network and no cached file, :func:`build_backbone_checkpoint` fails with
a message saying so (the shipped model is trained from random initialisation).
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


def build_backbone_checkpoint(params: hyperparams.Config, output_dir: Path, weights: str = "imagenet") -> str:
    """Writes a backbone checkpoint initialised from Keras weights; returns its path.

    Args:
      weights: ``"imagenet"`` (Keras' cached or downloaded file), a path to a Keras
        ``.h5`` weights file, or None (random; used by the tests).
    Raises:
      RuntimeError: the weights cannot be obtained (no network, no cached file).
    """
    backbone = build_backbone(params)
    try:
        keras_model = tf_keras.applications.MobileNetV2(
            input_shape=(None, None, 3), include_top=False, weights=weights,
            alpha=params.task.model.backbone.mobilenet.filter_size_scale)
    except Exception as error:  # Keras raises several types for a failed download
        raise RuntimeError(f"--init imagenet: cannot get Keras MobileNetV2 weights ({error}); they are "
                           "downloaded on first use, so this needs a network or the file in "
                           "~/.keras/models") from None
    copied = copy_keras_weights(keras_model, backbone)
    log.info("copied %d tensors from Keras MobileNetV2 (%s)", copied, weights)
    output_dir.mkdir(parents=True, exist_ok=True)
    return tf.train.Checkpoint(backbone=backbone).write(str(output_dir / "backbone"))
