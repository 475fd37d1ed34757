"""Training pipeline: split, TFRecords, ImageNet weight copy, and the smoke train-export-reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from busdet.annotations import AnnotatedImage
from busdet.boxes import Box
from busdet.images import read_image
from busdet.inference import MODEL_INFO_FILE, compute_file_digest, detect, load_detector
from busdet import datasets
from busdet.training import data
from busdet.training.smoke import SMOKE_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def _images(counts):
    return [AnnotatedImage(f"{label} ({i}).png", None, label, 10, 10)
            for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_deterministic_and_order_free():
    images = _images({"benign": 40, "malignant": 20, "normal": 20})
    split = data.build_split(images, seed=3)
    assert split == data.build_split(list(reversed(images)), seed=3)
    assert split != data.build_split(images, seed=4)
    for label, n in {"benign": 40, "malignant": 20, "normal": 20}.items():
        members = [s for name, s in split.items() if name.startswith(label)]
        assert members.count("val") == members.count("test") == round(n * 0.15)
        assert members.count("train") == n - 2 * round(n * 0.15)


def test_split_csv_round_trip(tmp_path):
    images = _images({"benign": 5, "normal": 3})
    split = data.build_split(images)
    data.write_split_csv(split, {i.filename: i.label for i in images}, tmp_path / "split.csv")
    assert datasets.read_split_csv(tmp_path / "split.csv") == split


def test_tf_example_holds_normalized_boxes_and_label_map_ids(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.full((50, 100), 128, np.uint8)).save(path)
    image = AnnotatedImage("a.png", path, "malignant", 100, 50, [Box(10, 5, 30, 25, "malignant")])
    example = data.build_tf_example(read_image(path), image.boxes, 7, {"benign": 1, "malignant": 2})
    feature = example.features.feature
    assert feature["image/source_id"].bytes_list.value == [b"7"]
    assert feature["image/object/class/label"].int64_list.value == [2]
    assert feature["image/object/bbox/xmin"].float_list.value == pytest.approx([0.1])
    assert feature["image/object/bbox/ymax"].float_list.value == pytest.approx([0.5])
    decoded = tf.io.decode_png(feature["image/encoded"].bytes_list.value[0]).numpy()
    assert decoded.shape == (50, 100, 3) and (decoded == read_image(path)).all()


@pytest.mark.slow
def test_keras_mobilenetv2_weights_copy_into_model_garden_backbone():
    """The copied backbone computes what the Keras network computes."""
    import tf_keras
    from official.core import exp_factory

    from busdet.training import experiment
    from busdet.training.imagenet import build_backbone, copy_keras_weights

    params = exp_factory.get_exp_config(experiment.EXPERIMENT_NAME)
    params.task.model.input_size = [128, 128, 3]
    backbone = build_backbone(params)
    keras_model = tf_keras.applications.MobileNetV2(input_shape=(128, 128, 3), include_top=False, weights=None)
    assert copy_keras_weights(keras_model, backbone) == len(keras_model.weights)
    images = tf.random.uniform([1, 128, 128, 3], -1, 1, seed=1)
    keras_level5 = tf_keras.Model(keras_model.input, keras_model.get_layer("block_16_project_BN").output)
    np.testing.assert_allclose(backbone(images, training=False)["5"].numpy(),
                               keras_level5(images, training=False).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_smoke_training_exports_a_model_that_reloads_and_predicts(smoke_model, label_map_path):
    info = json.loads((smoke_model / MODEL_INFO_FILE).read_text())
    assert info["input_size"] == [256, 256] and info["classes"] == {"1": "benign", "2": "malignant"}
    assert info["class_agnostic_nms"] is True and info["nms_iou_threshold"] == pytest.approx(0.6)
    assert "/run/ckpt-" in info["checkpoint"]  # names the run, not only the checkpoint file
    detector = load_detector(smoke_model, label_map_path)
    assert detector.score_threshold == pytest.approx(0.05)
    image = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    boxes = detect(detector, image)
    assert all(0 <= b.xmin < b.xmax <= 500 and 0 <= b.ymin < b.ymax <= 300 for b in boxes)
    assert all(b.label in ("benign", "malignant") for b in boxes)
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert (smoke_model.parent / "run" / "params.yaml").is_file()
    weights = smoke_model.parent / "weights.h5"
    assert info["backbone_init"] == {"weights": "imagenet", "file": "weights.h5",
                                     "sha256": compute_file_digest(weights)}


@pytest.mark.slow
def test_a_stage_started_from_a_checkpoint_inherits_its_backbone_init(smoke_model, label_map_path, tmp_path):
    from busdet.training import run

    run_dir = smoke_model.parent / "run"
    counts = {"centre_a": {"train_benign": 4, "val": 2}}
    params = run.build_params([SMOKE_CONFIG], tmp_path, counts, init=str(run_dir), model_dir=tmp_path / "next")
    assert params.task.backbone_init.as_dict() == run.load_run_params(run_dir).task.backbone_init.as_dict()
    assert params.task.backbone_init.weights == "imagenet"


@pytest.mark.slow
def test_imagenet_init_copies_the_named_file_into_the_backbone_and_records_its_digest(tmp_path):
    import tf_keras

    from busdet.training import run
    from busdet.training.imagenet import build_backbone
    from busdet.training.smoke import write_random_mobilenet_weights

    weights = write_random_mobilenet_weights(tmp_path / "w.h5")
    counts = {"centre_a": {"train_benign": 4, "val": 2}}
    params = run.build_params([SMOKE_CONFIG], tmp_path, counts, init=f"imagenet={weights}", model_dir=tmp_path / "run")
    assert params.task.backbone_init.as_dict() == {"weights": "imagenet", "file": "w.h5",
                                                   "sha256": compute_file_digest(weights)}
    assert params.task.init_checkpoint_modules == "backbone"
    backbone = build_backbone(params)
    tf.train.Checkpoint(backbone=backbone).read(params.task.init_checkpoint).expect_partial()
    keras_model = tf_keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False,
                                                    weights=str(weights))
    first_conv = next(v for v in backbone.trainable_weights if "kernel" in v.name)
    np.testing.assert_array_equal(first_conv.numpy(), keras_model.get_layer("Conv1").kernel.numpy())


@pytest.mark.parametrize("init, reason", [("imagenet", "needs the weights file"), ("imagenet=missing.h5", "no such file")])
def test_imagenet_init_without_a_usable_file_is_one_line_and_exit_2(tmp_path, init, reason):
    from busdet.phantoms import write_phantom_dataset

    write_phantom_dataset(tmp_path / "data", 2)
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--data", f"a={tmp_path / 'data'}",
                             "--config", str(SMOKE_CONFIG), "--model-dir", str(tmp_path / "run"),
                             "--splits", str(tmp_path), "--records", str(tmp_path / "records"), "--init", init],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0] and "Traceback" not in result.stderr


def test_imagenet_init_never_reaches_for_keras_cache(tmp_path):
    from busdet.training.imagenet import parse_imagenet_init

    with pytest.raises(ValueError, match="nothing is downloaded"):
        parse_imagenet_init("imagenet")
    (tmp_path / "w.h5").write_bytes(b"x")
    assert parse_imagenet_init(f"imagenet={tmp_path / 'w.h5'}") == tmp_path / "w.h5"


@pytest.mark.slow
def test_measure_model_picks_threshold_on_each_val_and_reports_each_test_split(smoke_model, label_map_path,
                                                                                tmp_path):
    from busdet.datasets import DatasetSpec
    from busdet.evaluation.measure import measure_model

    detector = load_detector(smoke_model, label_map_path)
    work = smoke_model.parent
    specs = [DatasetSpec(name, work / name, work / f"{name}_split.csv") for name in ("centre_a", "centre_b")]
    summary = measure_model(detector, specs, tmp_path)
    assert set(summary) == {"threshold_rule", "score_threshold", "val_threshold_by_dataset", "datasets", "val",
                            "test", "test_by_scanner"}
    assert 0.0 <= summary["score_threshold"] <= 1.0 and "each of centre_a, centre_b" in summary["threshold_rule"]
    own = summary["val_threshold_by_dataset"]
    if None not in own.values():  # the smoke model may miss the target recall on a centre
        assert summary["score_threshold"] == min(own.values())
    assert [d["name"] for d in summary["datasets"]] == ["centre_a", "centre_b"]
    for name in ("val", "test"):
        assert set(summary[name]) == {"centre_a", "centre_b", "pooled"}
        assert summary[name]["pooled"]["score_threshold"] == summary["score_threshold"]
        counts = {d: summary[name][d]["images"] for d in summary[name]}
        assert counts["pooled"] == counts["centre_a"] + counts["centre_b"]
        for folder in ("centre_a", "centre_b", "pooled"):
            assert (tmp_path / folder / name / "metrics.json").is_file()


def test_training_curves_read_model_garden_style_summaries(tmp_path):
    from busdet.training.curves import read_scalars, write_training_curves

    for folder, tags in {"train": ["total_loss", "cls_loss"], "validation": ["validation_loss", "AP50", "AP"]}.items():
        writer = tf.summary.create_file_writer(str(tmp_path / "run" / folder))
        with writer.as_default():
            for step in (10, 20):
                for tag in tags:
                    tf.summary.scalar(tag, 1.0 / step, step=step)
        writer.close()
    assert read_scalars(tmp_path / "run" / "validation")["AP50"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.05))]
    write_training_curves([tmp_path / "run"], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_validation(run_dir: Path, series: dict) -> None:
    writer = tf.summary.create_file_writer(str(run_dir / "validation"))
    with writer.as_default():
        for tag, values in series.items():
            for step, value in values:
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_compare_runs_averages_the_last_evaluations_against_the_baseline(tmp_path):
    from busdet.training.curves import comparison_rows, late_validation_means

    _write_validation(tmp_path / "base", {"target_mean": [(250, 0.1), (500, 0.5), (750, 0.7)],
                                          "busi/target_mean": [(250, 0.2), (500, 0.4), (750, 0.6)],
                                          "AP50": [(750, 0.3)], "busi/mAP50": [(750, 0.2)]})
    _write_validation(tmp_path / "arm", {"target_mean": [(250, 0.9), (500, 0.6), (750, 0.8)]})
    means = late_validation_means(tmp_path / "base", last=2)
    assert means["target_mean"] == (pytest.approx(0.6), 2) and means["busi/target_mean"] == (pytest.approx(0.5), 2)
    header, rows = comparison_rows([tmp_path / "base", tmp_path / "arm"], ["busi"], last=2,
                                   metrics=["target_mean"])
    assert header == ["run", "last step", "evaluations", "target_mean", "busi/target_mean"]
    assert rows[0] == ["base", "750", "2", "0.600", "0.500"]
    # The arm's difference to the baseline is its own mean minus the baseline's; unlogged is "-".
    assert rows[1] == ["arm", "750", "2", "0.700 (+0.100)", "-"]
    # Pooled "AP50" is the class-mean AP50 that each dataset logs as "NAME/mAP50".
    header, rows = comparison_rows([tmp_path / "base"], ["busi"], metrics=["AP50"])
    assert header[3:] == ["AP50", "busi/mAP50"] and rows[0][3:] == ["0.300", "0.200"]


def test_compare_runs_tool_refuses_a_folder_without_validation_logs(tmp_path):
    completed = subprocess.run([sys.executable, "tools/compare_runs.py", "--runs", str(tmp_path)],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: no validation logs (validation/) in {tmp_path}"


def _model_garden_batch(truth, detections):
    """One validation batch in Model Garden's evaluator format (yxyx pixel boxes, padded).

    ``truth``: per image a list of (class id, [ymin, xmin, ymax, xmax]);
    ``detections``: per image a list of (class id, score, box).
    """
    size, slots = len(truth), 4

    def padded(rows, width):
        out = np.zeros((size, slots, width), np.float32)
        for i, image_rows in enumerate(rows):
            for j, row in enumerate(image_rows):
                out[i, j] = row
        return out

    groundtruths = {
        "source_id": np.arange(1, size + 1), "height": np.full(size, 100), "width": np.full(size, 100),
        "num_detections": np.array([len(t) for t in truth]),
        "boxes": padded([[box for _, box in t] for t in truth], 4),
        "classes": padded([[[c] for c, _ in t] for t in truth], 1)[..., 0].astype(np.int32),
        "areas": np.full((size, slots), 100.0, np.float32), "is_crowds": np.zeros((size, slots), np.int32)}
    predictions = {
        "source_id": np.arange(1, size + 1),
        "image_info": np.tile(np.array([[100, 100], [100, 100], [1, 1], [0, 0]], np.float32), (size, 1, 1)),
        "num_detections": np.array([len(d) for d in detections]),
        "detection_boxes": padded([[box for _, _, box in d] for d in detections], 4),
        "detection_scores": padded([[[s] for _, s, _ in d] for d in detections], 1)[..., 0],
        "detection_classes": padded([[[c] for c, _, _ in d] for d in detections], 1)[..., 0].astype(np.int32)}
    return groundtruths, predictions


def _validate(truth, detections):
    from busdet.training.validation import BusiCocoEvaluator

    evaluator = BusiCocoEvaluator(class_names=["benign", "malignant"], annotation_file=None,
                                  include_mask=False, per_category_metrics=False)
    batch = _model_garden_batch(truth, detections)
    evaluator.update_state(*tf.nest.map_structure(tf.convert_to_tensor, batch))
    return evaluator.result()


LESION_A, LESION_B = [10, 10, 40, 50], [50, 40, 90, 80]


def test_validation_adds_model_card_metrics_to_model_garden_ones():
    truth = [[(1, LESION_A)], [(2, LESION_B)], []]  # benign, malignant, normal image
    perfect = _validate(truth, [[(1, 0.9, LESION_A)], [(2, 0.8, LESION_B)], []])
    for key in ("AP50", "AP50_benign", "AP50_malignant", "AP50_lesion", "AUC_malignant_image", "target_mean"):
        assert perfect[key] == pytest.approx(1.0), key

    # Right places, swapped classes: the lesions are found, the classes are wrong.
    swapped = _validate(truth, [[(2, 0.9, LESION_A)], [(1, 0.8, LESION_B)], []])
    assert swapped["AP50_lesion"] == pytest.approx(1.0)
    assert swapped["AP50"] == swapped["AP50_benign"] == swapped["AP50_malignant"] == pytest.approx(0.0)
    # The malignant image scores 0, below the benign image (0.9), tied with the normal one.
    assert swapped["AUC_malignant_image"] == pytest.approx(0.25)
    assert swapped["target_mean"] == pytest.approx((1.0 + 0.0 + 0.25) / 3)


def test_validation_without_a_malignant_image_still_ranks_checkpoints():
    metrics = _validate([[(1, LESION_A)], []], [[(1, 0.9, LESION_A)], [(1, 0.4, LESION_B)]])
    assert np.isnan(metrics["AP50_malignant"]) and np.isnan(metrics["AUC_malignant_image"])
    assert metrics["target_mean"] == pytest.approx(1.0)  # lesion and benign AP, both defined


@pytest.mark.parametrize("chosen, stored", [(0.23526, 0.2352), (0.2353, 0.2353), (0.5, 0.5), (0.99999, 0.9999)])
def test_stored_threshold_never_rounds_up_past_the_chosen_box(chosen, stored):
    from busdet.evaluation.measure import stored_threshold

    assert stored_threshold(chosen) == pytest.approx(stored)
    assert stored_threshold(chosen) <= chosen


@pytest.mark.slow
def test_sigterm_stops_training_between_steps_not_at_the_end_of_a_loop(tmp_path):
    """tools/train.py promises exit 143 on SIGTERM. With the steps of a loop inside one TensorFlow
    while loop, Python's handler ran only when the loop ended: a 100000-step loop would never stop."""
    import signal
    import time

    from busdet.phantoms import write_phantom_dataset

    write_phantom_dataset(tmp_path / "ph", 4)
    (tmp_path / "splits").mkdir()
    horizon = 100000
    override = (f"trainer: {{train_steps: {horizon}, steps_per_loop: {horizon}, summary_interval: {horizon}, "
                f"checkpoint_interval: {horizon}, validation_interval: {horizon}}}")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--data", f"ph={tmp_path / 'ph'}",
         "--config", str(SMOKE_CONFIG), "--model-dir", str(tmp_path / "run"), "--splits", str(tmp_path / "splits"),
         "--records", str(tmp_path / "records"), "--params-override", override],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        for line in process.stderr:  # the training loop has started
            if f"training until step {horizon}" in line:
                break
        time.sleep(30)  # past tracing, inside the loop
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err[-2000:]
