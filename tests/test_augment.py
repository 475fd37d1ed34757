"""busdet.training.augment on synthetic phantoms: every family does what it claims, boxes follow, seeds repeat."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
import tensorflow as tf

from busdet.boxes import boxes_to_normalized_yxyx
from busdet.phantoms import generate_phantom
from busdet.training.augment import (FAMILIES, UltrasoundAugmentation, apply_blur, apply_depth_gain, apply_gray_map,
                                     apply_resolution, apply_speckle, augment_ultrasound, augment_ultrasound_seeded_tf,
                                     augment_ultrasound_tf, caliper_segments, draw_tgc_curve, only_family,
                                     zoom_out)

HEIGHT, WIDTH = 500, 600
OVERLAYS = ("ruler", "body_marker", "calipers", "text")


@functools.lru_cache(maxsize=None)
def phantom(seed: int = 0, label: str = "benign", lesions: int = 1):
    """A 600x500 phantom as ``(image uint8 [H, W, 3], boxes float32 [N, 4] normalized yxyx)``.

    Read-only, so that a function writing into its input fails here (as it would
    on the read-only arrays ``tf.numpy_function`` can pass).
    """
    generated = generate_phantom(seed, label, width=WIDTH, height=HEIGHT, lesions=lesions)
    image, boxes = generated.image, boxes_to_normalized_yxyx(generated.boxes, WIDTH, HEIGHT)
    image.flags.writeable = boxes.flags.writeable = False
    return image, boxes


def gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0].astype(np.float64)


def high_frequency_energy(image: np.ndarray) -> float:
    return float(np.mean(cv2.Laplacian(gray(image), cv2.CV_64F) ** 2))


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Boolean ``[H, W]``: pixels where any channel differs."""
    return np.any(before != after, axis=2)


# --- the chain -------------------------------------------------------------------------


def test_config_has_a_probability_per_family_and_ordered_ranges():
    params = UltrasoundAugmentation()
    for family in FAMILIES:
        assert 0.0 < getattr(params, f"{family}_probability") <= 1.0
    for name, value in params.as_dict().items():
        if name.endswith("_range"):
            assert len(value) == 2 and value[0] <= value[1], name
    assert 0.5 < params.probability < 1.0  # most images, not all


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("label,lesions", [("malignant", 1), ("benign", 2), ("normal", 0)])
def test_each_family_gives_uint8_rgb_and_float32_boxes_and_only_zoom_out_moves_them(family, label, lesions):
    image, boxes = phantom(2, label, lesions)
    for seed in range(3):
        new_image, new_boxes = augment_ultrasound(image, boxes, np.random.default_rng(seed), only_family(family))
        assert new_image.dtype == np.uint8 and new_image.ndim == 3 and new_image.shape[2] == 3
        assert new_boxes.dtype == np.float32 and new_boxes.shape == (lesions, 4)
        assert not np.array_equal(new_image, image) or family == "gray_map"  # a gray map can be ~identity
        if family != "zoom_out":
            assert new_image.shape == image.shape and np.array_equal(new_boxes, boxes)
        assert np.all((new_boxes >= 0) & (new_boxes <= 1))
        assert np.all(new_boxes[:, 2:] > new_boxes[:, :2])


def test_same_seed_same_output_and_other_seeds_differ():
    image, boxes = phantom(1, "malignant")
    params = UltrasoundAugmentation(probability=1.0)
    runs = [augment_ultrasound(image, boxes, np.random.default_rng(seed), params) for seed in (7, 7, 8)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][0].shape != runs[2][0].shape or not np.array_equal(runs[0][0], runs[2][0])


def test_default_chain_augments_most_images_but_leaves_some_untouched():
    image, boxes = phantom(3, "benign")
    params = UltrasoundAugmentation()
    untouched = 0
    for seed in range(200):
        new_image, _ = augment_ultrasound(image, boxes, np.random.default_rng(seed), params)
        untouched += new_image.shape == image.shape and np.array_equal(new_image, image)
    assert 0.05 < untouched / 200 < 0.35


