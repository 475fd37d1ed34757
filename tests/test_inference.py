"""busdet.inference without TensorFlow: model_info.json, the label-map check, one-line load errors.

Everything here fails (or passes) before TensorFlow is imported, on a folder that
only looks like a SavedModel; the damaged real model is tested through predict.py
(tests/test_predict.py, slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from busdet.evaluation.measure import store_operating_point
from busdet.inference import (DEFAULT_SCORE_THRESHOLD, MODEL_INFO_FILE, ModelLoadError, default_score_threshold,
                              load_detector, read_model_info, write_model_info)

CLASSES = {"1": "benign", "2": "malignant"}


def fake_model(folder: Path, info: dict | None = None) -> Path:
    """A folder that passes the cheap checks: an (empty) saved_model.pb and, if given, model info."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(b"")
    if info is not None:
        write_model_info(folder, info)
    return folder


def label_map(path: Path, items) -> Path:
    path.write_text("".join(f'item {{ id: {i} name: "{name}" }}\n' for i, name in items), encoding="utf-8")
    return path


def test_model_info_round_trips_and_absent_is_empty(tmp_path):
    assert read_model_info(tmp_path) == {}
    write_model_info(tmp_path, {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None})
    assert read_model_info(tmp_path) == {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None}
    assert default_score_threshold(read_model_info(tmp_path)) == DEFAULT_SCORE_THRESHOLD
    assert default_score_threshold({"score_threshold": 0.2352}) == 0.2352


def test_storing_the_operating_point_keeps_the_rest_of_the_model_info(tmp_path):
    write_model_info(tmp_path, {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None})
    measured_on = [{"name": "busi", "citation": "c"}]
    store_operating_point(tmp_path, {"score_threshold": 0.31, "threshold_rule": "rule", "datasets": measured_on,
                                     "val": {"busi": {"AP50_lesion": 0.8}}, "test": {"busi": {"AP50_lesion": 0.7}},
                                     "test_by_scanner": {}})
    assert read_model_info(tmp_path) == {"input_size": [640, 640], "classes": CLASSES, "score_threshold": 0.31,
                                         "threshold_rule": "rule", "measured_on": measured_on,
                                         "test_metrics": {"busi": {"AP50_lesion": 0.7}},
                                         "val_metrics": {"busi": {"AP50_lesion": 0.8}}, "test_by_scanner": {}}
    assert [p.name for p in tmp_path.iterdir()] == [MODEL_INFO_FILE]


@pytest.mark.parametrize("content", ['{"input_size": [640, 6', "", "[1, 2]", "\xff\xfe"])
def test_damaged_model_info_is_one_error_naming_the_file(tmp_path, label_map_path, content):
    model = fake_model(tmp_path / "model")
    (model / MODEL_INFO_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(ModelLoadError, match=rf"^{model / MODEL_INFO_FILE}: damaged .*export the model again$"):
        load_detector(model, label_map_path)


@pytest.mark.parametrize("items", [[(1, "benign")],                                  # id 2 missing
                                   [(1, "malignant"), (2, "benign")],                # ids swapped
                                   [(1, "benign"), (2, "malignant"), (3, "cyst")]])  # a class the model lacks
def test_label_map_must_name_the_models_classes(tmp_path, items):
    model = fake_model(tmp_path / "model", {"classes": CLASSES})
    labels = label_map(tmp_path / "labels.pbtxt", items)
    with pytest.raises(ModelLoadError) as error:
        load_detector(model, labels)
    message = str(error.value)
    assert message.startswith(f"{labels}: classes ") and "\n" not in message
    assert "differ from the model's {1 benign, 2 malignant}" in message and str(model / MODEL_INFO_FILE) in message


def test_label_map_that_is_a_folder_is_one_error(tmp_path):
    model = fake_model(tmp_path / "model", {"classes": CLASSES})
    with pytest.raises(ModelLoadError, match="cannot read the label map"):
        load_detector(model, tmp_path)
