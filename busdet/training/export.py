"""Export a trained checkpoint as the product's SavedModel (Model Garden's exporter).

    python tools/export_model.py --model-dir runs/stage2_640 --output saved_model

The ``serving_default`` signature takes ``inputs``: uint8 ``[1, H, W, 3]`` of any
H and W; the graph resizes with the aspect ratio kept and pads to the model size,
and returns ``detection_boxes`` (normalized ``[ymin, xmin, ymax, xmax]`` of the
input image), ``detection_scores``, ``detection_classes`` (label-map ids) and
``num_detections``, and ``image_features`` (float32 ``[1, D]``: the backbone's levels
3-5 averaged over the image's own area, not the padding, concatenated: what the
in-distribution check of :mod:`busdet.ood` scores). ``model_info.json`` beside it (:func:`busdet.inference.write_model_info`)
records the input size, the label map and the operating threshold.

:func:`export_onnx` converts the SavedModel, the whole ``serving_default`` graph
(resize-with-pad and NMS included), into ``model.onnx`` beside it with tf2onnx,
and records in ``model_info.json`` the digests that let
:func:`busdet.inference.load_detector` refuse a stale ONNX file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

import tensorflow as tf
from official.core import exp_factory
from official.modeling import hyperparams
from official.vision.serving import detection, export_saved_model_lib

from busdet.datasets import citation_line
from busdet.files import atomic_write
from busdet.inference import (FEATURES_OUTPUT, ONNX_FILE, compute_file_digest, compute_saved_model_digest,
                              read_model_info, write_model_info)
from busdet.training.experiment import EXPERIMENT_NAME

log = logging.getLogger(__name__)
ONNX_OPSET = 17
# Backbone levels pooled into FEATURES_OUTPUT: those the FPN reads. Level 6 (the last 1x1
# convolution) is not among them, so it never learned anything from our data.
FEATURE_LEVELS = ("3", "4", "5")


class DetectionWithFeaturesModule(detection.DetectionModule):
    """Model Garden's detection serving module, plus the pooled backbone features
    (:data:`FEATURES_OUTPUT`) computed in the same forward pass as the boxes."""

    def serve(self, images: tf.Tensor):
        outputs = super().serve(images)
        levels = [outputs[f"backbone_{level}"] for level in FEATURE_LEVELS]
        intermediate = [key for key in outputs if key.startswith(("backbone_", "decoder_"))]
        for key in intermediate:
            del outputs[key]
        outputs[FEATURES_OUTPUT] = pool_image_area(levels, outputs["image_info"], self._padded_size)
        return outputs


def pool_image_area(levels, image_info: tf.Tensor, padded_size) -> tf.Tensor:
    """Mean of each feature map ``[B, h, w, C]`` over the cells covering the resized image (the
    padding left out, so the aspect ratio does not dilute the features), concatenated: ``[B, sum C]``.

    ``image_info[:, 1]`` is the resized image's (height, width) in the ``padded_size`` canvas, at its top left.
    """
    pooled = []
    for features in levels:
        rows, columns = tf.shape(features)[1], tf.shape(features)[2]
        scale = tf.cast(tf.stack([rows, columns]), tf.float32) / tf.constant(padded_size, tf.float32)
        valid = tf.math.ceil(image_info[:, 1, :] * scale)  # [B, 2] cells covered
        row_mask = tf.cast(tf.range(rows), tf.float32)[tf.newaxis, :] < valid[:, 0:1]
        column_mask = tf.cast(tf.range(columns), tf.float32)[tf.newaxis, :] < valid[:, 1:2]
        mask = tf.cast(row_mask[:, :, tf.newaxis] & column_mask[:, tf.newaxis, :], features.dtype)[..., tf.newaxis]
        total = tf.reduce_sum(features * mask, axis=[1, 2])
        pooled.append(total / tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0))
    return tf.concat(pooled, axis=-1)


def export_saved_model(params: hyperparams.Config, checkpoint: str, output_dir: Path,
                       classes: dict, score_threshold: Optional[float] = None,
                       extra_info: Optional[dict] = None) -> Path:
    """Exports ``checkpoint`` (file or folder) to ``output_dir``, replacing it only on success.

    Returns the SavedModel folder. ``score_threshold`` (the operating point) and
    ``extra_info`` go into ``model_info.json``.
    """
    checkpoint_path = tf.train.latest_checkpoint(checkpoint) if Path(checkpoint).is_dir() else checkpoint
    if not checkpoint_path:
        raise FileNotFoundError(f"{checkpoint}: no checkpoint found")
    # A fresh copy: the training params are locked, and the export changes a few fields.
    params = hyperparams.override_params_dict(exp_factory.get_exp_config(EXPERIMENT_NAME), params.as_dict(),
                                              is_strict=True)
    params = hyperparams.override_params_dict(params, {"task": {
        "export_config": {"output_normalized_coordinates": True, "output_intermediate_features": True},
        # Training paths are of no use to a user of the model.
        "train_data": {"input_path": ""}, "validation_data": {"input_path": ""},
        "init_checkpoint": None}}, is_strict=True)
    height, width = params.task.model.input_size[:2]
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        module = DetectionWithFeaturesModule(params=params, batch_size=1, input_image_size=[height, width],
                                             input_type="image_tensor", num_channels=3)
        export_saved_model_lib.export_inference_graph(
            input_type="image_tensor", batch_size=1, input_image_size=[height, width], params=params,
            checkpoint_path=checkpoint_path, export_dir=str(staging), export_module=module)
        info = {"input_size": [height, width], "classes": {str(k): v for k, v in classes.items()},
                "score_threshold": score_threshold,
                # The run folder too: "best_ckpt-30" alone does not say which stage it came from.
                "checkpoint": "/".join(Path(checkpoint_path).parts[-3:]),
                "class_agnostic_nms": bool(params.task.model.detection_generator.use_class_agnostic_nms),
                "nms_iou_threshold": float(params.task.model.detection_generator.nms_iou_threshold),
                "trained_on": [{"name": name, "citation": citation_line(name)}
                               for name in params.task.dataset_names]}
        info.update(extra_info or {})
        write_model_info(staging, info)
        export_onnx(staging)
        if output_dir.exists():
            backup = output_dir.with_name(f".{output_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            output_dir.rename(backup)
            staging.rename(output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def export_onnx(model_dir: Path, opset: int = ONNX_OPSET) -> Path:
    """Converts ``model_dir``'s ``serving_default`` to ``model_dir/model.onnx`` with tf2onnx.

    The ONNX graph has the signature's input (``inputs``, uint8 ``[1, H, W, 3]``) and
    output names. ``model_info.json`` gains ``"onnx"``: the SavedModel's digest, the
    ONNX file's, the opset and the converter. The SavedModel itself is not changed.
    Returns the ONNX file's path.
    """
    import tf2onnx  # imports TensorFlow's graph tools: only when converting

    model_dir = Path(model_dir)
    loaded = tf.saved_model.load(str(model_dir))  # kept in a name: the signature needs its variables alive
    signature = loaded.signatures["serving_default"]
    serve = tf.function(lambda inputs: signature(inputs=inputs))
    spec = [tf.TensorSpec([1, None, None, 3], tf.uint8, name="inputs")]
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    path = model_dir / ONNX_FILE
    with atomic_write(path) as stream:
        stream.write(proto.SerializeToString())
    info = read_model_info(model_dir)
    info["onnx"] = {"saved_model_sha256": compute_saved_model_digest(model_dir), "sha256": compute_file_digest(path),
                    "opset": opset, "converter": f"tf2onnx {metadata.version('tf2onnx')}"}
    write_model_info(model_dir, info)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