def test_gate_off_returns_the_input():
    image, boxes = phantom(0, "benign")
    new_image, new_boxes = augment_ultrasound(image, boxes, np.random.default_rng(0),
                                              UltrasoundAugmentation(probability=0.0))
    assert np.array_equal(new_image, image) and np.array_equal(new_boxes, boxes)


# --- scanner settings ----------------------------------------------------------------------


def test_gray_map_gain_brightens_contrast_spreads_and_black_margins_stay_black():
    framed, _ = zoom_out(*phantom(0, "benign"), (650, 700), (80, 50))
    margin = np.zeros(framed.shape[:2], dtype=bool)
    margin[:80], margin[580:], margin[:, :50], margin[:, 650:] = True, True, True, True
    brighter = apply_gray_map(framed, gain=1.3, contrast=1.0, gamma=1.0)
    spread = apply_gray_map(framed, gain=1.0, contrast=1.3, gamma=1.0)
    darker = apply_gray_map(framed, gain=1.0, contrast=1.0, gamma=1.3)
    tissue = ~margin
    assert gray(brighter)[tissue].mean() > gray(framed)[tissue].mean() + 10
    assert gray(spread)[tissue].std() > 1.15 * gray(framed)[tissue].std()
    assert gray(darker)[tissue].mean() < gray(framed)[tissue].mean() - 5
    for result in (brighter, spread, darker):
        assert not result[margin].any()
        assert np.array_equal(result[..., 0], result[..., 1]) and np.array_equal(result[..., 0], result[..., 2])


def test_tgc_curve_is_smooth_and_in_range():
    for seed in range(10):
        curve = draw_tgc_curve(np.random.default_rng(seed), HEIGHT, max_db=6.0, knots=5)
        assert curve.shape == (HEIGHT,) and curve.dtype == np.float32
        assert curve.min() >= 10 ** (-6 / 20) - 1e-6 and curve.max() <= 10 ** (6 / 20) + 1e-6
        assert np.abs(np.diff(curve)).max() < 0.02  # no steps between rows


def test_tgc_changes_row_means_monotonically_with_the_drawn_curve():
    image, _ = phantom(4, "benign")
    for seed in range(5):
        curve = draw_tgc_curve(np.random.default_rng(seed), HEIGHT, max_db=6.0, knots=5)
        result = apply_depth_gain(image, curve)
        before, after = gray(image).mean(axis=1), gray(result).mean(axis=1)
        rows = (before > 30) & (gray(image).max(axis=1) * curve < 250)  # clear of the floor and of clipping
        ratio = after[rows] / before[rows]
        assert np.allclose(ratio, curve[rows], rtol=0.03)
        ranks = lambda values: np.argsort(np.argsort(values))  # noqa: E731
        assert np.corrcoef(ranks(ratio), ranks(curve[rows]))[0, 1] > 0.98


def test_speckle_is_the_same_field_in_every_channel_with_the_drawn_strength():
    image, _ = phantom(5, "malignant")
    for sigma in (0.1, 0.25):
        result = apply_speckle(image, np.random.default_rng(0), sigma=sigma, grain=2.0)
        assert np.array_equal(result[..., 0], result[..., 1]) and np.array_equal(result[..., 0], result[..., 2])
        mid = (gray(image) > 60) & (gray(image) < 150)  # no clipping at either end
        ratio = gray(result)[mid] / gray(image)[mid]
        assert abs(ratio.mean() - 1.0) < 0.03  # unit mean: brightness is the gray map's job
        assert 0.7 * sigma < ratio.std() < 1.3 * sigma


@pytest.mark.parametrize("degrade", [lambda image: apply_blur(image, 1.5, 1.0),
                                     lambda image: apply_resolution(image, 0.4)], ids=["blur", "resolution"])
