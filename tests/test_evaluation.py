"""Evaluation on synthetic annotations and predictions whose metrics are known by construction."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from busdet.boxes import Box, box_to_pixel_xywh
from busdet.evaluation import (EvaluationInputError, choose_operating_threshold, compute_evaluation, evaluate,
                               key_by_annotation_names, read_predictions_csv, write_evaluation_report)
from busdet.evaluation.gallery import PANEL_GAP, select_cases, side_by_side
from busdet.evaluation.matching import at_threshold, match_all, match_image
from busdet.evaluation.metrics import roc_auc
from busdet.evaluation.plots import confusion_counts
from busdet.images import write_image
from busdet.tables import PREDICTION_COLUMNS, SEED_PREDICTION_COLUMNS, predictions_frame
from tools import evaluate as evaluate_cli

AP_KEYS = ["AP50_benign", "AP50_malignant", "mAP50", "AP50_lesion", "mAP50_95"]

TRUTH = {
    "benign_1.png": [Box(10, 10, 40, 30, "benign")],
    "benign_2.png": [Box(50, 20, 90, 60, "benign"), Box(5, 5, 20, 20, "benign")],
    "malignant_1.png": [Box(30, 30, 70, 80, "malignant")],
    "malignant_2.png": [Box(0, 0, 25, 25, "malignant")],
    "normal_1.png": [],
    "normal_2.png": [],
}
LABELS = {name: name.split("_")[0] for name in TRUTH}


def scored(box: Box, score: float, label: str | None = None, dx: float = 0.0) -> Box:
    """``box`` as a prediction: shifted right by ``dx``, optionally relabelled."""
    return Box(box.xmin + dx, box.ymin, box.xmax + dx, box.ymax, label or box.label, score)


def perfect_predictions() -> dict:
    return {name: [scored(b, 0.9) for b in boxes] for name, boxes in TRUTH.items()}


def test_perfect_predictions_score_one_everywhere():
    metrics = evaluate(TRUTH, LABELS, perfect_predictions())
    for key in [*AP_KEYS, "AUC_malignant_image", "lesion_recall", "lesion_precision",
                "malignant_sensitivity", "malignant_specificity"]:
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["normal_with_box_rate"] == 0.0
    assert (metrics["images"], metrics["lesions"], metrics["normal_images"]) == (6, 5, 2)
    assert (metrics["lesions_benign"], metrics["lesions_malignant"]) == (3, 2)


def test_box_shifted_below_iou_half_is_a_miss():
    truth = {"a.png": [Box(0, 0, 10, 10, "benign")]}
    shifted = {"a.png": [scored(truth["a.png"][0], 0.9, dx=5)]}  # IoU 50/150 = 1/3
    metrics = evaluate(truth, {"a.png": "benign"}, shifted)
    assert metrics["lesion_recall"] == 0.0 and metrics["lesion_precision"] == 0.0
    assert metrics["AP50_benign"] == 0.0 and metrics["AP50_lesion"] == 0.0
    assert metrics["AP50_malignant"] is None  # no malignant truth


def test_iou_of_exactly_half_is_a_match():
    truth = Box(0, 0, 10, 10, "benign")
    [match] = match_image("a.png", [truth], [Box(0, 0, 10, 20, "benign", 0.9)])  # IoU 100/200
    assert match.is_hit and match.iou == pytest.approx(0.5)


def test_wrong_class_hurts_class_ap_but_not_lesion_ap():
    predictions = perfect_predictions()
    predictions["benign_1.png"] = [scored(TRUTH["benign_1.png"][0], 0.8, label="malignant")]
    metrics = evaluate(TRUTH, LABELS, predictions)
    assert metrics["AP50_benign"] < 1.0
    assert metrics["AP50_lesion"] == pytest.approx(1.0)
    assert metrics["lesion_recall"] == 1.0 and metrics["matched_class_accuracy"] == pytest.approx(0.8)
    assert metrics["malignant_specificity"] == pytest.approx(3 / 4)  # benign_1 is now called malignant


def test_boxes_on_normal_images_count_against_precision():
    truth = {"lesion.png": [Box(10, 10, 30, 30, "benign")], "normal_1.png": [], "normal_2.png": []}
    labels = {"lesion.png": "benign", "normal_1.png": "normal", "normal_2.png": "normal"}
    predictions = {"lesion.png": [scored(truth["lesion.png"][0], 0.7)],
                   "normal_1.png": [Box(0, 0, 10, 10, "benign", 0.8)],
                   "normal_2.png": [Box(0, 0, 10, 10, "benign", 0.3)]}
    metrics = evaluate(truth, labels, predictions, score_threshold=0.5)
    assert metrics["normal_with_box_rate"] == 0.5
    assert metrics["lesion_precision"] == 0.5 and metrics["lesion_recall"] == 1.0
    # The false box outranks the true one: precision 1/2 at every recall -> AP 0.5.
    assert metrics["AP50_lesion"] == pytest.approx(0.5) and metrics["AP50_benign"] == pytest.approx(0.5)


def test_malignancy_auc_of_a_known_ranking():
    box = Box(0, 0, 10, 10, "malignant")
    truth = {"m1.png": [box], "m2.png": [box], "b1.png": [box.with_label("benign")], "n1.png": []}
    labels = {"m1.png": "malignant", "m2.png": "malignant", "b1.png": "benign", "n1.png": "normal"}
    # malignant 0.9 and 0.4 vs other 0.6 and 0 (no box): 3 of 4 pairs ordered right.
    predictions = {"m1.png": [scored(box, 0.9)], "m2.png": [scored(box, 0.4)],
                   "b1.png": [scored(box, 0.6), scored(box, 0.95, label="benign")]}
    metrics = evaluate(truth, labels, predictions, score_threshold=0.5)
    assert metrics["AUC_malignant_image"] == pytest.approx(0.75)
    assert metrics["malignant_sensitivity"] == 0.5 and metrics["malignant_specificity"] == 0.5


def test_roc_auc_edge_cases():
    assert roc_auc([0.5, 0.5], [0.5]) == pytest.approx(0.5)
    assert roc_auc([0.2], [0.1, 0.3]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([0.2], []))


def test_roc_auc_agrees_with_pairwise_counting():
    rng = np.random.default_rng(3)
    positive, negative = rng.integers(0, 10, 40) / 10, rng.integers(0, 10, 60) / 10  # many ties
    pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    assert roc_auc(positive, negative) == pytest.approx(pairs.mean())


def test_class_without_truth_is_null_and_said_in_report(tmp_path):
    truth = {"a.png": [Box(0, 0, 10, 10, "benign")], "n.png": []}
    predictions = {"a.png": [scored(truth["a.png"][0], 0.9)], "n.png": [Box(0, 0, 5, 5, "malignant", 0.2)]}
    result = compute_evaluation(truth, {"a.png": "benign", "n.png": "normal"}, predictions)
    metrics = result.metrics
    assert metrics["AP50_malignant"] is None and metrics["classes_without_truth"] == ["malignant"]
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["AUC_malignant_image"] is None  # no malignant image
    write_evaluation_report(result, truth, predictions, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["AP50_malignant"] is None
    report = (tmp_path / "report.md").read_text()
    assert "| `AP50_malignant` | n/a |" in report and "no true box of class malignant" in report


def test_empty_predictions_evaluate_to_zero():
    metrics = evaluate(TRUTH, LABELS, {})
    assert all(metrics[key] == 0.0 for key in AP_KEYS)
    assert metrics["lesion_precision"] is None and metrics["lesion_recall"] == 0.0


def test_predictions_for_unknown_images_are_refused():
    with pytest.raises(EvaluationInputError, match="2 image.*stranger_1.png, stranger_2.png"):
        evaluate(TRUTH, LABELS, {"stranger_1.png": [], "stranger_2.png": []})


def test_matching_at_a_threshold_equals_matching_thresholded_predictions():
    predictions = {name: [scored(b, s, dx=d) for b in boxes for s, d in [(0.9, 3), (0.6, 0), (0.2, 0)]]
                   for name, boxes in TRUTH.items()}
    full = match_all(TRUTH, predictions)
    for threshold in [0.1, 0.5, 0.7, 0.95]:
        kept = {n: [b for b in boxes if b.score >= threshold] for n, boxes in predictions.items()}
        assert sorted(map(repr, at_threshold(full, threshold))) == sorted(map(repr, match_all(TRUTH, kept)))


def test_operating_threshold_keeps_the_target_recall():
    truth = {f"{i}.png": [Box(0, 0, 10, 10, "benign")] for i in range(10)}
    labels = {name: "benign" for name in truth}
    predictions = {f"{i}.png": [Box(0, 0, 10, 10, "benign", 0.95 - 0.05 * i)] for i in range(10)}
    threshold = choose_operating_threshold(truth, predictions, target_recall=0.9)
    assert threshold == pytest.approx(0.55)  # the 9th best of ten hits
    assert evaluate(truth, labels, predictions, threshold)["lesion_recall"] == pytest.approx(0.9)
    assert evaluate(truth, labels, predictions, threshold + 1e-3)["lesion_recall"] < 0.9
    predictions.pop("0.png")
    assert choose_operating_threshold(truth, predictions, target_recall=1.0) is None


def test_confusion_counts_and_gallery_cases():
    predictions = {"benign_1.png": [scored(TRUTH["benign_1.png"][0], 0.8, label="malignant")],
                   "benign_2.png": [scored(TRUTH["benign_2.png"][0], 0.9, dx=8)],  # IoU 1280/1920
                   "normal_1.png": [Box(0, 0, 10, 10, "benign", 0.7)]}
    matches = at_threshold(match_all(TRUTH, predictions), 0.5)
    counts, rows, columns = confusion_counts(matches, ["benign", "malignant"])
    assert rows == ["benign", "malignant", "false box"] and columns == ["benign", "malignant", "missed"]
    assert counts.tolist() == [[1, 1, 1], [0, 0, 2], [1, 0, 0]]
    cases = {(c.kind, c.filename) for c in select_cases(matches)}
    assert cases == {("missed", "benign_2.png"), ("missed", "malignant_1.png"), ("missed", "malignant_2.png"),
                     ("false_box", "normal_1.png"), ("wrong_class", "benign_1.png"),
                     ("worst_iou", "benign_2.png")}
    worst = [c for c in select_cases(matches) if c.kind == "worst_iou"][0]
    assert worst.filename == "benign_2.png" and "IoU 0.67" in worst.reason


def test_side_by_side_is_two_panels():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    panel = side_by_side(image, [Box(5, 5, 20, 20, "benign")], [])
    assert panel.shape == (40, 2 * 60 + 8, 3) and panel.dtype == np.uint8
    assert image.max() == 0  # input untouched


def test_predictions_csv_round_trip_and_empty_files(tmp_path):
    boxes = [Box(1, 2, 11, 22, "benign", 0.75), Box(3, 4, 8, 9, "malignant", 0.5)]
    path = tmp_path / "predictions.csv"
    predictions_frame("a.png", boxes).to_csv(path, index=False)
    assert read_predictions_csv(path) == {"a.png": boxes}
    path.write_text(",".join(PREDICTION_COLUMNS) + "\n")
    assert read_predictions_csv(path) == {}
    path.write_text("")  # a 0-byte file is not "no boxes": it is a file that was never written (issue 11)
    with pytest.raises(EvaluationInputError, match="file is empty"):
        read_predictions_csv(path)
    path.write_text("filename,score\n")
    with pytest.raises(EvaluationInputError, match="missing column"):
        read_predictions_csv(path)



def test_relative_prediction_paths_take_the_annotation_names():
    boxes = [Box(0, 0, 5, 5, "benign", 0.5)]
    renamed = key_by_annotation_names(TRUTH, {"benign/benign_1.png": boxes, "normal_1.png": [], "x/other.png": []})
    assert renamed == {"benign_1.png": boxes, "normal_1.png": [], "x/other.png": []}
    with pytest.raises(EvaluationInputError, match="benign_1.png .a/benign_1.png and b/benign_1.png"):
        key_by_annotation_names(TRUTH, {"a/benign_1.png": [], "b/benign_1.png": []})

# --- the command line ---------------------------------------------------------------------------

def write_annotations(path, truth, labels) -> None:
    rows = [[name, *box_to_pixel_xywh(b), b.label] for name, boxes in truth.items() for b in boxes]
    rows += [[name, None, None, None, None, labels[name]] for name, boxes in truth.items() if not boxes]
    frame = pd.DataFrame(rows, columns=["filename", "xmin", "ymin", "width", "height", "label"])
    frame.astype({c: "Int64" for c in ["xmin", "ymin", "width", "height"]}).to_csv(path, index=False)


def write_predictions(path, predictions) -> None:
    frames = [predictions_frame(name, boxes) for name, boxes in predictions.items()]
    pd.concat(frames).to_csv(path, index=False)


def run_cli(*argv) -> int:
    return evaluate_cli.main(evaluate_cli.get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture
def csv_pair(tmp_path):
    predictions = perfect_predictions()
    predictions["benign_2.png"] = [scored(TRUTH["benign_2.png"][0], 0.8)]  # one lesion missed
    predictions["normal_1.png"] = [Box(60, 60, 90, 90, "malignant", 0.7)]  # a false box
    predictions["malignant_1.png"] = [scored(TRUTH["malignant_1.png"][0], 0.6, label="benign")]
    predictions["malignant_2.png"] = []  # missed
    predictions["benign/benign_1.png"] = predictions.pop("benign_1.png")  # as predict.py --recursive names it
    write_annotations(tmp_path / "annotations.csv", TRUTH, LABELS)
    write_predictions(tmp_path / "predictions.csv", predictions)
    return tmp_path / "annotations.csv", tmp_path / "predictions.csv"


def test_cli_writes_metrics_plots_report_and_gallery(tmp_path, csv_pair, caplog):
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name, label in LABELS.items():
        if name != "malignant_2.png":  # left missing on purpose
            write_image(images / label / name, rng.integers(0, 255, (100, 120, 3), dtype=np.uint8))
    output = tmp_path / "report"
    annotations, predictions = csv_pair
    status = run_cli("--annotations", annotations, "--predictions", predictions, "--output", output,
                     "--images", images, "--threshold", "0.5")
    assert status == 1  # written, but one gallery image is missing
    assert "malignant_2.png: not found" in caplog.text
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["lesion_recall"] == pytest.approx(3 / 5) and metrics["normal_with_box_rate"] == 0.5
    assert metrics["score_threshold"] == 0.5 and metrics["images"] == 6
    for name in ["pr_curves.png", "roc_malignant_image.png", "confusion_matrix.png", "score_histograms.png"]:
        assert (output / name).stat().st_size > 1000, name
    gallery = sorted(p.name for p in (output / "gallery").iterdir())
    # missed_01 would be malignant_2.png (a missed cancer ranks first) but its image is missing.
    assert "missed_02_benign_2.png" in gallery and "false_box_01_normal_1.png" in gallery
    assert any(name.startswith("wrong_class_") for name in gallery)
    assert not any("malignant_2" in name for name in gallery)
    report = (output / "report.md").read_text()
    assert "![Precision-recall" in report and "(gallery/missed_02_benign_2.png)" in report
    assert "missed benign lesion" in report and "`lesion_recall`" in report
    assert "malignant_2.png: not found" in report  # listed as left out
    assert not list(output.rglob("*.tmp"))


def test_cli_reads_the_seeds_seven_columns_and_todays_ten_alike(tmp_path, csv_pair):
    """predictions.csv from before issue 13 (seven columns) and after it (frame, width_mm,
    height_mm appended) give the same metrics."""
    annotations, predictions = csv_pair
    today = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    assert list(today.columns) == PREDICTION_COLUMNS
    today["width_mm"] = today["width"].where(today["width"] == "", "1.5")  # sizes present in some rows
    today.to_csv(tmp_path / "today.csv", index=False)
    today[SEED_PREDICTION_COLUMNS].to_csv(tmp_path / "seed.csv", index=False)
    for name in ["seed", "today"]:
        assert run_cli("--annotations", annotations, "--predictions", tmp_path / f"{name}.csv",
                       "--output", tmp_path / name, "--threshold", "0.5") == 0
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ["seed", "today"]]
    different = {k for k in metrics[0] if metrics[0][k] != metrics[1][k] and k != "sources"}
    assert not different and metrics[0]["lesion_recall"] == pytest.approx(3 / 5)


def test_cli_refuses_predictions_of_other_images(tmp_path, csv_pair, capsys):
    annotations, _ = csv_pair
    strangers = {f"other_{i}.png": [Box(0, 0, 5, 5, "benign", 0.5)] for i in range(7)}
    write_predictions(tmp_path / "other.csv", strangers)
    status = run_cli("--annotations", annotations, "--predictions", tmp_path / "other.csv",
                     "--output", tmp_path / "report")
    assert status == 2
    error = capsys.readouterr().err
    assert "7 image(s) not in the annotations" in error and "other_0.png" in error and "2 more" in error
    assert not (tmp_path / "report").exists()


def test_cli_without_images_and_with_empty_predictions(tmp_path, csv_pair):
    annotations, _ = csv_pair
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(PREDICTION_COLUMNS) + "\n")
    assert run_cli("--annotations", annotations, "--predictions", empty, "--output", tmp_path / "r") == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["AP50_lesion"] == 0.0
    assert "No gallery" in (tmp_path / "r" / "report.md").read_text()
    assert not (tmp_path / "r" / "gallery").exists()


# --- hostile rows (issue 11, case 1): refused with file, line and reason, never used or dropped ---

BAD_PREDICTION_ROWS = {
    "NaN score": ("benign_1.png,10,10,30,20,benign,NaN", "line 2: score 'NaN' is not a finite number"),
    "negative width": ("benign_1.png,10,10,-30,20,benign,0.9", "line 2: width -30 and height 20 must both be above 0"),
    "empty width": ("benign_1.png,10,10,,20,benign,0.9", "line 2: width empty (give all four box fields"),
    "NaN xmin": ("benign_1.png,NaN,10,30,20,benign,0.9", "line 2: xmin 'NaN' is not a finite number"),
    "score above 1": ("benign_1.png,10,10,30,20,benign,1.5", "line 2: score 1.5 is not between 0 and 1"),
    "text score": ("benign_1.png,10,10,30,20,benign,high", "line 2: score 'high' is not a number"),
    "no score": ("benign_1.png,10,10,30,20,benign,", "line 2: score empty (every box needs one)"),
    "negative xmin": ("benign_1.png,-10,10,30,20,benign,0.9", "line 2: xmin -10 and ymin 10 must both be 0 or more"),
    "far corner overflows": ("benign_1.png,1e308,10,1e308,20,benign,0.9",
                             "line 2: the box's far corner is beyond any number"),
    "a cell too many": ("benign_1.png,10,10,30,20,benign,0.9,", "not a CSV table (line 2: 12 cells, but the header "
                                                                "has 11)"),  # pandas shifted every column by one
}


@pytest.mark.parametrize("case", BAD_PREDICTION_ROWS, ids=list(BAD_PREDICTION_ROWS))
def test_cli_refuses_a_bad_prediction_row_in_one_line(tmp_path, csv_pair, capsys, case):
    row, reason = BAD_PREDICTION_ROWS[case]
    annotations, predictions = csv_pair
    bad = tmp_path / "bad.csv"
    padded = row + "," * (len(PREDICTION_COLUMNS) - len(SEED_PREDICTION_COLUMNS))  # a cell for every column
    rows = predictions.read_text().splitlines()[1:]
    bad.write_text(",".join(PREDICTION_COLUMNS) + "\n" + padded + "\n" + "\n".join(rows))
    status = run_cli("--annotations", annotations, "--predictions", bad, "--output", tmp_path / "report")
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {bad}: {reason}") and error.count("\n") == 1
    assert not (tmp_path / "report").exists()


def test_cli_refuses_an_empty_predictions_file(tmp_path, csv_pair, capsys):
    """A 0-byte file is a file that was never written, not an image set without boxes (case 7)."""
    annotations, _ = csv_pair
    (tmp_path / "zero.csv").write_bytes(b"")
    assert run_cli("--annotations", annotations, "--predictions", tmp_path / "zero.csv",
                   "--output", tmp_path / "report") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'zero.csv'}: file is empty (expected the header "
                                       f"{','.join(SEED_PREDICTION_COLUMNS)})\n")


def test_cli_refuses_a_bad_annotation_row_too(tmp_path, csv_pair, capsys):
    annotations, predictions = csv_pair
    text = annotations.read_text().splitlines()
    annotations.write_text("\n".join([text[0], "benign_1.png,10,10,30,,benign", *text[1:]]) + "\n")
    assert run_cli("--annotations", annotations, "--predictions", predictions, "--output", tmp_path / "report") == 2
    assert capsys.readouterr().err.startswith(f"error: {annotations}: line 2: height empty")


def test_cli_threshold_defaults_to_the_models_operating_point(tmp_path, csv_pair):
    from busdet.inference import DEFAULT_SCORE_THRESHOLD, write_model_info

    annotations, predictions = csv_pair
    write_model_info(tmp_path / "model", {"score_threshold": 0.65})
    run_cli("--annotations", annotations, "--predictions", predictions, "--output", tmp_path / "a",
            "--model", tmp_path / "model")
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["score_threshold"] == 0.65
    run_cli("--annotations", annotations, "--predictions", predictions, "--output", tmp_path / "b",
            "--model", tmp_path / "no_model")
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["score_threshold"] == DEFAULT_SCORE_THRESHOLD


def test_cli_refuses_an_unwritable_report_folder_before_reading(tmp_path, csv_pair, capsys, unwritable_folder):
    annotations, predictions = csv_pair
    assert run_cli("--annotations", annotations, "--predictions", predictions,
                   "--output", unwritable_folder / "report") == 2
    assert capsys.readouterr().err.startswith(f"error: {unwritable_folder / 'report'}: cannot write there")


# --- hostile inputs, third round (issue 20): evaluate's files, label map and report folder ---------

def evaluate_files(tmp_path, annotations: str, predictions: str, *extra, labels: str | None = None) -> int:
    """tools/evaluate.py on two CSV texts written as given (bytes for encodings), into tmp_path/report."""
    paths = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in (("annotations.csv", annotations), ("predictions.csv", predictions)):
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        paths.append(path)
    if labels is not None:
        (tmp_path / "labels.pbtxt").write_text(labels)
        extra = (*extra, "--label", tmp_path / "labels.pbtxt")
    return run_cli("--annotations", paths[0], "--predictions", paths[1], "--output", tmp_path / "report",
                   "--model", tmp_path / "no_model", *extra)


ANNOTATIONS = ("filename,xmin,ymin,width,height,label\n"
               "b1.png,10,10,30,20,benign\nm1.png,40,40,20,20,malignant\nn1.png,,,,,normal\n")
PREDICTIONS = ("filename,xmin,ymin,width,height,label,score\n"
               "b1.png,10,10,30,20,benign,0.9\nm1.png,40,40,20,20,malignant,0.8\nn1.png,1,1,5,5,benign,0.3\n")


def one_error(capsys) -> str:
    """The one stderr line of a refused run (no traceback, nothing else)."""
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: "), error
    return error[len("error: "):].rstrip("\n")


@pytest.mark.parametrize("which, text, reason", [
    ("annotations", ANNOTATIONS + "b1.png,10,10,30,20,benign\n", "annotations.csv: line 5: the same box as line 2"),
    ("annotations", ANNOTATIONS + "b1.png,10,10,30,20,malignant\n", "annotations.csv: line 5: the same box as line 2"),
    ("predictions", PREDICTIONS + "b1.png,10,10,30,20,benign,0.9\n", "predictions.csv: line 5: the same box as line 2"),
    ("annotations", ANNOTATIONS + "n1.png,5,5,5,5,benign\n",
     "annotations.csv: line 4: n1.png is listed without lesions here and with 1 on other lines"),
    ("annotations", "filename,xmin,ymin,width,height,label\n", "annotations.csv: no rows under the header"),
    ("annotations", ANNOTATIONS.replace("n1.png,,,,,normal", "n1.png,,,,,Normal"),
     "annotations.csv: image label(s) Normal of rows without a box are neither in the label map (benign, malignant) "
     "nor normal"),
    ("annotations", ANNOTATIONS.replace("b1.png,10,10,30,20,benign", "b1.png,10,10,30,20,cyst"),
     "annotations.csv: label(s) cyst not in the label map (benign, malignant)"),
    ("predictions", PREDICTIONS.replace("n1.png,1,1,5,5,benign", "n1.png,1,1,5,5,cyst"),
     "predictions.csv: label(s) cyst not in the label map (benign, malignant)"),
], ids=["annotation twice", "one lesion two classes", "prediction twice", "negative and lesion", "header only",
        "odd image label", "annotation label", "prediction label"])
def test_inputs_that_would_change_the_metrics_are_refused_naming_the_file(tmp_path, capsys, which, text, reason):
    files = {"annotations": ANNOTATIONS, "predictions": PREDICTIONS, which: text}
    assert evaluate_files(tmp_path, files["annotations"], files["predictions"]) == 2
    assert one_error(capsys).startswith(f"{tmp_path / reason}")
    assert not (tmp_path / "report").exists()


def test_a_prediction_box_of_two_frames_or_two_classes_is_not_a_repeat(tmp_path):
    """A cine loop's rows (frame column) and a box scored for both classes are not rows listed twice."""
    frames = ("filename,xmin,ymin,width,height,label,score,frame\n"
              "m1.png,40,40,20,20,malignant,0.8,1\nm1.png,40,40,20,20,malignant,0.8,2\n"
              "b1.png,10,10,30,20,benign,0.9,\nb1.png,10,10,30,20,malignant,0.2,\n")
    assert evaluate_files(tmp_path, ANNOTATIONS + "n2.png,,,,,normal\nn2.png,,,,,normal\n", frames) == 0


