"""Measuring a model on several datasets: pooling, per-scanner tables, the dataset arguments."""

from __future__ import annotations

import hashlib

import pytest

from busdet.boxes import Box
from busdet.datasets import DatasetSpec, citation_line, parse_dataset_arg, read_devices
from busdet.evaluation.measure import (SplitPredictions, choose_threshold, measured_datasets, metrics_by_group, pool,
                                       store_operating_point, stored_threshold)
from busdet.inference import read_model_info


def _part(hits):
    """Images ``img{k}.png`` each with one benign lesion, found (score 0.9) when ``hits[k]``."""
    truth = {f"img{k}.png": [Box(0, 0, 10, 10, "benign")] for k in range(len(hits))}
    predictions = {name: [Box(0, 0, 10, 10, "benign", 0.9)] if hit else [] for name, hit in zip(truth, hits)}
    return SplitPredictions(truth, {name: "benign" for name in truth}, predictions)


def test_pool_keeps_same_named_images_of_two_datasets_apart():
    pooled = pool({"a": _part([True, False]), "b": _part([True])})
    assert sorted(pooled.truth) == ["a/img0.png", "a/img1.png", "b/img0.png"]
    assert pooled.predictions["a/img1.png"] == [] and len(pooled.predictions["b/img0.png"]) == 1


def _scored(scores):
    """Images each with one lesion, found at ``scores[k]``."""
    truth = {f"img{k}.png": [Box(0, 0, 10, 10, "benign")] for k in range(len(scores))}
    predictions = {name: [Box(0, 0, 10, 10, "benign", score)] for name, score in zip(truth, scores)}
    return SplitPredictions(truth, {name: "benign" for name in truth}, predictions)


def test_each_rule_keeps_the_recall_on_the_hardest_dataset_where_pooling_does_not():
    easy, hard = _scored([0.9] * 10), _scored([0.9] * 5 + [0.3] * 5)
    val = {"easy": easy, "hard": hard, "pooled": pool({"easy": easy, "hard": hard})}
    threshold, rule, own = choose_threshold(val, 0.9, "each")
    assert own == {"easy": 0.9, "hard": 0.3} and threshold == 0.3 and "each of easy, hard" in rule
    pooled_threshold, pooled_rule, _ = choose_threshold(val, 0.9, "pooled")
    assert pooled_threshold == 0.3 and "pooled" in pooled_rule  # 18 of 20 needed: here the two agree
    val_hard_tail = {"easy": easy, "hard": _scored([0.9] * 8 + [0.3] * 2)}
    val_hard_tail["pooled"] = pool(val_hard_tail)
    assert choose_threshold(val_hard_tail, 0.9, "each")[0] == 0.3  # 0.9 keeps only 8 of hard's 10
    assert choose_threshold(val_hard_tail, 0.9, "pooled")[0] == 0.9  # 18 of 20 pooled: hard's recall 0.8


def test_each_rule_without_a_reachable_target_on_one_dataset_gives_none():
    missing = _part([True, False])  # recall 0.5 at best
    val = {"a": _scored([0.9] * 10), "b": missing, "pooled": pool({"a": _scored([0.9] * 10), "b": missing})}
    threshold, _, own = choose_threshold(val, 0.9, "each")
    assert threshold is None and own["b"] is None


def test_metrics_by_group_scores_each_scanner_on_its_own_images():
    part = _part([True, True, False, False])
    devices = {"img0.png": "GE", "img1.png": "GE", "img2.png": "Toshiba", "img3.png": "Toshiba"}
    table = metrics_by_group(part, devices, 0.5, ["benign", "malignant"])
    assert table["GE"]["images"] == 2 and table["GE"]["lesion_recall"] == 1.0
    assert table["Toshiba"]["lesion_recall"] == 0.0 and table["Toshiba"]["AP50_lesion"] == 0.0


def test_devices_come_from_the_dataset_table(tmp_path):
    (tmp_path / "bus_data.csv").write_text("ID,Case,Device\nbus_0002-l,2,GE Logiq 7\nbus_0003-l,3,U-Systems\n")
    assert read_devices(tmp_path) == {"bus_0002-l.png": "GE Logiq 7", "bus_0003-l.png": "U-Systems"}
    assert read_devices(tmp_path / "none") == {}


def test_dataset_argument_names_its_split(tmp_path):
    spec = parse_dataset_arg(f"mine={tmp_path}", tmp_path / "splits")
    assert spec.name == "mine" and spec.split_path == tmp_path / "splits" / "mine_split.csv"
    for bad in (str(tmp_path), f"=={tmp_path}", "x=/no/such/folder"):
        with pytest.raises(ValueError, match="--data"):
            parse_dataset_arg(bad, tmp_path)


