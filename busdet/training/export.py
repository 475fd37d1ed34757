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

``flip_tta=True`` (off by default) adds horizontal-flip test-time augmentation to the graph:
the network also sees the resized image mirrored within its own area (the padding stays at the
right and bottom, where training put it), the mirrored pass's candidates are mapped back to the
image, and the detection generator, unchanged, selects among both passes' candidates at once
(:func:`merge_mirrored_pass`). ``image_features`` stay those of the unflipped pass.

:func:`export_onnx` converts the SavedModel's ``serving_default`` graph into
``model.onnx`` beside it with tf2onnx, up to the decoded boxes and scores of every
anchor, and appends the detection generator's selection (top-k, class-agnostic
NMS, rescaling) as native ONNX ops (:mod:`busdet.onnx_nms`: tf2onnx would make a
slow ``Loop`` of Model Garden's NMS). The outputs keep the signature's names. It
records in ``model_info.json`` the digests that let
:func:`busdet.inference.load_detector` refuse a stale ONNX file, and the NMS
settings the graph applies.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
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
from busdet.onnx_nms import DETECTION_OUTPUTS, append_detection_selection, read_nms_settings
from busdet.training.experiment import EXPERIMENT_NAME
from busdet.training.run import load_run_params

log = logging.getLogger(__name__)
ONNX_OPSET = 17
# Where Model Garden's class-agnostic generator begins (``_generate_detections_v2_class_agnostic``):
# its first top_k reads the class scores, and the squeeze beside it the decoded boxes.
SCORES_CONSUMER = "generate_detections_class_agnostic/TopKV2"
BOXES_CONSUMER = "generate_detections_class_agnostic/Squeeze_1"
INPUT_SPEC = tf.TensorSpec([1, None, None, 3], tf.uint8, name="inputs")
# Backbone levels pooled into FEATURES_OUTPUT: those the FPN reads. Level 6 (the last 1x1
# convolution) is not among them, so it never learned anything from our data.
FEATURE_LEVELS = ("3", "4", "5")


class DetectionWithFeaturesModule(detection.DetectionModule):
    """Model Garden's detection serving module, plus the pooled backbone features
    (:data:`FEATURES_OUTPUT`) computed in the same forward pass as the boxes; with ``flip_tta``,
    the horizontal-flip test-time augmentation of the module doc."""

    def __init__(self, *args, flip_tta: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if flip_tta and self._batch_size != 1:
            raise ValueError("flip test-time augmentation is built for a batch-1 signature only")
        self._flip_tta = flip_tta

    def preprocess(self, images: tf.Tensor):
        """Model Garden's preprocessing of the one image of a batch-1 signature, without its
        ``tf.map_fn``: the same ops on ``images[0]``, so the same pixels, but no loop. tf2onnx
        turns the map into an ONNX ``Loop`` that ONNX Runtime runs op by op with dynamic shapes
        (about a tenth of the network's time, issue 21); unrolled, the anchors fold into constants."""
        if self._batch_size != 1:
            return super().preprocess(images)
        with tf.device("cpu:0"):
            image, anchor_boxes, image_info = self._build_inputs(images[0])
            image = tf.ensure_shape(image, self._padded_size + [3])
            return (image[tf.newaxis], {level: anchors[tf.newaxis] for level, anchors in anchor_boxes.items()},
                    image_info[tf.newaxis])

    def serve(self, images: tf.Tensor):
        outputs = self._serve_with_mirror(images) if self._flip_tta else super().serve(images)
        levels = [outputs[f"backbone_{level}"] for level in FEATURE_LEVELS]
        intermediate = [key for key in outputs if key.startswith(("backbone_", "decoder_"))]
        for key in intermediate:
            del outputs[key]
        outputs[FEATURES_OUTPUT] = pool_image_area(levels, outputs["image_info"], self._padded_size)
        return outputs

    def _serve_with_mirror(self, images: tf.Tensor) -> dict:
        """What ``super().serve`` returns (detections, ``backbone_*`` levels, ``image_info``), from the
        image and its mirror: one batch-2 pass of the network, one selection by the model's own detection
        generator over both passes' candidates (``[1, 2N, ...]`` at its input, where :func:`export_onnx`
        cuts the graph), the backbone levels of the unflipped image only."""
        images, anchor_boxes, image_info = self.preprocess(images)
        image_shape = image_info[:, 1, :]  # what super().serve gives the generator: the canvas's size
        width = resized_width(image_info)
        with tf.name_scope("flip_tta"):
            pair = tf.concat([images, mirror_image_area(images, width)], axis=0)
        model = self.model
        features = model.backbone(pair)
        raw_scores, raw_boxes, _ = model.head(model.decoder(features) if model.decoder else features)
        with tf.name_scope("flip_tta"):
            raw_scores, raw_boxes, anchor_boxes = merge_mirrored_pass(raw_scores, raw_boxes, anchor_boxes, width)
        detections = model.detection_generator(raw_boxes, raw_scores, anchor_boxes, image_shape)
        detections = self._normalize_coordinates(detections, ["detection_boxes"], image_info)
        outputs = {key: detections[key] for key in DETECTION_OUTPUTS}
        outputs.update({f"backbone_{level}": level_features[:1] for level, level_features in features.items()})
        outputs["image_info"] = image_info
        return outputs


def resized_width(image_info: tf.Tensor) -> tf.Tensor:
    """The width of the resized image at the canvas's top left (``image_info`` ``[1, 4, 2]``; its row 1 is
    the canvas's size, not the image's): the input's width times its scale, which Model Garden rounded."""
    return tf.round(image_info[0, 0, 1] * image_info[0, 2, 1])


def mirror_image_area(images: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """``images`` ``[B, H, W, C]`` with their first ``width`` columns (the resized image) mirrored and the
    columns after them (the padding) left where they are: the network sees padding where it was trained to."""
    columns = tf.range(tf.shape(images)[2])
    last = tf.cast(width, tf.int32) - 1
    return tf.gather(images, tf.where(columns <= last, last - columns, columns), axis=2)


def merge_mirrored_pass(raw_scores: dict, raw_boxes: dict, anchor_boxes: dict, width: tf.Tensor):
    """One image's worth of detection-generator input ``(raw_scores, raw_boxes, anchor_boxes)`` from a
    batch-2 head output, image then its mirror (:func:`mirror_image_area`, ``width`` the resized image's).

    Each level's maps are stacked along the rows, image then mirror, so the generator decodes twice the
    candidates (``[1, 2N, ...]``) and its one NMS chooses among both. The mirror's regressions are decoded
    against the mirrored anchors (x1, x2 -> width - x2, width - x1) with the x-offset negated: Model
    Garden's decoding (centre = anchor centre + dx * anchor width; sizes from dh, dw) then gives the
    mirror's box already reflected back into the image, exactly, and the generator clips it to the canvas
    in the image's frame, as it clips the image's own boxes. ``anchor_boxes`` are the image's,
    ``[1, h, w, A * 4]`` per level.
    """
    merged_scores, merged_boxes, merged_anchors = {}, {}, {}
    for level, boxes in raw_boxes.items():
        anchors = anchor_boxes[level]
        width = tf.cast(width, anchors.dtype)
        per_anchor = anchors.shape[-1] // 4
        negate_dx = tf.constant([1.0, -1.0, 1.0, 1.0] * per_anchor, boxes.dtype)  # (dy, dx, dh, dw) per anchor
        merged_boxes[level] = tf.concat([boxes[:1], boxes[1:2] * negate_dx], axis=1)
        merged_scores[level] = tf.concat([raw_scores[level][:1], raw_scores[level][1:2]], axis=1)
        corners = tf.reshape(anchors, [*anchors.shape[:-1], per_anchor, 4])
        y1, x1, y2, x2 = tf.unstack(corners, axis=-1)
        mirrored = tf.reshape(tf.stack([y1, width - x2, y2, width - x1], axis=-1), anchors.shape)
        merged_anchors[level] = tf.concat([anchors, mirrored], axis=1)
    return merged_scores, merged_boxes, merged_anchors


def pool_image_area(levels, image_info: tf.Tensor, padded_size) -> tf.Tensor:
    """Mean of each feature map ``[B, h, w, C]`` over the cells covering the resized image (the
    padding left out, so the aspect ratio does not dilute the features), concatenated: ``[B, sum C]``.

    ``image_info`` is Model Garden's: rows original size, canvas size, scale, offset. The resized
    image, at the canvas's top left, is original size x scale: row 1 is the whole ``padded_size``
    canvas (models up to v2 pooled over that, padding included, and their statistics were fitted so).
    """
    resized = image_info[:, 0, :] * image_info[:, 2, :]  # [B, 2] (height, width) in canvas pixels
    pooled = []
    for features in levels:
        rows, columns = tf.shape(features)[1], tf.shape(features)[2]
        scale = tf.cast(tf.stack([rows, columns]), tf.float32) / tf.constant(padded_size, tf.float32)
        valid = tf.math.ceil(resized * scale - 1e-3)  # [B, 2] cells covered (tolerant of float rounding)
        row_mask = tf.cast(tf.range(rows), tf.float32)[tf.newaxis, :] < valid[:, 0:1]
        column_mask = tf.cast(tf.range(columns), tf.float32)[tf.newaxis, :] < valid[:, 1:2]
        mask = tf.cast(row_mask[:, :, tf.newaxis] & column_mask[:, tf.newaxis, :], features.dtype)[..., tf.newaxis]
        total = tf.reduce_sum(features * mask, axis=[1, 2])
        pooled.append(total / tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0))
    return tf.concat(pooled, axis=-1)


def export_saved_model(params: hyperparams.Config, checkpoint: str, output_dir: Path,
                       classes: dict, score_threshold: Optional[float] = None,
                       extra_info: Optional[dict] = None, flip_tta: bool = False) -> Path:
    """Exports ``checkpoint`` (file or folder) to ``output_dir``, replacing it only on success.

    Returns the SavedModel folder. ``score_threshold`` (the operating point) and
    ``extra_info`` go into ``model_info.json``, and ``flip_tta`` (the graph's horizontal-flip
    test-time augmentation, see the module doc) as ``"flip_tta"``.
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
                                             input_type="image_tensor", num_channels=3, flip_tta=flip_tta)
        export_saved_model_lib.export_inference_graph(
            input_type="image_tensor", batch_size=1, input_image_size=[height, width], params=params,
            checkpoint_path=checkpoint_path, export_dir=str(staging), export_module=module)
        info = {"input_size": [height, width], "classes": {str(k): v for k, v in classes.items()},
                "score_threshold": score_threshold,
                # The run folder too: "best_ckpt-30" alone does not say which stage it came from.
                "checkpoint": "/".join(Path(checkpoint_path).parts[-3:]),
                "class_agnostic_nms": bool(params.task.model.detection_generator.use_class_agnostic_nms),
                "nms_iou_threshold": float(params.task.model.detection_generator.nms_iou_threshold),
                # The network also runs on the mirrored image (twice the network time per image).
                "flip_tta": bool(flip_tta),
                "trained_on": [{"name": name, "citation": citation_line(name)}
                               for name in params.task.dataset_names],
                # What the backbone started from (--init), with the weights file's digest.
                "backbone_init": params.task.backbone_init.as_dict()}
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


def export_onnx(model_dir: Path, opset: int = ONNX_OPSET, pre_nms_top_k: Optional[int] = None) -> Path:
    """Converts ``model_dir``'s ``serving_default`` to ``model_dir/model.onnx`` with tf2onnx.

    The ONNX graph has the signature's input (``inputs``, uint8 ``[1, H, W, 3]``) and
    output names; the NMS is ONNX's (:mod:`busdet.onnx_nms`) with the SavedModel's
    settings from its ``params.yaml`` (``pre_nms_top_k`` overrides the top-k, for
    trials). ``model_info.json`` gains ``"onnx"``: the SavedModel's digest, the ONNX
    file's, the opset, the converter and the NMS settings. The SavedModel itself is
    not changed. Returns the ONNX file's path.
    """
    model_dir = Path(model_dir)
    try:
        settings = read_nms_settings(load_run_params(model_dir).task.model.detection_generator.as_dict())
    except ValueError as error:  # e.g. --params-override per-class NMS: converted whole, Loop and all
        log.warning("%s; converting the whole graph, NMS as tf2onnx makes it (slow)", error)
        proto, nms = convert_whole(model_dir, opset), {"op": "Loop (tf2onnx's conversion of Model Garden's NMS)"}
    else:
        if pre_nms_top_k is not None:
            settings = replace(settings, pre_nms_top_k=pre_nms_top_k)
        proto = convert_without_nms(model_dir, opset)
        append_detection_selection(proto, "pre_nms_scores", "pre_nms_boxes", "image_info", settings)
        nms = {"op": "NonMaxSuppression", "class_agnostic": True, **settings.as_dict()}
    path = model_dir / ONNX_FILE
    with atomic_write(path) as stream:
        stream.write(proto.SerializeToString())
    info = read_model_info(model_dir)
    info["onnx"] = {"saved_model_sha256": compute_saved_model_digest(model_dir), "sha256": compute_file_digest(path),
                    "opset": opset, "converter": f"tf2onnx {metadata.version('tf2onnx')}",
                    # What the graph's NMS does, for anyone reproducing it (the browser page).
                    "nms": nms}
    write_model_info(model_dir, info)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _serving_function(model_dir: Path):
    """``(serve, loaded)``: ``serving_default`` as a tf.function of ``inputs`` (keep ``loaded``
    referenced: the signature needs its variables alive)."""
    loaded = tf.saved_model.load(str(model_dir))
    signature = loaded.signatures["serving_default"]
    return tf.function(lambda inputs: signature(inputs=inputs)), loaded


def convert_whole(model_dir: Path, opset: int):
    """The ONNX proto of the whole ``serving_default`` graph, as tf2onnx converts it."""
    import tf2onnx  # imports TensorFlow's graph tools: only when converting

    serve, _loaded = _serving_function(model_dir)
    return tf2onnx.convert.from_function(serve, input_signature=[INPUT_SPEC], opset=opset)[0]


def convert_without_nms(model_dir: Path, opset: int):
    """The ONNX proto of ``serving_default`` up to the generator's input: outputs ``pre_nms_scores``
    (``[1, N, C]``), ``pre_nms_boxes`` (``[1, N, 1, 4]``) and every signature output but the four
    detection outputs (``image_info``, and any other, under its signature name)."""
    from tf2onnx import tf_loader  # imports TensorFlow's graph tools: only when converting
    from tf2onnx.convert import from_graph_def, tensor_names_from_structed

    serve, _loaded = _serving_function(model_dir)
    concrete = serve.get_concrete_function(INPUT_SPEC)
    inputs = [tensor.name for tensor in concrete.inputs if tensor.dtype != tf.resource]
    outputs = [tensor.name for tensor in concrete.outputs if tensor.dtype != tf.resource]
    names = tensor_names_from_structed(concrete, inputs, outputs)
    with tf.device("/cpu:0"):
        frozen = tf_loader.from_function(concrete, inputs, outputs)
    scores, boxes = find_consumer_input(frozen, SCORES_CONSUMER), find_consumer_input(frozen, BOXES_CONSUMER)
    kept = [name for name in outputs if names[name] not in DETECTION_OUTPUTS]
    names.update({scores: "pre_nms_scores", boxes: "pre_nms_boxes"})
    proto, _ = from_graph_def(frozen, input_names=inputs, output_names=kept + [scores, boxes], opset=opset,
                              tensors_to_rename=names)
    return proto


def find_consumer_input(graph_def, consumer: str) -> str:
    """The tensor name (``"op:0"``) of the first input of the one node whose name ends with ``consumer``.

    Raises:
      ValueError: no such node, or several (a detection generator this exporter does not know).
    """
    nodes = [node for node in graph_def.node if node.name.endswith("/" + consumer)]
    if len(nodes) != 1:
        raise ValueError(f"the SavedModel's graph has {len(nodes)} nodes named */{consumer}, expected one: "
                         "not Model Garden's class-agnostic v2 detection generator")
    name = nodes[0].input[0]
    return name if ":" in name else name + ":0"