@pytest.mark.parametrize("encode", [lambda t: b"\xef\xbb\xbf" + t.encode(), lambda t: t.encode("utf-16"),
                                    lambda t: t.replace("\n", "\r\n").encode(),
                                    lambda t: t.replace("\n", "\r").encode()],
                         ids=["UTF-8 BOM", "UTF-16", "CRLF", "CR"])
def test_csvs_saved_by_windows_tools_evaluate_as_the_plain_ones(tmp_path, encode):
    """UTF-16 (Excel's "Unicode text") ended in "'utf-8' codec can't encode characters ...", naming no file."""
    assert evaluate_files(tmp_path / "plain", ANNOTATIONS, PREDICTIONS) == 0
    assert evaluate_files(tmp_path / "saved", encode(ANNOTATIONS), encode(PREDICTIONS)) == 0
    metrics = [json.loads((tmp_path / name / "report" / "metrics.json").read_text()) for name in ("plain", "saved")]
    assert metrics[0] == metrics[1] and metrics[0]["lesions"] == 2


def test_names_in_another_encoding_are_named_as_such(tmp_path, capsys):
    """An annotation CSV saved as Latin-1 names café.png by other bytes than predict.py's UTF-8 file."""
    latin1 = "filename,xmin,ymin,width,height,label\ncafé.png,10,10,30,20,benign\n".encode("latin-1")
    assert evaluate_files(tmp_path, latin1, "filename,xmin,ymin,width,height,label,score\n"
                                            "café.png,10,10,30,20,benign,0.9\n") == 2
    assert one_error(capsys) == (f"{tmp_path / 'predictions.csv'}: 1 image(s) not in the annotations: café.png (the "
                                 "annotations hold 1 of these names in another encoding: save both files as UTF-8)")


