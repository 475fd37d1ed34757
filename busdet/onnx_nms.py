"""The detection generator's selection as native ONNX ops, appended to the converted network.

    model = append_detection_selection(model, scores="pre_nms_scores", boxes="pre_nms_boxes",
                                       image_info="image_info", settings=NmsSettings(...))

tf2onnx turns Model Garden's padded NMS (``tf.image.non_max_suppression_padded``)
into an ONNX ``Loop`` that costs about as much as the network. The exporter
(:func:`busdet.training.export.export_onnx`) therefore converts the graph only up
to the decoded boxes and class scores of every anchor, and this module appends
what ``_generate_detections_v2_class_agnostic`` and the serving module do after
that, with ONNX's own ``NonMaxSuppression`` (which ONNX Runtime and
onnxruntime-web run natively):

1. each anchor keeps its best class (``ReduceMax``/``ArgMax`` over the classes);
2. the ``pre_nms_top_k`` best anchors are kept (``TopK``, sorted);
3. class-agnostic NMS: IoU above ``iou_threshold`` suppresses, scores at or below
   ``score_threshold`` are dropped, at most ``max_detections`` are kept;
4. boxes go back to the input image (``image_info``'s scale) and are normalised
   by its size, clipped to [0, 1]; classes become label-map ids (+1);
5. outputs are padded to ``max_detections`` as the SavedModel's are.

The outputs keep the signature's names, dtypes and shapes (``detection_boxes``
float ``[1, D, 4]`` normalised ``[ymin, xmin, ymax, xmax]``, ``detection_scores``
float ``[1, D]``, ``detection_classes`` int32 ``[1, D]``, ``num_detections`` int32
``[1]``); every other output of the graph (``image_info``, or any added later) is
left as it is. Only batch 1 is supported, as the signature's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
PREFIX = "busdet_nms/"


@dataclass(frozen=True)
class NmsSettings:
    """The detection generator's settings (``params.yaml``: ``task.model.detection_generator``)."""

    pre_nms_top_k: int
    score_threshold: float  # pre_nms_score_threshold: kept only when above it
    iou_threshold: float  # nms_iou_threshold: suppressed when the IoU is above it
    max_detections: int  # max_num_detections: the outputs' padded length

    def as_dict(self) -> dict:
        return asdict(self)


def read_nms_settings(detection_generator: dict) -> NmsSettings:
    """:class:`NmsSettings` from a Model Garden ``detection_generator`` config dict.

    Raises:
      ValueError: the config asks for something this selection does not do
        (per-class NMS, no NMS, another NMS version).
    """
    generator = detection_generator
    if not generator.get("apply_nms", True) or generator.get("nms_version") != "v2" \
            or not generator.get("use_class_agnostic_nms"):
        raise ValueError("only class-agnostic v2 NMS is reproduced in ONNX (detection_generator: "
                         f"apply_nms={generator.get('apply_nms')}, nms_version={generator.get('nms_version')}, "
                         f"use_class_agnostic_nms={generator.get('use_class_agnostic_nms')})")
    return NmsSettings(pre_nms_top_k=int(generator["pre_nms_top_k"]),
                       score_threshold=float(generator["pre_nms_score_threshold"]),
                       iou_threshold=float(generator["nms_iou_threshold"]),
                       max_detections=int(generator["max_num_detections"]))


class _Builder:
    """Collects nodes and constants under one name prefix."""

    def __init__(self):
        self.nodes, self.constants = [], []

    def constant(self, name: str, value, dtype) -> str:
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), PREFIX + name))
        return PREFIX + name

    def op(self, op_type: str, inputs, outputs=None, **attributes):
        """Adds one node; returns its output name (or names, when several are asked for)."""
        names = [o if o in DETECTION_OUTPUTS else PREFIX + o for o in (outputs or [f"{op_type}_{len(self.nodes)}"])]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=PREFIX + names[0].split("/")[-1],
                                           **attributes))
        return names[0] if len(names) == 1 else names