def test_blur_and_resolution_remove_high_frequencies_and_keep_size_and_brightness(degrade):
    image, _ = phantom(6, "benign")
    result = degrade(image)
    assert result.shape == image.shape and result.dtype == np.uint8
    assert high_frequency_energy(result) < 0.5 * high_frequency_energy(image)
    assert abs(gray(result).mean() - gray(image).mean()) < 2


# --- field of view ---------------------------------------------------------------------------


def pixel_box(box: np.ndarray, shape) -> tuple:
    """Normalized ``[ymin, xmin, ymax, xmax]`` -> integer slices of the pixels under it."""
    ymin, xmin, ymax, xmax = np.round(box * np.array([shape[0], shape[1]] * 2)).astype(int)
    return slice(ymin, ymax), slice(xmin, xmax)


@pytest.mark.parametrize("seed", range(6))
def test_zoom_out_keeps_the_lesion_pixels_under_the_moved_box(seed):
    image, boxes = phantom(seed, "benign", 2)
    new_image, new_boxes = augment_ultrasound(image, boxes, np.random.default_rng(seed), only_family("zoom_out"))
    assert image.shape[0] <= new_image.shape[0] <= 1.6 * image.shape[0] + 1
    assert image.shape[1] <= new_image.shape[1] <= 1.6 * image.shape[1] + 1
    for old, new in zip(boxes, new_boxes):
        assert np.array_equal(image[pixel_box(old, image.shape)], new_image[pixel_box(new, new_image.shape)])
    assert np.count_nonzero(new_image) == np.count_nonzero(image)  # the rest of the canvas is black


def test_zoom_out_with_an_explicit_offset_moves_boxes_exactly():
    image = np.full((100, 200, 3), 128, dtype=np.uint8)
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    canvas, moved = zoom_out(image, boxes, (150, 300), (20, 40))
    assert canvas.shape == (150, 300, 3) and canvas[20:120, 40:240].min() == 128
    expected = np.array([[30 / 150, 80 / 300, 70 / 150, 160 / 300], [20 / 150, 40 / 300, 120 / 150, 240 / 300]])
    assert np.allclose(moved, expected, atol=1e-6)


# --- overlays ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", OVERLAYS)
@pytest.mark.parametrize("label,lesions", [("malignant", 1), ("normal", 0)])
def test_overlays_draw_pixels_and_leave_boxes_unchanged(family, label, lesions):
    image, boxes = phantom(7, label, lesions)
    for seed in range(4):
        new_image, new_boxes = augment_ultrasound(image, boxes, np.random.default_rng(seed), only_family(family))
        assert np.array_equal(new_boxes, boxes) and new_image.shape == image.shape
        assert changed(image, new_image).sum() >= 20


@pytest.mark.parametrize("family", OVERLAYS)
def test_overlays_are_gray_or_coloured_as_configured(family):
    image, boxes = phantom(8, "benign")
    for seed in range(4):
        grays, _ = augment_ultrasound(image, boxes, np.random.default_rng(seed),
                                      only_family(family, overlay_colour_probability=0.0))
        assert np.array_equal(grays[..., 0], grays[..., 1]) and np.array_equal(grays[..., 0], grays[..., 2])
        colours, _ = augment_ultrasound(image, boxes, np.random.default_rng(seed),
                                        only_family(family, overlay_colour_probability=1.0))
        assert np.any(colours[..., 0] != colours[..., 2]) or np.any(colours[..., 0] != colours[..., 1])


def test_body_marker_sits_in_a_corner():
    image, boxes = phantom(9, "malignant")
    for seed in range(8):
        new_image, _ = augment_ultrasound(image, boxes, np.random.default_rng(seed), only_family("body_marker"))
        rows, columns = np.nonzero(changed(image, new_image))
        near_side = lambda values, size: values.max() < 0.25 * size or values.min() > 0.75 * size  # noqa: E731
        assert near_side(rows, HEIGHT) and near_side(columns, WIDTH)


