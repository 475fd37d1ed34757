"""tools/export_model.py: its arguments (one source, one line per mistake) and --flip-tta.

The export itself (checkpoint -> SavedModel + model.onnx) runs in the smoke-model
fixture (tests/conftest.py) and is checked in tests/test_inference.py. The flip
test-time augmentation's geometry is checked fast on Model Garden's own anchors and
box decoding; the smoke run exported again with --flip-tta (slow) checks the graph.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "export_model.py"


def run_tool(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], capture_output=True, text=True)


def test_onnx_for_a_folder_without_a_saved_model_is_one_line_and_exit_2(tmp_path):
    done = run_tool("--onnx-for", tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path}: no SavedModel here (expected {tmp_path / 'saved_model.pb'})\n"
    assert list(tmp_path.iterdir()) == []


def test_flip_tta_with_onnx_for_is_one_line_and_exit_2(tmp_path):
    done = run_tool("--onnx-for", tmp_path, "--flip-tta")
    assert done.returncode == 2 and done.stderr.startswith("error: --flip-tta goes with --model-dir")
    assert len(done.stderr.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_needs_exactly_one_source(tmp_path):
    for argv in ([], ["--model-dir", tmp_path, "--onnx-for", tmp_path]):
        done = run_tool(*argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "--model-dir" in done.stderr.splitlines()[-1] and "--onnx-for" in done.stderr.splitlines()[-1]


# --- horizontal-flip test-time augmentation (issue 18) ---------------------------------------------


def mirror_corners(boxes: np.ndarray, width: float) -> np.ndarray:
    """``[..., 4]`` corners ``[y1, x1, y2, x2]`` reflected about the vertical line at ``width / 2``."""
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([y1, width - x2, y2, width - x1], axis=-1)


def test_mirroring_reverses_the_image_columns_and_leaves_the_padding():
    from busdet.training.export import mirror_image_area

    canvas = np.arange(2 * 6, dtype=np.float32).reshape(1, 2, 6, 1)  # image in columns 0-3, padding 4-5
    mirrored = mirror_image_area(canvas, 4.0).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(mirrored, [[3, 2, 1, 0, 4, 5], [9, 8, 7, 6, 10, 11]])


def test_the_mirrored_pass_decodes_to_its_boxes_reflected_back_into_the_image():
    """Model Garden's generator on the merged input gives the image's candidates, then the mirror's
    decoded as the mirror and reflected about the resized image's centre (not the canvas's), both clipped
    to the canvas as the generator clips (serving gives it the canvas's size); same scores."""
    import tensorflow as tf
    from official.vision.modeling.layers.detection_generator import MultilevelDetectionGenerator
    from official.vision.ops import anchor

    from busdet.training.export import merge_mirrored_pass

    canvas, width, per_anchor, classes = 256, 168.0, 6, 3
    anchors = anchor.build_anchor_generator(3, 7, 2, [0.5, 1.0, 2.0], 4.0)(image_size=[canvas, canvas])
    anchors = {level: value[np.newaxis] for level, value in anchors.items()}
    rng = np.random.default_rng(0)
    shape = {level: [2, *value.shape[1:3]] for level, value in anchors.items()}
    raw_boxes = {level: tf.constant(rng.normal(0, 0.5, [*s, per_anchor * 4]), tf.float32) for level, s in shape.items()}
    raw_scores = {level: tf.constant(rng.normal(0, 2, [*s, per_anchor * classes]), tf.float32)
                  for level, s in shape.items()}
    decode = MultilevelDetectionGenerator(apply_nms=False)
    canvas_shape = np.array([[canvas, canvas]], np.float32)

    scores, boxes, merged_anchors = merge_mirrored_pass(raw_scores, raw_boxes, anchors, width)
    merged = decode(boxes, scores, merged_anchors, canvas_shape)
    expected_boxes, expected_scores = [], []
    for level in anchors:
        for index in (0, 1):
            one = decode({level: raw_boxes[level][index:index + 1]}, {level: raw_scores[level][index:index + 1]},
                         {level: anchors[level]}, None)  # unclipped
            boxes = one["decoded_boxes"].numpy()
            expected_boxes.append(np.clip(mirror_corners(boxes, width) if index else boxes, 0, canvas))
            expected_scores.append(one["decoded_box_scores"].numpy())
    candidates = sum(value.shape[1] * value.shape[2] * per_anchor for value in anchors.values())
    assert merged["decoded_boxes"].shape == (1, 2 * candidates, 1, 4)
    np.testing.assert_allclose(merged["decoded_boxes"].numpy(), np.concatenate(expected_boxes, axis=1), atol=1e-3)
    np.testing.assert_array_equal(merged["decoded_box_scores"].numpy(), np.concatenate(expected_scores, axis=1))


@pytest.fixture(scope="module")
def flip_tta_model(smoke_model, tmp_path_factory) -> Path:
    """The smoke run exported again through the CLI, with --flip-tta."""
    output = tmp_path_factory.mktemp("flip_tta") / "saved_model"
    done = run_tool("--model-dir", smoke_model.parent / "run", "--output", output, "--score-threshold", "0.05",
                    "--flip-tta")
    assert done.returncode == 0, done.stderr
    return output


def symmetric_image() -> np.ndarray:
    """A phantom's left half beside its own mirror, taller than wide (padding at the right of the canvas)."""
    from busdet.phantoms import generate_phantom

    half = generate_phantom(1, "malignant", width=300).image[:, :72]  # 230 x 144: resized to 256 x 160
    return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))