def test_a_folder_or_a_missing_file_given_as_a_csv_is_one_line(tmp_path, capsys):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "predictions.csv").write_text(PREDICTIONS)
    for given, reason in ((tmp_path / "folder.csv", "a folder, not a file"), (tmp_path / "none.csv", "file not found")):
        assert run_cli("--annotations", given, "--predictions", tmp_path / "predictions.csv",
                       "--output", tmp_path / "report") == 2
        assert one_error(capsys) == f"{given}: {reason}"


def test_a_label_map_other_than_benign_and_malignant_is_evaluated_by_its_own_names(tmp_path, capsys):
    labels = 'item { id: 1 name: "cyst" }\nitem { id: 2 name: "carcinoma" }\n'
    assert evaluate_files(tmp_path / "a", ANNOTATIONS, PREDICTIONS, labels=labels) == 2
    assert one_error(capsys).endswith("annotations.csv: label(s) benign, malignant not in the label map "
                                      "(cyst, carcinoma)")
    renamed = {"benign": "cyst", "malignant": "carcinoma"}
    annotations, predictions = ANNOTATIONS, PREDICTIONS
    for old, new in renamed.items():
        annotations, predictions = annotations.replace(old, new), predictions.replace(old, new)
    assert evaluate_files(tmp_path / "b", annotations, predictions, labels=labels) == 0
    metrics = json.loads((tmp_path / "b" / "report" / "metrics.json").read_text())
    assert metrics["AP50_cyst"] == metrics["AP50_carcinoma"] == 1.0 and metrics["AUC_malignant_image"] is None