def test_ruler_lies_along_an_edge():
    image, boxes = phantom(10, "benign")
    for seed in range(8):
        new_image, _ = augment_ultrasound(image, boxes, np.random.default_rng(seed), only_family("ruler"))
        rows, columns = np.nonzero(changed(image, new_image))
        assert columns.max() < 0.2 * WIDTH or columns.min() > 0.8 * WIDTH or rows.min() > 0.8 * HEIGHT


def test_calipers_on_a_lesion_end_at_its_box_edges():
    _, boxes = phantom(11, "malignant")
    ymin, xmin, ymax, xmax = boxes[0] * np.array([HEIGHT, WIDTH, HEIGHT, WIDTH])
    tolerance = 0.031 * max(xmax - xmin, ymax - ymin)
    for seed in range(20):
        for x0, y0, x1, y1 in caliper_segments(np.random.default_rng(seed), boxes, (HEIGHT, WIDTH), 1.0):
            if y0 == y1:  # across the width
                assert abs(x0 - xmin) <= tolerance and abs(x1 - xmax) <= tolerance and ymin < y0 < ymax
            else:  # across the height
                assert abs(y0 - ymin) <= tolerance and abs(y1 - ymax) <= tolerance and xmin < x0 < xmax


def test_calipers_also_land_off_lesions_and_on_lesion_free_images():
    _, boxes = phantom(11, "malignant")
    ymin, xmin, ymax, xmax = boxes[0] * np.array([HEIGHT, WIDTH, HEIGHT, WIDTH])
    segments = [s for seed in range(100) for s in caliper_segments(np.random.default_rng(seed), boxes,
                                                                      (HEIGHT, WIDTH), 0.5)]
    on_lesion = [abs(x0 - xmin) < 10 and abs(x1 - xmax) < 10 or abs(y0 - ymin) < 10 and abs(y1 - ymax) < 10
                 for x0, y0, x1, y1 in segments]
    assert 0.3 < np.mean(on_lesion) < 0.7
    empty = np.zeros((0, 4), dtype=np.float32)
    assert 1 <= len(caliper_segments(np.random.default_rng(0), empty, (HEIGHT, WIDTH), 1.0)) <= 2


# --- TensorFlow ------------------------------------------------------------------------------


@pytest.mark.parametrize("label,lesions", [("benign", 2), ("normal", 0)])
def test_tf_wrapper_in_a_dataset_map_matches_the_numpy_path(label, lesions):
    image, boxes = phantom(12, label, lesions)
    params = UltrasoundAugmentation(probability=1.0, zoom_out_probability=1.0, text_probability=1.0)
    dataset = tf.data.Dataset.from_tensors((image, boxes)).map(
        lambda pixels, corners: augment_ultrasound_seeded_tf(pixels, corners, tf.constant(42, tf.int64), params))
    tf_image, tf_boxes = next(iter(dataset))
    np_image, np_boxes = augment_ultrasound(image, boxes, np.random.default_rng(42), params)
    assert np.array_equal(tf_image.numpy(), np_image) and np.array_equal(tf_boxes.numpy(), np_boxes)


def test_tf_wrapper_sets_static_shapes_and_follows_the_tf_seed():
    image, boxes = phantom(13, "malignant")
    params = only_family("gray_map")

    def run():
        tf.random.set_seed(3)
        dataset = tf.data.Dataset.from_tensors((image, boxes)).repeat(3).map(
            lambda pixels, corners: augment_ultrasound_tf(pixels, corners, params))
        assert dataset.element_spec == (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32))
        return [(pixels.numpy(), corners.numpy()) for pixels, corners in dataset]

    first, again = run(), run()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not np.array_equal(first[0][0], first[1][0])  # a new seed per element
    assert all(np.array_equal(corners, boxes) for _, corners in first)
