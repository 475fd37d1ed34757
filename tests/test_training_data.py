"""Two-centre training data: patient-grouped splits, per-source records, sampling weights,
per-dataset validation and early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from busdet.annotations import AnnotatedImage
from busdet.boxes import Box
from busdet.phantoms import write_phantom_dataset
from busdet import datasets
from busdet.training import data, run, sampling, validation


def _patients(n_benign, n_malignant, views=2):
    """BUS-BRA-like images: ``bus_000k-v.png``, ``views`` per patient, one class per patient."""
    images, groups = [], {}
    for k in range(n_benign + n_malignant):
        label = "benign" if k < n_benign else "malignant"
        for view in "lrxyz"[:views]:
            name = f"bus_{k:04d}-{view}.png"
            images.append(AnnotatedImage(name, None, label, 10, 10))
            groups[name] = str(k)
    return images, groups


def test_grouped_split_keeps_a_patients_views_together_and_is_stratified():
    images, groups = _patients(60, 40)
    split = data.build_split(images, seed=0, groups=groups)
    by_patient = {}
    for name, part in split.items():
        by_patient.setdefault(groups[name], set()).add(part)
    assert all(len(parts) == 1 for parts in by_patient.values())
    for label, patients in {"benign": 60, "malignant": 40}.items():
        parts = [split[i.filename] for i in images if i.label == label]
        assert parts.count("val") == parts.count("test") == 2 * round(patients * 0.15)
    assert split == data.build_split(list(reversed(images)), seed=0, groups=groups)


def test_ungrouped_split_is_the_committed_busi_rule(tmp_path):
    """Without groups every image is its own group: the BUSI split stays reproducible."""
    images = [AnnotatedImage(f"benign ({i}).png", None, "benign", 10, 10) for i in range(20)]
    assert data.build_split(images, seed=0) == data.build_split(images, seed=0, groups={})


def test_patient_groups_come_from_bus_data_csv(tmp_path):
    (tmp_path / "bus_data.csv").write_text("ID,Case,Device\nbus_0002-l,2,GE\nbus_0002-r,2,GE\nbus_0003-l,3,GE\n")
    assert datasets.read_patient_groups(tmp_path) == {"bus_0002-l.png": "2", "bus_0002-r.png": "2",
                                                  "bus_0003-l.png": "3"}
    assert datasets.read_patient_groups(tmp_path / "nothing") == {}


def test_a_damaged_bus_data_csv_is_one_line_naming_it(tmp_path):
    """pandas put a row with a cell too many under the wrong columns: two views of one patient
    could then land in different splits. The checked table reader refuses it instead."""
    (tmp_path / "bus_data.csv").write_text("ID,Case,Device\nbus_0002-l,2,GE,extra\nbus_0002-r,2,GE\n")
    with pytest.raises(ValueError, match=r"bus_data\.csv.*line 2"):
        datasets.read_patient_groups(tmp_path)
    (tmp_path / "bus_data.csv").write_text("Case,Device\n2,GE\n")
    with pytest.raises(ValueError, match=r"bus_data\.csv: missing column\(s\) ID"):
        datasets.read_devices(tmp_path)


def test_split_csv_records_the_patient(tmp_path):
    images, groups = _patients(3, 2)
    split = data.build_split(images, groups=groups)
    data.write_split_csv(split, {i.filename: i.label for i in images}, tmp_path / "s.csv", groups)
    assert datasets.read_split_csv(tmp_path / "s.csv") == split
    assert "patient" in (tmp_path / "s.csv").read_text().splitlines()[0]


def test_lesion_free_crop_takes_the_largest_strip_beside_the_lesions():
    pixels = np.arange(100 * 200, dtype=np.uint32).reshape(100, 200, 1).repeat(3, 2).astype(np.uint8)
    crop = data.lesion_free_crop(pixels, [Box(20, 30, 60, 70, "benign")], margin=5)
    assert crop.shape == (100, 135, 3)  # right of x=65
    assert (crop == pixels[:, 65:]).all()
    assert data.lesion_free_crop(pixels, [Box(10, 10, 190, 90, "benign")]) is None


def test_records_are_written_per_source_with_dataset_source_ids(tmp_path, label_map_path):
    from busdet.annotations import annotate_dataset
    from busdet.label_map import load_label_map

    write_phantom_dataset(tmp_path / "ds", 4, seed=1)
    classes = load_label_map(label_map_path)
    images, problems = annotate_dataset(tmp_path / "ds", list(classes.values()))
    split = {i.filename: "val" if i.filename.endswith("(1).png") else "train" for i in images}
    counts = data.write_tfrecords(images, split, classes, tmp_path / "rec", dataset_index=2)
    assert counts["train_benign"] == counts["train_malignant"] == counts["train_normal"] == 3
    assert counts["val"] == 3 and 0 < counts["train_background"] <= 6
    ids = [int(tf.train.Example.FromString(r.numpy()).features.feature["image/source_id"].bytes_list.value[0])
           for r in tf.data.TFRecordDataset(str(tmp_path / "rec" / "val.tfrecord"))]
    assert all(i // data.SOURCE_ID_STRIDE == 2 for i in ids)
    for record in tf.data.TFRecordDataset(str(tmp_path / "rec" / "train_background.tfrecord")):
        boxes = tf.train.Example.FromString(record.numpy()).features.feature["image/object/bbox/xmin"]
        assert len(boxes.float_list.value) == 0
    assert not list((tmp_path / "rec").glob("*.tmp"))


def test_two_builds_of_one_dataset_at_once_write_their_own_files(tmp_path, label_map_path):
    """Two trainings building the same records together: each writes its own temporary files (never one
    shared name) and moves whole files into place; a build that fails leaves no temporary file."""
    import os
    import threading

    from busdet.annotations import annotate_dataset
    from busdet.images import ImageReadError
    from busdet.label_map import load_label_map

    write_phantom_dataset(tmp_path / "ds", 2, seed=3)
    classes = load_label_map(label_map_path)
    images, _ = annotate_dataset(tmp_path / "ds", list(classes.values()))
    split = {i.filename: "val" if i.filename.endswith("(1).png") else "train" for i in images}
    both_writing = threading.Barrier(2, timeout=60)

    def in_step(items):  # both builds have their files open before either ends, then end together
        for position, item in enumerate(items):
            if position == 1:
                both_writing.wait()
            yield item
        both_writing.wait()

    counts, errors = [], []

    def build():
        try:
            counts.append(data.write_tfrecords(images, split, classes, tmp_path / "rec", progress=in_step))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(counts) == 2 and counts[0] == counts[1]
    assert sorted(os.listdir(tmp_path / "rec")) == sorted(f"{stem}.tfrecord" for stem in counts[0])
    for stem, count in counts[0].items():
        assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "rec" / f"{stem}.tfrecord"))) == count

    broken = [*images[:2], AnnotatedImage("gone.png", tmp_path / "gone.png", "benign", 10, 10)]
    with pytest.raises(ImageReadError):
        data.write_tfrecords(broken, {i.filename: "train" for i in broken}, classes, tmp_path / "failed")
    assert os.listdir(tmp_path / "failed") == []


COUNTS = {"busi": {"train_benign": 260, "train_malignant": 124, "train_normal": 79,
                   "train_background": 200, "val": 100},
          "busbra": {"train_benign": 730, "train_malignant": 365, "train_background": 300, "val": 235}}


def test_source_weights_set_each_ratio_with_one_number():
    weights = sampling.source_weights(COUNTS, sampling.Sampling())
    assert sum(weights.values()) == pytest.approx(1.0)
    busi = {k: v for k, v in weights.items() if k.startswith("busi_")}
    assert sum(busi.values()) == pytest.approx(0.5)  # equal dataset shares by default
    assert busi["busi_normal"] + busi["busi_background"] == pytest.approx(0.5 * 0.3)
    assert busi["busi_normal"] == pytest.approx(0.5 * 0.3 * 0.6)
    assert weights["busbra_background"] == pytest.approx(0.5 * 0.3)  # no normals: crops only
    # malignant drawn twice as often per image as benign
    assert (busi["busi_malignant"] / 124) / (busi["busi_benign"] / 260) == pytest.approx(2.0)
    config = sampling.Sampling(negative_fraction=0.0, malignant_boost=1.0)
    config.override({"dataset_weights": {"busi": 3.0, "busbra": 1.0}}, is_strict=False)
    weights = sampling.source_weights(COUNTS, config)
    assert weights["busi_benign"] + weights["busi_malignant"] == pytest.approx(0.75)
    assert "busi_normal" not in weights


def test_source_weights_refuse_unknown_datasets():
    config = sampling.Sampling()
    config.override({"dataset_weights": {"other": 1.0}}, is_strict=False)
    with pytest.raises(ValueError, match="other"):
        sampling.source_weights(COUNTS, config)


def test_build_params_samples_sources_and_validates_every_dataset(tmp_path):
    from busdet.training.smoke import SMOKE_CONFIG

    params = run.build_params([SMOKE_CONFIG], tmp_path, COUNTS)
    train = params.task.train_data
    assert train.input_path.as_dict()["busbra_background"] == str(tmp_path / "busbra" / "train_background.tfrecord")
    assert set(train.input_path.as_dict()) == set(train.weights.as_dict())
    assert params.task.validation_data.input_path == [str(tmp_path / "busi" / "val.tfrecord"),
                                                      str(tmp_path / "busbra" / "val.tfrecord")]
    assert params.task.dataset_names == ["busi", "busbra"]
    assert params.trainer.validation_steps == -(-335 // params.task.validation_data.global_batch_size)


def test_validation_reports_each_dataset_and_the_pool():
    stride = data.SOURCE_ID_STRIDE
    truth = {1: [Box(0, 0, 10, 10, "benign")], 2: [Box(0, 0, 10, 10, "malignant")], 3: [],
             stride + 1: [Box(0, 0, 10, 10, "benign")], stride + 2: [Box(0, 0, 10, 10, "malignant")]}
    hit = lambda label, score: [Box(0, 0, 10, 10, label, score)]  # noqa: E731
    predictions = {1: hit("benign", 0.9), 2: hit("malignant", 0.8),
                   stride + 1: [Box(50, 50, 60, 60, "benign", 0.9)], stride + 2: hit("benign", 0.7)}
    values = validation.per_dataset_metrics(truth, predictions, ["benign", "malignant"], ["a", "b"])
    assert values["a/AP50_lesion"] == pytest.approx(1.0)
    assert values["b/AP50_lesion"] == pytest.approx(0.25, abs=0.01)  # a false box ranked above the hit
    assert values["a/target_mean"] > values["target_mean"] > values["b/target_mean"]
    assert "a/mAP50" in values
    single = validation.per_dataset_metrics(truth, predictions, ["benign", "malignant"], ["a"])
    assert not any("/" in key for key in single)


def test_early_stop_action_stops_once_the_best_checkpoint_is_old(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "info.json").write_text(json.dumps({"best_ckpt_global_step": 100.0}))
    step = tf.Variable(250, dtype=tf.int64)
    action = run.StopWhenValidationStalls(tmp_path, patience_steps=200, global_step=step)
    action({})  # 150 steps since the best: go on
    step.assign(300)
    with pytest.raises(run.ValidationStalled, match="since step 100"):
        action({})


def test_parser_augments_before_model_garden_and_flips_first(tmp_path):
    """With augmentation on, the parser's flip moves ahead of it and training examples still parse."""
    from busdet.phantoms import generate_phantom
    from busdet.training.augment import UltrasoundAugmentation
    from busdet.training.experiment import UltrasoundParser

    parser = UltrasoundParser(augmentation=UltrasoundAugmentation(probability=1.0), output_size=[128, 128],
                              min_level=3, max_level=7, num_scales=2, aspect_ratios=[0.5, 1.0, 2.0],
                              anchor_size=4.0, aug_rand_hflip=True)
    assert parser._flip_before_augmentation and not parser._aug_rand_hflip
    phantom = generate_phantom(3, "malignant", width=200, height=160)
    example = data.build_tf_example(phantom.image, phantom.boxes, 1, {"benign": 1, "malignant": 2})
    from official.vision.dataloaders import tf_example_decoder

    decoded = tf_example_decoder.TfExampleDecoder().decode(tf.constant(example.SerializeToString()))
    image, labels = parser.parse_fn(is_training=True)(decoded)
    assert image.shape == (128, 128, 3) and bool(tf.reduce_all(tf.math.is_finite(image)))
    assert sorted(labels["cls_targets"]) == ["3", "4", "5", "6", "7"]


def test_a_run_that_stopped_early_is_not_resumed(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "info.json").write_text(json.dumps({"best_ckpt_global_step": 500.0}))
    assert run.validation_stalled(tmp_path, 1000, 1400) is None
    assert "since step 500" in run.validation_stalled(tmp_path, 1000, 1500)
    assert run.validation_stalled(tmp_path, 0, 10**6) is None  # patience 0: never stop
    assert run.validation_stalled(tmp_path / "fresh", 1000, 5000) is None


def test_train_cli_refuses_a_bad_data_argument_before_loading_tensorflow(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for value in ("no_equals_sign", f"x={tmp_path / 'missing'}"):
        done = subprocess.run([sys.executable, str(root / "tools" / "train.py"), "--data", value, "--config",
                               str(root / "configs" / "smoke.yaml"), "--model-dir", str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(f"error: --data {value}")
        assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_every_committed_config_applies_to_the_experiment(config, tmp_path):
    """A stage YAML with a misspelt or moved key fails here, not hours into a training run."""
    params = run.build_params([config], tmp_path, COUNTS)
    params.validate()
