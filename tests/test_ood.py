"""The in-distribution check (busdet.ood): its tests on generated images, its statistics' bookkeeping,
and the shipped model's statistics kept in step with it.

Fast tests use generated images and features; the ``slow`` ones run the shipped model (and,
with ``../shared``, the validation images of both datasets).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from busdet import ood
from busdet.inference import (MODEL_INFO_FILE, ModelLoadError, compute_saved_model_digest, load_detector,
                              read_model_info, write_model_info)
from busdet.ood_fit import choose_threshold, fit_stats, store_ood_stats
from busdet.ood_samples import document_like, photo_like, with_colour_overlay
from busdet.phantoms import generate_phantom

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_model"
SHARED = ROOT.parent / "shared"
DATASETS = {"busi": SHARED / "busi" / "Dataset_BUSI_with_GT", "busbra": SHARED / "busbra" / "BUS-BRA"}


def phantom(seed: int = 0) -> np.ndarray:
    return generate_phantom(seed, "benign").image


@pytest.mark.parametrize("seed", range(3))
def test_cheap_tests_flag_photos_documents_and_colour_overlays_but_not_phantoms(seed):
    assert any("in colour" in reason for reason in ood.cheap_reasons(photo_like(seed)))
    assert any("flat" in reason for reason in ood.cheap_reasons(document_like(seed)))
    assert any("Doppler" in reason for reason in ood.cheap_reasons(with_colour_overlay(phantom(seed), seed)))
    assert ood.cheap_reasons(phantom(seed)) == ()


def test_colour_overlay_leaves_the_phantom_unchanged():
    image = phantom()
    before = image.copy()
    with_colour_overlay(image, 0)
    assert np.array_equal(image, before)


def two_clusters(rng, count: int, dims: int = 6):
    return {"a": rng.normal(0, 1, (count, dims)), "b": rng.normal(5, 1, (count, dims))}


def test_threshold_flags_at_most_one_percent_of_each_datasets_validation_images():
    rng = np.random.default_rng(0)
    stats = fit_stats(two_clusters(rng, 500))
    val = {name: ood.mahalanobis_distances(features, stats) for name, features in two_clusters(rng, 250).items()}
    val["b"] = val["b"] * 1.5  # one dataset further out: the threshold must serve it too
    threshold = choose_threshold(val)
    assert all(np.mean(scores > threshold) <= 0.01 for scores in val.values())
    assert np.mean(val["b"] > threshold) == pytest.approx(0.008)  # 2 of 250: as many as allowed, no fewer
    assert threshold == pytest.approx(np.sort(val["b"])[-3])


def test_learned_test_flags_features_far_from_every_dataset():
    rng = np.random.default_rng(1)
    stats = fit_stats(two_clusters(rng, 500))
    stats = ood.OodStats(stats.means, stats.precision, 5.0, stats.datasets)
    near, far = np.full(6, 5.0), np.full(6, 20.0)
    assert ood.check_image(phantom(), near, stats).in_distribution
    check = ood.check_image(phantom(), far, stats)
    assert not check.in_distribution and check.score > 5.0
    assert check.warning.startswith("this image does not look like the breast ultrasound the model was trained on")
    assert check.warning.endswith("its boxes are not to be trusted")
    assert ood.reasons_from_warning(check.warning) == check.reasons
    assert ood.check_image(phantom(), None, stats).score is None  # a model without the features output


def test_loop_check_names_how_many_frames_were_flagged():
    flagged = ood.ImageCheck(3.0, ("colour",))
    summary = ood.summarise_checks([ood.ImageCheck(1.0), flagged, ood.ImageCheck(2.0)])
    assert summary.reasons == ("1 of 3 frames", "colour") and summary.score == 3.0
    assert ood.summarise_checks([ood.ImageCheck(1.0)]).in_distribution
    assert ood.summarise_checks([None]) is None


def fake_model_dir(tmp_path: Path) -> Path:
    """Files enough for the digests and the label-map check (no loadable graph)."""
    model_dir = tmp_path / "model"
    (model_dir / "variables").mkdir(parents=True)
    (model_dir / "saved_model.pb").write_bytes(b"graph")
    (model_dir / "variables" / "variables.index").write_bytes(b"weights")
    write_model_info(model_dir, {"classes": {"1": "benign", "2": "malignant"}})
    return model_dir


def stored_stats(model_dir: Path) -> ood.OodStats:
    stats = fit_stats(two_clusters(np.random.default_rng(2), 50), threshold=7.5)
    store_ood_stats(model_dir, stats, {"threshold": 7.5})
    return stats


def test_statistics_round_trip_with_both_digests(tmp_path):
    model_dir = fake_model_dir(tmp_path)
    stats = stored_stats(model_dir)
    info = read_model_info(model_dir)
    assert info["ood"]["saved_model_sha256"] == compute_saved_model_digest(model_dir)
    loaded = ood.load_ood_stats(model_dir, info, compute_saved_model_digest(model_dir))
    assert loaded.threshold == 7.5 and loaded.datasets == ("a", "b")
    np.testing.assert_array_equal(loaded.precision, stats.precision)


def record_another_saved_model(model_dir: Path) -> None:
    info = read_model_info(model_dir)
    info["ood"]["saved_model_sha256"] = "0" * 64
    write_model_info(model_dir, info)


@pytest.mark.parametrize("change, reason", [
    (record_another_saved_model, "stale, fitted on another SavedModel"),
    (lambda d: (d / ood.OOD_FILE).write_bytes(b"other"), "not the file tools/fit_ood.py wrote"),
    (lambda d: (d / ood.OOD_FILE).unlink(), "missing"),
])
def test_stale_altered_or_missing_statistics_are_one_line_and_exit_2(tmp_path, label_map_path, change, reason):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(SHIPPED, model_dir)
    change(model_dir)
    with pytest.raises(ModelLoadError, match=reason):
        load_detector(model_dir, label_map_path)
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", str(tmp_path), "--output",
                           str(tmp_path.parent / f"{tmp_path.name}_out"), "--model", str(model_dir),
                           "--label", str(label_map_path)], capture_output=True, text=True)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0] and str(model_dir / ood.OOD_FILE) in errors[0]
    assert "Traceback" not in done.stderr


def test_shipped_statistics_are_in_step_with_the_shipped_model():
    info = read_model_info(SHIPPED)
    assert ood.find_ood_problem(SHIPPED, info, compute_saved_model_digest(SHIPPED)) is None
    stats = ood.load_ood_stats(SHIPPED, info, compute_saved_model_digest(SHIPPED))
    assert stats.datasets == tuple(entry["name"] for entry in info["trained_on"])
    assert stats.threshold == pytest.approx(info["ood"]["threshold"], abs=1e-4)
    for name, figures in info["ood"]["flagged"]["val"].items():
        assert figures["learned"] <= 0.01, name


@pytest.fixture(scope="module")
def shipped(label_map_path):
    return load_detector(SHIPPED, label_map_path)


@pytest.mark.slow
def test_shipped_model_flags_a_photo_a_document_and_a_doppler_frame(shipped):
    from busdet.results import UNTRUSTED_FINDING, analyse_image, result_finding_line

    for name, image in [("photo.png", photo_like(0)), ("report.png", document_like(0)),
                        ("doppler.png", with_colour_overlay(phantom(), 0))]:
        result, _ = analyse_image(shipped, name, lambda: image, shipped.score_threshold)
        assert result.in_distribution is False, name
        assert result_finding_line(result).startswith(UNTRUSTED_FINDING) and "malignan" not in result_finding_line(result)


@pytest.mark.slow
def test_predict_tables_carry_the_warning_for_a_photo_a_document_and_a_doppler_frame(tmp_path):
    import pandas as pd

    from busdet.images import write_image

    inputs = tmp_path / "in"
    for name, image in [("photo.png", photo_like(1)), ("report.png", document_like(1)),
                        ("doppler.png", with_colour_overlay(phantom(1), 1))]:
        write_image(inputs / name, image)
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", str(inputs), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "images.csv", keep_default_na=False)
    assert table["in_distribution"].tolist() == [False, False, False]
    assert all("its boxes are not to be trusted" in warning for warning in table["warning"])


@pytest.mark.slow
@pytest.mark.skipif(not all(path.is_dir() for path in DATASETS.values()), reason="../shared datasets not here")
def test_validation_images_of_both_datasets_pass_at_the_chosen_rate(shipped):
    from busdet.datasets import parse_dataset_arg
    from busdet.images import read_image
    from busdet.results import analyse_image
    from busdet.ood_fit import split_members

    for name, folder in DATASETS.items():
        paths = split_members(parse_dataset_arg(f"{name}={folder}", ROOT / "data"))["val"]
        flagged = [path.name for path in paths
                   if analyse_image(shipped, path.name, lambda: read_image(path), 0.5)[0].in_distribution is False]
        assert len(flagged) <= 0.01 * len(paths), (name, flagged)


def test_model_info_records_the_rule_and_what_it_was_fitted_on():
    record = json.loads((SHIPPED / MODEL_INFO_FILE).read_text())["ood"]
    assert record["file"] == ood.OOD_FILE and "Mahalanobis" in record["score"]
    assert set(record["fitted_on"]) == {"busi", "busbra"}
    assert all(entry["split"] == "train" and entry["images"] > 0 for entry in record["fitted_on"].values())


def flagged_result(**fields):
    from busdet.boxes import Box
    from busdet.results import ImageResult

    fields = {"filename": "photo.png",
              "check": ood.ImageCheck(42.0, ("feature distance 42.0 from the training images, above 30.0",)), **fields}
    return ImageResult(width=100, height=80, boxes=(Box(10, 10, 50, 40, "malignant", 0.9),), score_threshold=0.5,
                       **fields)


def test_a_flagged_image_keeps_its_boxes_but_gets_no_malignant_headline():
    from busdet.results import UNTRUSTED_FINDING, result_finding_line
    from busdet.tables import summary_table

    result = flagged_result()
    assert len(result.shown_boxes) == 1 and result.in_distribution is False
    assert result_finding_line(result) == f"{UNTRUSTED_FINDING} (1 box(es) drawn)"
    row = summary_table([result]).iloc[0]
    assert row["finding"] == UNTRUSTED_FINDING and row["warning"] == result.warning
    assert not row["in_distribution"] and row["ood_score"] == 42.0


def test_tables_read_back_the_check(tmp_path):
    from busdet.files import write_csv
    from busdet.tables import images_table, predictions_table, read_results

    results = [flagged_result(), flagged_result(filename="scan.png", check=ood.ImageCheck(3.25))]
    write_csv(predictions_table(results), tmp_path / "p.csv")
    write_csv(images_table(results), tmp_path / "i.csv")
    back = read_results(tmp_path / "p.csv", tmp_path / "i.csv")
    assert [r.check for r in back] == [r.check for r in results]
    assert predictions_table(results)["in_distribution"].tolist() == [False, True]


def test_key_frame_of_a_loop_is_one_that_looks_like_the_training_images():
    from busdet.boxes import Box
    from busdet.results import FrameBoxes, ImageResult

    malignant, benign = Box(1, 1, 9, 9, "malignant", 0.95), Box(1, 1, 9, 9, "benign", 0.6)
    frames = (FrameBoxes(1, (malignant,), ood.ImageCheck(50.0, ("far",))), FrameBoxes(2, (benign,), ood.ImageCheck(2.0)))
    result = ImageResult("loop.dcm", 10, 10, score_threshold=0.5, frames=frames, frame_count=2,
                         check=ood.summarise_checks([f.check for f in frames]))
    assert result.key_frame == 2
    assert result.in_distribution is False and "1 of 2 frames" in result.warning


def test_annotated_copy_of_a_flagged_image_says_its_boxes_are_not_to_be_trusted():
    from dataclasses import replace

    from busdet.downloads import annotated_image
    from busdet.drawing import draw_boxes
    from busdet.results import UNTRUSTED_CAPTION

    image = phantom()[:80, :100]
    result = flagged_result()
    assert np.array_equal(annotated_image(result, image),
                          draw_boxes(image, result.shown_boxes, caption=UNTRUSTED_CAPTION))
    trusted = replace(result, check=ood.ImageCheck(1.0))
    assert np.array_equal(annotated_image(trusted, image), draw_boxes(image, result.shown_boxes))


def test_split_members_reads_the_split_through_the_checked_table_reader(tmp_path):
    """A split row with a cell too many used to shift under the wrong columns (pandas); now it is one
    line naming the file and its line, as tools/train.py and measure_model already say."""
    from busdet.datasets import parse_dataset_arg
    from busdet.ood_fit import split_members

    folder, splits = tmp_path / "set", tmp_path / "splits"
    splits.mkdir()
    rows = []
    for split in ("train", "val", "test"):
        (folder / "benign").mkdir(parents=True, exist_ok=True)
        (folder / "benign" / f"{split}.png").write_bytes(b"")
        rows.append(f"{split}.png,benign,{split}")
    (splits / "set_split.csv").write_text("filename,label,split\n" + "\n".join(rows) + "\n")
    assert split_members(parse_dataset_arg(f"set={folder}", splits))["val"] == [folder / "benign" / "val.png"]

    (splits / "set_split.csv").write_text("filename,label,split\n" + "\n".join(rows) + ",extra\n")
    with pytest.raises(ValueError, match=r"set_split\.csv.*line 4"):
        split_members(parse_dataset_arg(f"set={folder}", splits))
