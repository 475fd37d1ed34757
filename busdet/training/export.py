"""Export a trained checkpoint as the product's SavedModel (Model Garden's exporter).

    python tools/export_model.py --model-dir runs/stage2_640 --output saved_model

The ``serving_default`` signature takes ``inputs``: uint8 ``[1, H, W, 3]`` of any
H and W; the graph resizes with the aspect ratio kept and pads to the model size,
and returns ``detection_boxes`` (normalized ``[ymin, xmin, ymax, xmax]`` of the
input image), ``detection_scores``, ``detection_classes`` (label-map ids) and
``num_detections``. ``model_info.json`` beside it (:func:`busdet.inference.write_model_info`)
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
from official.vision.serving import export_saved_model_lib

from busdet.datasets import citation_line
from busdet.files import atomic_write
from busdet.inference import (ONNX_FILE, compute_file_digest, compute_saved_model_digest, read_model_info,
                              write_model_info)
from busdet.training.experiment import EXPERIMENT_NAME

log = logging.getLogger(__name__)
ONNX_OPSET = 17


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
        "export_config": {"output_normalized_coordinates": True},
        # Training paths are of no use to a user of the model.
        "train_data": {"input_path": ""}, "validation_data": {"input_path": ""},
        "init_checkpoint": None}}, is_strict=True)
    height, width = params.task.model.input_size[:2]
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}."))
    try:
        export_saved_model_lib.export_inference_graph(
            input_type="image_tensor", batch_size=1, input_image_size=[height, width], params=params,
            checkpoint_path=checkpoint_path, export_dir=str(staging))
        info = {"input_size": [height, width], "classes": {str(k): v for k, v in classes.items()},
                "score_threshold": score_threshold,
                # The run folder too: "best_ckpt-30" alone does not say which stage it came from.
                "checkpoint": "/".join(Path(checkpoint_path).parts[-3:]),
                "class_agnostic_nms": bool(params.task.model.detection_generator.use_class_agnostic_nms),
                "nms_iou_threshold": float(params.task.model.detection_generator.nms_iou_threshold),
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