def test_measured_datasets_record_the_sha256_of_each_split_csv(tmp_path):
    one, other = tmp_path / "busi_split.csv", tmp_path / "mine_split.csv"
    one.write_text("filename,label,split\na.png,benign,val\nb.png,malignant,test\n")
    other.write_text("filename,label,split\na.png,benign,test\nb.png,malignant,val\n")  # same counts, other split
    datasets = measured_datasets([DatasetSpec("busi", tmp_path, one), DatasetSpec("mine", tmp_path, other)])
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (one, other)]
    assert datasets == [{"name": "busi", "citation": citation_line("busi"), "split_sha256": digests[0]},
                        {"name": "mine", "citation": "mine", "split_sha256": digests[1]}]
    assert digests[0] != digests[1]
    # --write-model-info keeps them with the rest of the datasets
    store_operating_point(tmp_path, {"score_threshold": 0.3, "threshold_rule": "r", "datasets": datasets, "val": {},
                                     "test": {}, "test_by_scanner": {}, "val_threshold_by_dataset": {}})
    assert read_model_info(tmp_path)["measured_on"] == datasets


@pytest.mark.parametrize("chosen, stored", [(0.23529999, 0.2352), (0.5, 0.5)])
def test_threshold_is_cut_not_rounded(chosen, stored):
    assert stored_threshold(chosen) == stored


def _phantom_spec(folder, label_map_path, splits=("train", "val", "test")):
    """A phantom dataset of 2 images per class and its split CSV, image (k) in the k-th split."""
    from busdet.annotations import annotate_dataset
    from busdet.datasets import DatasetSpec
    from busdet.label_map import load_label_map
    from busdet.phantoms import write_phantom_dataset
    from busdet.training.data import write_split_csv

    write_phantom_dataset(folder / "ds", 2, seed=5)
    images, _ = annotate_dataset(folder / "ds", list(load_label_map(label_map_path).values()))
    split = {i.filename: splits[int(i.filename.split("(")[1][0]) - 1] for i in images}
    write_split_csv(split, {i.filename: i.label for i in images}, folder / "ds_split.csv")
    return DatasetSpec("ds", folder / "ds", folder / "ds_split.csv"), images, split


def test_annotated_splits_divide_the_dataset_as_its_split_csv_and_refuse_an_empty_one(tmp_path, label_map_path):
    from busdet.evaluation.measure import annotated_splits

    spec, images, split = _phantom_spec(tmp_path, label_map_path, splits=("val", "test"))
    members = annotated_splits(spec, ["benign", "malignant"])
    assert {name: sorted(i.filename for i in part) for name, part in members.items()} == {
        name: sorted(f for f, s in split.items() if s == name) for name in ("val", "test")}
    with pytest.raises(ValueError, match="no train images"):
        annotated_splits(spec, ["benign", "malignant"], ["train"])


def test_run_in_turn_calls_every_model_on_each_image_before_the_next(tmp_path, label_map_path):
    import numpy as np

    from busdet.evaluation.measure import annotated_splits, run_in_turn, split_truth
    from busdet.inference import Detector

    spec, _, _ = _phantom_spec(tmp_path, label_map_path, splits=("val", "test"))
    members = annotated_splits(spec, ["benign", "malignant"], ["test"])["test"]
    calls = []

    def model(name, score):
        def predict(batch):
            calls.append((name, batch.shape))
            return {"num_detections": np.array([1]), "detection_boxes": np.array([[[0.1, 0.1, 0.5, 0.5]]]),
                    "detection_classes": np.array([[1]]), "detection_scores": np.array([[score]]),
                    "image_features": np.full((1, 4), score, np.float32)}
        return Detector(predict=predict, classes={1: "benign", 2: "malignant"}, input_size=(640, 640),
                        score_threshold=0.5, model_dir=tmp_path, info={})

    runs = run_in_turn({"a": model("a", 0.9), "b": model("b", 0.4)}, members)
    assert [name for name, _ in calls] == ["a", "b"] * len(members)
    assert list(runs.predictions["a"]) == [i.filename for i in members]
    assert all(len(runs.wall[name]) == len(runs.cpu[name]) == len(members) for name in "ab")
    assert [float(f[0]) for f in runs.features["b"]] == pytest.approx([0.4] * len(members))
    part = split_truth(members, runs.predictions["b"])
    assert part.labels == {i.filename: i.label for i in members}
    assert [box.score for boxes in part.predictions.values() for box in boxes] == pytest.approx([0.4] * len(members))