def _select(b: _Builder, scores: str, boxes: str, settings: NmsSettings):
    """Steps 1-3: ``(boxes [1, M, 4], scores [1, M], classes int64 [1, M])`` of the kept anchors."""
    best = b.op("ReduceMax", [scores], ["best_score"], axes=[2], keepdims=0)  # [1, N]
    best_class = b.op("ArgMax", [scores], ["best_class"], axis=2, keepdims=0)  # [1, N], first of a tie as TF
    anchors = b.op("Gather", [b.op("Shape", [best]), b.constant("one", 1, np.int64)], ["anchor_count"], axis=0)
    top_k = b.op("Min", [b.op("Unsqueeze", [anchors, b.constant("axis0", [0], np.int64)]),
                         b.constant("top_k", [settings.pre_nms_top_k], np.int64)], ["top_k_count"])
    top_scores, top_index = b.op("TopK", [best, top_k], ["top_scores", "top_index"], axis=1, largest=1, sorted=1)
    top_index = b.op("Squeeze", [top_index, b.constant("batch_axis", [0], np.int64)], ["top_index_1d"])
    corner_boxes = b.op("Squeeze", [boxes, b.constant("box_class_axis", [2], np.int64)], ["anchor_boxes"])
    top_boxes = b.op("Gather", [corner_boxes, top_index], ["top_boxes"], axis=1)  # [1, K, 4]
    top_classes = b.op("Gather", [best_class, top_index], ["top_classes"], axis=1)  # [1, K]
    selected = b.op("NonMaxSuppression", [
        top_boxes, b.op("Unsqueeze", [top_scores, b.constant("class_axis", [1], np.int64)], ["nms_scores"]),
        b.constant("max_detections", [settings.max_detections], np.int64),
        b.constant("iou_threshold", [settings.iou_threshold], np.float32),
        b.constant("score_threshold", [settings.score_threshold], np.float32)], ["selected"], center_point_box=0)
    kept = b.op("Gather", [selected, b.constant("box_column", 2, np.int64)], ["kept"], axis=1)  # [M], by score
    return (b.op("Gather", [top_boxes, kept], ["kept_boxes"], axis=1),
            b.op("Gather", [top_scores, kept], ["kept_scores"], axis=1),
            b.op("Gather", [top_classes, kept], ["kept_classes"], axis=1), kept)


def _normalise(b: _Builder, boxes: str, image_info: str) -> str:
    """Step 4: boxes of the resized image -> normalised boxes of the input image.

    ``image_info`` is ``[1, 4, 2]``: rows original size, resized size, scale, offset (each y, x).
    """
    def row_twice(row: int, name: str) -> str:
        yx = b.op("Gather", [image_info, b.constant(f"row_{row}", row, np.int64)], [f"{name}_yx"], axis=1)
        return b.op("Unsqueeze", [b.op("Concat", [yx, yx], [f"{name}_yxyx"], axis=1),
                                  b.constant(f"{name}_axis", [1], np.int64)], [name])  # [1, 1, 4]

    in_input_pixels = b.op("Div", [boxes, row_twice(2, "scale")], ["input_pixel_boxes"])
    normalised = b.op("Div", [in_input_pixels, row_twice(0, "input_size")], ["normalised_boxes"])
    return b.op("Clip", [normalised, b.constant("zero", 0.0, np.float32), b.constant("unit", 1.0, np.float32)],
                ["clipped_boxes"])


def _pad(b: _Builder, tensor: str, rank: int, padding: str, value, dtype, output: str) -> str:
    """Step 5: ``tensor`` padded at the end of axis 1 by ``padding`` (int64 [1]) with ``value``."""
    pieces = [b.constant(f"{output}_before", [0] * (rank + 1), np.int64), padding]
    if rank > 2:
        pieces.append(b.constant(f"{output}_after", [0] * (rank - 2), np.int64))
    pads = b.op("Concat", pieces, [f"{output}_pads"], axis=0)
    return b.op("Pad", [tensor, pads, b.constant(f"{output}_value", value, dtype)], [output])


def append_detection_selection(model: onnx.ModelProto, scores: str, boxes: str, image_info: str,
                               settings: NmsSettings) -> onnx.ModelProto:
    """``model`` with the selection appended (see the module doc), in place and returned.

    Args:
      scores: output name of the class scores, float ``[1, N, C]`` (sigmoid, background removed).
      boxes: output name of the decoded boxes, float ``[1, N, 1, 4]`` corners ``[y1, x1, y2, x2]``
        in the resized image's pixels, clipped to it.
      image_info: output name of the serving module's ``image_info`` (kept as an output).
    """
    b = _Builder()
    kept_boxes, kept_scores, kept_classes, kept = _select(b, scores, boxes, settings)
    count = b.op("Shape", [kept], ["count"])
    padding = b.op("Sub", [b.constant("padded_length", [settings.max_detections], np.int64), count], ["padding"])
    _pad(b, _normalise(b, kept_boxes, image_info), 3, padding, 0.0, np.float32, "detection_boxes")
    _pad(b, kept_scores, 2, padding, 0.0, np.float32, "detection_scores")
    # Padded rows get class 1 as the SavedModel's do (zeros, then every class + 1).
    padded_classes = _pad(b, kept_classes, 2, padding, 0, np.int64, "padded_classes")
    class_ids = b.op("Add", [padded_classes, b.constant("first_id", 1, np.int64)], ["class_ids"])
    b.op("Cast", [class_ids], ["detection_classes"], to=TensorProto.INT32)
    b.op("Cast", [count], ["num_detections"], to=TensorProto.INT32)
    graph = model.graph
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.constants)
    others = [output for output in graph.output if output.name not in (scores, boxes)]
    del graph.output[:]
    length = settings.max_detections
    graph.output.extend([helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, length, 4]),
                         helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, length]),
                         helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, length]),
                         helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1]), *others])
    onnx.checker.check_model(model)
    return model