def test_a_bad_label_map_is_one_line_naming_it(tmp_path, capsys):
    assert evaluate_files(tmp_path, ANNOTATIONS, PREDICTIONS, labels='item { id: 0 name: "benign" }') == 2
    assert one_error(capsys) == f"{tmp_path / 'labels.pbtxt'}: id 0 of 'benign' must be >= 1 (0 is background)"
    (tmp_path / "labels.pbtxt").unlink()
    assert run_cli("--annotations", tmp_path / "annotations.csv", "--predictions", tmp_path / "predictions.csv",
                   "--output", tmp_path / "report", "--label", tmp_path / "labels.pbtxt") == 2
    assert one_error(capsys) == f"{tmp_path / 'labels.pbtxt'}: label map not found (expected a label_map.pbtxt)"


def test_a_report_folder_that_would_replace_an_input_is_refused_before_any_work(tmp_path, capsys):
    """--output holding inputs named like the report's files: report.md used to be overwritten."""
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text(ANNOTATIONS)
    (report / "metrics.json").write_text(PREDICTIONS)
    assert run_cli("--annotations", report / "report.md", "--predictions", report / "metrics.json",
                   "--output", report) == 2
    assert one_error(capsys) == (f"--output {report}: the report's report.md would replace the input "
                                 f"{report / 'report.md'}; choose another folder")
    assert (report / "report.md").read_text() == ANNOTATIONS and sorted(os.listdir(report)) == ["metrics.json",
                                                                                                "report.md"]
    assert evaluate_files(tmp_path, ANNOTATIONS, PREDICTIONS, "--output", tmp_path) == 0  # beside inputs: fine
    assert (tmp_path / "annotations.csv").read_text() == ANNOTATIONS


