"""Measuring a model on several datasets: pooling, per-scanner tables, the dataset arguments."""

from __future__ import annotations

import pytest

from busdet.boxes import Box
from busdet.datasets import parse_dataset_arg, read_devices
from busdet.evaluation.measure import SplitPredictions, metrics_by_group, pool, stored_threshold


def _part(hits):
    """Images ``img{k}.png`` each with one benign lesion, found (score 0.9) when ``hits[k]``."""
    truth = {f"img{k}.png": [Box(0, 0, 10, 10, "benign")] for k in range(len(hits))}
    predictions = {name: [Box(0, 0, 10, 10, "benign", 0.9)] if hit else [] for name, hit in zip(truth, hits)}
    return SplitPredictions(truth, {name: "benign" for name in truth}, predictions)


def test_pool_keeps_same_named_images_of_two_datasets_apart():
    pooled = pool({"a": _part([True, False]), "b": _part([True])})
    assert sorted(pooled.truth) == ["a/img0.png", "a/img1.png", "b/img0.png"]
    assert pooled.predictions["a/img1.png"] == [] and len(pooled.predictions["b/img0.png"]) == 1


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


@pytest.mark.parametrize("chosen, stored", [(0.23529999, 0.2352), (0.5, 0.5)])
def test_threshold_is_cut_not_rounded(chosen, stored):
    assert stored_threshold(chosen) == stored
