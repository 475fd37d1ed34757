"""busdet.quantization: the calibration reader, and an int8 model that ONNX Runtime serves (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from busdet.images import write_image
from busdet.phantoms import generate_phantom

ROOT = Path(__file__).resolve().parents[1]


def phantom_files(folder: Path, count: int):
    paths = [folder / f"phantom_{index}.png" for index in range(count)]
    for index, path in enumerate(paths):
        write_image(path, generate_phantom(index, "benign", width=300 + 50 * index).image)
    return paths


def test_calibration_reader_feeds_each_image_as_the_model_input_and_rewinds(tmp_path):
    from busdet.quantization import CalibrationImages

    reader = CalibrationImages(phantom_files(tmp_path, 2))
    first = [reader.get_next() for _ in range(3)]
    assert [sorted(batch) for batch in first[:2]] == [["inputs"], ["inputs"]] and first[2] is None
    assert [batch["inputs"].shape[::3] for batch in first[:2]] == [(1, 3), (1, 3)]
    assert first[0]["inputs"].dtype == np.uint8 and first[0]["inputs"].shape[2] == 300
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["inputs"], first[0]["inputs"])


@pytest.mark.slow
def test_int8_model_is_smaller_and_serves_the_same_outputs(tmp_path):
    from busdet.inference import ONNX_FILE, load_onnx_predict
    from busdet.quantization import quantize_onnx

    int8 = quantize_onnx(ROOT / "saved_model" / ONNX_FILE, tmp_path / "int8.onnx", phantom_files(tmp_path, 2))
    assert int8.stat().st_size < 0.6 * (ROOT / "saved_model" / ONNX_FILE).stat().st_size
    predict, _ = load_onnx_predict(int8)
    outputs = predict(generate_phantom(5, "malignant").image[np.newaxis])
    assert {"detection_boxes", "detection_scores", "detection_classes", "num_detections"} <= set(outputs)
    assert 0 < int(outputs["num_detections"][0]) <= outputs["detection_scores"].shape[1]