def test_a_report_folder_in_the_images_or_images_in_its_gallery_is_refused(tmp_path, capsys):
    images = tmp_path / "images"
    for name in ("b1.png", "m1.png", "n1.png"):
        write_image(images / name, np.full((80, 90, 3), 90, np.uint8))
    assert evaluate_files(tmp_path, ANNOTATIONS, PREDICTIONS, "--images", images, "--output", images / "report") == 2
    assert "inside --images" in one_error(capsys) and sorted(os.listdir(images)) == ["b1.png", "m1.png", "n1.png"]
    gallery = tmp_path / "out" / "gallery"
    write_image(gallery / "b1.png", np.full((80, 90, 3), 90, np.uint8))
    assert evaluate_files(tmp_path, ANNOTATIONS, PREDICTIONS, "--images", gallery, "--output", tmp_path / "out") == 2
    assert "inside the report's" in one_error(capsys) and os.listdir(gallery) == ["b1.png"]


def test_boxes_beyond_the_image_are_drawn_at_its_border_and_the_report_is_written(tmp_path):
    """Far-off boxes made OpenCV raise inside the gallery: a traceback, and no report.md."""
    images = tmp_path / "images"
    for name in ("b1.png", "m1.png", "n1.png"):
        write_image(images / name, np.full((80, 90, 3), 90, np.uint8))
    far = ANNOTATIONS.replace("m1.png,40,40,20,20", "m1.png,1e12,40,20,20")
    predictions = PREDICTIONS.replace("n1.png,1,1,5,5", "n1.png,1,1e15,5,5")
    assert evaluate_files(tmp_path, far, predictions, "--images", images, "--threshold", "0.2") == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert "missed_01_m1.png" in os.listdir(tmp_path / "report" / "gallery")
    drawn = side_by_side(np.zeros((40, 50, 3), np.uint8), [Box(1e300, 5, 2e300, 10, "benign")],
                         [Box(-1e300, -1e300, 1e300, 1e300, "malignant", 0.5)])
    assert drawn.shape == (40, 100 + PANEL_GAP, 3)


def test_the_gallery_takes_an_image_whose_name_is_as_long_as_the_file_system_allows(tmp_path):
    """A missed lesion's panel is named "missed_01_NAME.png": with a 250-byte NAME that passed the
    255 bytes a file name may have, and the report ended in a traceback."""
    name = "benign_" + "7" * 240 + ".png"
    box = Box(10, 10, 40, 30, "benign")
    write_image(tmp_path / "images" / "benign" / name, np.full((60, 80, 3), 90, np.uint8))
    write_annotations(tmp_path / "annotations.csv", {name: [box]}, {name: "benign"})
    write_predictions(tmp_path / "predictions.csv", {name: []})
    status = run_cli("--annotations", tmp_path / "annotations.csv", "--predictions", tmp_path / "predictions.csv",
                     "--output", tmp_path / "report", "--images", tmp_path / "images", "--threshold", "0.5")
    assert status == 0
    gallery = [p.name for p in (tmp_path / "report" / "gallery").iterdir()]
    assert len(gallery) == 1 and gallery[0].startswith("missed_01_benign_777") and len(gallery[0]) <= 160
    assert gallery[0] in (tmp_path / "report" / "report.md").read_text()