@pytest.mark.slow
def test_flip_tta_export_is_recorded_and_its_onnx_file_agrees(flip_tta_model, smoke_model, label_map_path):
    """model_info says which graph it is; the ONNX file is current and agrees with the SavedModel (same
    count, sorted scores within 1e-4, as for the default export in tests/test_inference.py); the
    in-distribution features are the unflipped pass's, the same as the default export's."""
    from busdet.inference import load_detector, read_model_info
    from busdet.phantoms import generate_phantom

    from test_inference import assert_current_onnx_file_agrees_on_scores

    assert read_model_info(flip_tta_model)["flip_tta"] is True
    assert read_model_info(smoke_model)["flip_tta"] is False
    assert_current_onnx_file_agrees_on_scores(flip_tta_model, label_map_path)
    plain, flipped = (load_detector(model, label_map_path, "onnx") for model in (smoke_model, flip_tta_model))
    image = generate_phantom(2, "benign", width=500).image[np.newaxis]
    np.testing.assert_allclose(flipped.predict(image)["image_features"], plain.predict(image)["image_features"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_flip_tta_doubles_the_candidates_and_mirrors_them_on_a_symmetric_image(flip_tta_model, smoke_model):
    """At the NMS's input (where the exporter cuts the graph): the default export has N candidates and
    no flip_tta nodes; the flip export 2N, per level the image's then the mirror's. On a left-right
    symmetric image the mirror's are the image's reflected about the resized image's centre."""
    import onnx
    import onnxruntime

    from busdet.inference import ONNX_FILE
    from busdet.training.export import ONNX_OPSET, convert_without_nms

    plain_graph, flip_graph = (onnx.load(str(model / ONNX_FILE)).graph for model in (smoke_model, flip_tta_model))
    assert not any("flip_tta" in node.name for node in plain_graph.node)
    assert any("flip_tta" in node.name for node in flip_graph.node)
    # The mirroring too is native ops, no loop; one NMS for both readings.
    assert [node.name for node in flip_graph.node if node.op_type in ("Loop", "Scan", "If")] == []
    assert [node.op_type for node in flip_graph.node].count("NonMaxSuppression") == 1
    image = symmetric_image()
    candidates = {}
    for model in (smoke_model, flip_tta_model):
        session = onnxruntime.InferenceSession(convert_without_nms(model, ONNX_OPSET).SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        candidates[model] = dict(zip([o.name for o in session.get_outputs()],
                                     session.run(None, {"inputs": image[np.newaxis]})))
    plain, flipped = candidates[smoke_model], candidates[flip_tta_model]
    width = round(float(flipped["image_info"][0, 0, 1] * flipped["image_info"][0, 2, 1]))
    assert width == 160  # the resized image's, at the left of the 256 x 256 canvas
    count = plain["pre_nms_scores"].shape[1]
    assert flipped["pre_nms_scores"].shape[1] == 2 * count
    start, compared = 0, 0
    for level in range(3, 8):
        cells = (256 // 2 ** level) ** 2 * 6
        image_half = slice(start, start + cells)
        mirror_half = slice(start + cells, start + 2 * cells)
        boxes = flipped["pre_nms_boxes"][0, :, 0]
        # Boxes the generator clipped at the left edge lost what their mirror reflects: left out.
        inside = boxes[image_half][:, 1] > 0
        compared += inside.sum()
        np.testing.assert_allclose(boxes[mirror_half][inside],
                                   np.clip(mirror_corners(boxes[image_half][inside], width), 0, 256), atol=1e-3)
        np.testing.assert_allclose(flipped["pre_nms_scores"][0, mirror_half], flipped["pre_nms_scores"][0, image_half],
                                   atol=1e-6)
        start += 2 * cells
    assert start == 2 * count and compared > count / 2


def test_features_are_pooled_over_the_resized_image_not_the_padding():
    """A 320x640 image (height x width) on the 640x640 canvas covers the top half: cells below it
    (padding) must not count, whatever they hold."""
    import tensorflow as tf

    from busdet.training.export import pool_image_area

    image_info = tf.constant([[[160.0, 320.0], [640.0, 640.0], [2.0, 2.0], [0.0, 0.0]]])
    level = np.full((1, 80, 80, 4), 100.0, np.float32)  # stride 8
    level[:, :40] = 1.0  # the image's 320 rows = 40 cells
    level = tf.constant(level)
    pooled = pool_image_area([level, level[:, ::2, ::2]], image_info, [640, 640]).numpy()
    np.testing.assert_allclose(pooled, np.ones((1, 8)))
