"""busdet.onnx_nms: the detection selection appended to an ONNX graph, checked against OpenCV's NMS.

A tiny graph whose inputs are the generator's inputs (scores, boxes, image_info)
and one extra output stands for the converted network; no TensorFlow is needed.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from busdet.onnx_nms import NmsSettings, append_detection_selection, read_nms_settings

SETTINGS = NmsSettings(pre_nms_top_k=300, score_threshold=0.01, iou_threshold=0.6, max_detections=20)
# Original 500 x 400 (y, x), resized to 640 x 512, scale 1.28, no offset: Model Garden's image_info rows.
IMAGE_INFO = np.array([[[500, 400], [640, 512], [1.28, 1.28], [0, 0]]], dtype=np.float32)


def network_stand_in(settings: NmsSettings = SETTINGS) -> onnxruntime.InferenceSession:
    """A session taking ``scores [1, N, 2]``, ``boxes [1, N, 1, 4]``, ``image_info`` and ``features``, with
    the selection appended; ``features`` passes through as an extra output (as issue 19's would)."""
    inputs = [helper.make_tensor_value_info("scores_in", TensorProto.FLOAT, [1, None, 2]),
              helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, [1, None, 1, 4]),
              helper.make_tensor_value_info("info_in", TensorProto.FLOAT, [1, 4, 2]),
              helper.make_tensor_value_info("features_in", TensorProto.FLOAT, [1, 8])]
    nodes = [helper.make_node("Identity", [source], [target]) for source, target in
             [("scores_in", "scores"), ("boxes_in", "boxes"), ("info_in", "image_info"), ("features_in", "features")]]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, value.type.tensor_type.shape.dim and
                                             [d.dim_value or None for d in value.type.tensor_type.shape.dim])
               for name, value in zip(("scores", "boxes", "image_info", "features"), inputs)]
    model = helper.make_model(helper.make_graph(nodes, "stand_in", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model = append_detection_selection(model, "scores", "boxes", "image_info", settings)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_candidates(count: int, seed: int = 0):
    """Overlapping boxes (corners y1, x1, y2, x2 in the 640 x 512 resized image) and two-class scores."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([0, 0], [640, 512], size=(count, 2))
    sizes = rng.uniform(10, 120, size=(count, 2))
    corners = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1), 0, [640, 512, 640, 512])
    scores = rng.uniform(0, 0.5, size=(count, 2)) ** 2
    return scores.astype(np.float32), corners.astype(np.float32)


def run(session, scores, corners):
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {"scores_in": scores[None], "boxes_in": corners[None, :, None],
                                 "info_in": IMAGE_INFO, "features_in": np.arange(8, dtype=np.float32)[None]})
    return dict(zip(names, values))


def opencv_reference(scores, corners, settings: NmsSettings = SETTINGS):
    """Indices of the kept candidates by OpenCV's NMS on the ``pre_nms_top_k`` best, best first."""
    best = scores.max(axis=1)
    top = np.argsort(-best, kind="stable")[:settings.pre_nms_top_k]
    y1, x1, y2, x2 = corners[top].T.astype(np.float64)
    rectangles = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    # (OpenCV's own top_k cuts the candidates, not the kept boxes: the cap is applied after.)
    kept = cv2.dnn.NMSBoxes(rectangles.tolist(), best[top].tolist(), settings.score_threshold,
                            settings.iou_threshold)
    return top[np.asarray(kept, dtype=int).reshape(-1)][:settings.max_detections]


@pytest.mark.parametrize("count, seed", [(50, 0), (1000, 1), (4000, 2)])
def test_selection_keeps_what_opencv_nms_keeps_rescaled_and_padded(count, seed):
    scores, corners = random_candidates(count, seed)
    outputs = run(network_stand_in(), scores, corners)
    expected = opencv_reference(scores, corners)
    found = int(outputs["num_detections"][0])
    assert found == len(expected) > 0
    np.testing.assert_allclose(outputs["detection_scores"][0, :found], scores.max(axis=1)[expected], rtol=0, atol=0)
    np.testing.assert_array_equal(outputs["detection_classes"][0, :found], scores.argmax(axis=1)[expected] + 1)
    # Back to the 500 x 400 input: divided by the scale, then by the size; clipped to [0, 1].
    normalised = np.clip(corners[expected] / 1.28 / np.array([500, 400, 500, 400]), 0, 1)
    np.testing.assert_allclose(outputs["detection_boxes"][0, :found], normalised, rtol=0, atol=1e-6)
    assert outputs["detection_boxes"].shape == (1, SETTINGS.max_detections, 4)
    assert not outputs["detection_boxes"][0, found:].any() and not outputs["detection_scores"][0, found:].any()
    assert outputs["detection_classes"].dtype == np.int32 and outputs["num_detections"].dtype == np.int32


def test_scores_at_the_floor_are_dropped_and_other_outputs_pass_through():
    scores, corners = random_candidates(30)
    scores[:] = np.minimum(scores, SETTINGS.score_threshold)
    scores[7, 1] = 0.9
    outputs = run(network_stand_in(), scores, corners)
    assert int(outputs["num_detections"][0]) == 1 and outputs["detection_classes"][0, 0] == 2
    np.testing.assert_array_equal(outputs["features"], np.arange(8, dtype=np.float32)[None])
    np.testing.assert_array_equal(outputs["image_info"], IMAGE_INFO)


def test_top_k_limits_the_candidates_before_nms():
    """Only the top-k anchors by score reach NMS: with k=5, at most the 5 best can be kept."""
    scores, corners = random_candidates(500, seed=3)
    settings = NmsSettings(pre_nms_top_k=5, score_threshold=0.01, iou_threshold=0.6, max_detections=20)
    outputs = run(network_stand_in(settings), scores, corners)
    kept = outputs["detection_scores"][0, :int(outputs["num_detections"][0])]
    assert 0 < len(kept) <= 5 and set(kept) <= set(np.sort(scores.max(axis=1))[-5:])
    np.testing.assert_array_equal(kept, scores.max(axis=1)[opencv_reference(scores, corners, settings)])


def test_settings_come_from_the_generator_config_and_refuse_what_is_not_reproduced():
    generator = {"apply_nms": True, "nms_version": "v2", "use_class_agnostic_nms": True, "pre_nms_top_k": 5000,
                 "pre_nms_score_threshold": 0.01, "nms_iou_threshold": 0.6, "max_num_detections": 60}
    assert read_nms_settings(generator) == NmsSettings(5000, 0.01, 0.6, 60)
    with pytest.raises(ValueError, match="only class-agnostic v2 NMS"):
        read_nms_settings({**generator, "use_class_agnostic_nms": False})


def test_appended_graph_is_valid_onnx():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["s"], ["scores"]), helper.make_node("Identity", ["b"], ["boxes"]),
         helper.make_node("Identity", ["i"], ["image_info"])], "g",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 10, 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 10, 1, 4]),
         helper.make_tensor_value_info("i", TensorProto.FLOAT, [1, 4, 2])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10, 2]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 1, 4]),
         helper.make_tensor_value_info("image_info", TensorProto.FLOAT, [1, 4, 2])]),
        opset_imports=[helper.make_opsetid("", 17)])
    append_detection_selection(model, "scores", "boxes", "image_info", SETTINGS)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["detection_boxes", "detection_scores", "detection_classes",
                                                    "num_detections", "image_info"]
