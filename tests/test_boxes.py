"""The one box record: pixel corners inside, x/y/width/height and normalized yxyx at the edges."""

from __future__ import annotations

import numpy as np
import pytest

from busdet.boxes import (Box, above_threshold, box_from_xywh, box_to_pixel_xywh, box_to_xywh,
                          boxes_from_normalized_yxyx, boxes_to_normalized_yxyx, iou)

CLASSES = {1: "benign", 2: "malignant"}


def test_columns_3_to_5_are_xmin_3_xmax_6_width_3():
    box = box_from_xywh(3, 10, 3, 2, "benign")
    assert (box.xmin, box.xmax, box.ymin, box.ymax) == (3, 6, 10, 12)
    assert (box.width, box.height, box.area) == (3, 2, 6)


def test_inverted_box_has_no_area():
    assert Box(5, 5, 4, 8, "benign").area == 0


@pytest.mark.parametrize("xywh", [[0, 0, 1, 1], [288, 134, 51, 26], [24, 67, 209, 197], [0, 156, 551, 263]])
def test_xywh_round_trips_exactly(xywh):
    box = box_from_xywh(*xywh, "benign")
    assert box_to_xywh(box) == xywh
    assert box_to_pixel_xywh(box) == xywh
    assert all(isinstance(v, int) for v in box_to_pixel_xywh(box))


def test_pixel_xywh_rounds_the_corners_not_the_size():
    # Corners 10.4..20.6 land on pixel edges 10 and 21: width 11 (rounding the
    # width 10.2 alone would give 10 and shift the right edge).
    assert box_to_pixel_xywh(Box(10.4, 5.6, 20.6, 9.4, "malignant", 0.9)) == [10, 6, 11, 3]


def test_score_and_label_travel_with_the_box():
    box = box_from_xywh(1, 2, 3, 4, "benign", 0.75)
    assert box.score == 0.75 and box.label == "benign"
    relabelled = box.with_label("malignant")
    assert relabelled.label == "malignant" and relabelled.score == 0.75 and box.label == "benign"
    assert box.as_dict() == {"xmin": 1.0, "ymin": 2.0, "xmax": 4.0, "ymax": 6.0, "label": "benign", "score": 0.75}


def test_model_output_becomes_pixel_boxes():
    normalized = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    boxes = boxes_from_normalized_yxyx(normalized, np.array([2, 1]), np.array([0.9, 0.4]), CLASSES,
                                      image_width=500, image_height=400)
    first, second = boxes
    assert first.label == "malignant" and first.score == pytest.approx(0.9)
    assert (first.xmin, first.ymin, first.xmax, first.ymax) == pytest.approx((100, 40, 300, 200), abs=1e-3)
    assert (second.xmin, second.ymin, second.xmax, second.ymax) == pytest.approx((0, 0, 500, 400))
    assert all(isinstance(v, float) for v in (first.xmin, first.score))


def test_model_output_is_clipped_to_the_image_and_unknown_ids_named():
    (box,) = boxes_from_normalized_yxyx(np.array([[-0.2, -0.1, 1.3, 1.1]]), np.array([7.0]), np.array([0.5]),
                                        CLASSES, image_width=100, image_height=50)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == (0, 0, 100, 50)
    assert box.label == "class_7"


def test_no_detections_give_no_boxes():
    assert boxes_from_normalized_yxyx(np.zeros((0, 4)), np.zeros(0), np.zeros(0), CLASSES, 10, 10) == []
    empty = boxes_to_normalized_yxyx([], 10, 10)
    assert empty.shape == (0, 4) and empty.dtype == np.float32


def test_normalized_round_trip():
    boxes = [box_from_xywh(288, 134, 51, 26, "benign", 1.0), box_from_xywh(0, 156, 551, 263, "malignant", 1.0)]
    normalized = boxes_to_normalized_yxyx(boxes, image_width=562, image_height=471)
    assert normalized.dtype == np.float32
    assert normalized[0].tolist() == pytest.approx([134 / 471, 288 / 562, 160 / 471, 339 / 562])
    back = boxes_from_normalized_yxyx(normalized, np.array([1, 2]), np.array([1.0, 1.0]), CLASSES, 562, 471)
    assert [box_to_pixel_xywh(b) for b in back] == [box_to_pixel_xywh(b) for b in boxes]
    assert [b.label for b in back] == ["benign", "malignant"]


@pytest.mark.parametrize("a,b,expected", [
    ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
    ((0, 0, 2, 2), (1, 0, 3, 2), 1 / 3),
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),
    ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),  # touching edges share no pixel
    ((0, 0, 2, 2), (5, 5, 6, 6), 0.0),
])
def test_iou(a, b, expected):
    first, second = Box(*a, "benign"), Box(*b, "malignant")
    assert iou(first, second) == pytest.approx(expected)
    assert iou(second, first) == pytest.approx(expected)


def test_above_threshold_is_inclusive_and_skips_ground_truth():
    boxes = [Box(0, 0, 1, 1, "benign", 0.7), Box(0, 0, 1, 1, "benign", 0.69), Box(0, 0, 1, 1, "benign"),
             Box(0, 0, 1, 1, "malignant", 0.95)]
    assert above_threshold(boxes, 0.7) == [boxes[0], boxes[3]]
    assert above_threshold(iter(boxes), 0.0) == [boxes[0], boxes[1], boxes[3]]
