"""Take-away bytes of the page: annotated PNG, CSV, JSON and the batch ZIP (busdet.downloads, busdet.tables)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from busdet.boxes import Box
from busdet.downloads import annotated_png, image_downloads, predictions_json, results_zip
from busdet.files import safe_stem
from busdet.images import decode_image
from busdet.results import ImageResult, finding_line
from busdet.tables import IMAGE_COLUMNS, PREDICTION_COLUMNS, boxes_table, images_csv, predictions_csv, summary_table


def make_result(name="scan.png", boxes=(), shape=(40, 60)) -> ImageResult:
    return ImageResult(name, shape[1], shape[0], tuple(boxes), score_threshold=0.5, seconds=0.25)


def pixels(result: ImageResult) -> np.ndarray:
    """The uniform gray image every ``make_result`` stands for."""
    return np.full((result.height, result.width, 3), 30, dtype=np.uint8)


MALIGNANT = Box(10, 5, 30, 25, "malignant", 0.91234)
BENIGN = Box(2, 2, 8, 9, "benign", 0.6)


@pytest.mark.parametrize("name, stem", [
    ("scan.png", "scan"),
    ("../../etc/passwd.png", "passwd"),
    ("C:\\data\\case 1.PNG", "case_1"),
    ("**x**<script>.png", "__x___script_"),
    (".png", "png"),
    ("", "image"),
])
def test_safe_stem_keeps_a_safe_file_name(name, stem):
    assert safe_stem(name) == stem


def test_annotated_png_is_a_full_resolution_png_with_boxes_drawn():
    result = make_result(boxes=[MALIGNANT])
    image = pixels(result)
    drawn = decode_image(annotated_png(result, image), "annotated.png")
    assert drawn.shape == image.shape
    assert not np.array_equal(drawn, image)
    assert np.array_equal(image, np.full_like(image, 30)), "input must not change"


def test_predictions_csv_has_the_cli_columns_and_integer_geometry():
    frame = pd.read_csv(io.BytesIO(predictions_csv([make_result(boxes=[BENIGN, MALIGNANT])])))
    assert list(frame.columns) == PREDICTION_COLUMNS
    assert frame.iloc[0].tolist()[:7] == ["scan.png", 10, 5, 20, 20, "malignant", 0.9123]
    assert frame.iloc[1].tolist()[:7] == ["scan.png", 2, 2, 6, 7, "benign", 0.6]
    # A single image without calibration, not checked: frame, sizes and in_distribution are empty cells.
    assert predictions_csv([make_result(boxes=[BENIGN])]).decode().splitlines()[1] == "scan.png,2,2,6,7,benign,0.6,,,,"


def test_predictions_csv_without_boxes_has_the_header_only():
    text = predictions_csv([make_result(), ImageResult("bad.png", error="bad.png: broken")]).decode()
    assert text.strip() == ",".join(PREDICTION_COLUMNS)


def test_predictions_json_records_finding_threshold_and_boxes():
    records = json.loads(predictions_json([make_result(boxes=[BENIGN, MALIGNANT])]))
    assert records == [{
        "filename": "scan.png", "width": 60, "height": 40, "frames": None, "key_frame": None, "score_threshold": 0.5,
        "finding": "suspicious for malignancy", "finding_score": 0.9123, "inference_seconds": 0.25,
        "error": None,
        "boxes": [{"xmin": 2, "ymin": 2, "width": 6, "height": 7, "label": "benign", "score": 0.6,
                   "frame": None, "width_mm": None, "height_mm": None},
                  {"xmin": 10, "ymin": 5, "width": 20, "height": 20, "label": "malignant", "score": 0.9123,
                   "frame": None, "width_mm": None, "height_mm": None}],
    }]


def test_summary_table_accounts_for_every_file_including_unreadable_ones():
    results = [make_result("a.png", [BENIGN]), ImageResult("b.png", error="b.png: not a recognised image format"),
               make_result("c.png")]
    table = summary_table(results)
    assert table["filename"].tolist() == ["a.png", "b.png", "c.png"]
    assert table["status"].tolist() == ["ok", "error", "ok"]
    assert table["finding"].tolist() == ["benign-appearing lesion", "", "no lesion above the threshold"]
    assert table.loc[1, "error"] == "b.png: not a recognised image format"
    assert list(pd.read_csv(io.BytesIO(images_csv(results))).columns) == IMAGE_COLUMNS


def test_results_zip_holds_tables_and_one_png_per_readable_image():
    results = [make_result("scan.png", [MALIGNANT]), make_result("dir/scan.png"),
               ImageResult("broken.png", error="broken.png: file is empty")]
    images = [pixels(r) if r.ok else None for r in results]
    archive = zipfile.ZipFile(io.BytesIO(results_zip(results, images)))
    assert sorted(archive.namelist()) == [
        "annotated/scan_2_annotated.png", "annotated/scan_annotated.png",
        "images.csv", "predictions.csv", "predictions.json"]
    assert archive.read("predictions.csv") == predictions_csv(results)
    assert len(json.loads(archive.read("predictions.json"))) == 3
    assert decode_image(archive.read("annotated/scan_annotated.png")).shape == (40, 60, 3)
    assert results_zip(results, images) == results_zip(results, images), "the archive must not record the time"


def test_finding_line_gives_the_sentence_and_its_score():
    assert finding_line([BENIGN, MALIGNANT]) == "suspicious for malignancy (0.91)"
    assert finding_line([BENIGN]) == "benign-appearing lesion (0.60)"
    assert finding_line([]) == "no lesion above the threshold"


def test_boxes_table_lists_label_and_score_first():
    table = boxes_table(make_result(boxes=[BENIGN, MALIGNANT]))
    assert list(table.columns) == ["label", "score", "xmin", "ymin", "width", "height", "width_mm", "height_mm"]
    assert table["label"].tolist() == ["malignant", "benign"]


def test_image_downloads_build_the_three_files_on_demand():
    result = make_result("../case 7.png", [MALIGNANT])
    files = {label: (name, mime, build) for label, name, mime, build in image_downloads(result, pixels(result))}
    assert {label: name for label, (name, _, _) in files.items()} == {
        "Annotated PNG": "case_7_annotated.png", "Boxes CSV": "case_7_predictions.csv",
        "Boxes JSON": "case_7_predictions.json"}
    assert files["Annotated PNG"][2]() == annotated_png(result, pixels(result))
    assert files["Boxes CSV"][2]() == predictions_csv([result])
    assert json.loads(files["Boxes JSON"][2]())[0]["filename"] == "../case 7.png"


def test_long_upload_names_give_download_names_a_file_system_takes():
    """A browser sends a name as long as the user's system allows (255 bytes on Linux, more elsewhere); the
    suffixes made "NAME_annotated.png" and the ZIP's members longer than the 255 bytes unzip can write."""
    long_names = ["a" * 250 + "_0001.png", "a" * 250 + "_0002.png", "é" * 240 + ".png"]
    results = [make_result(name, [MALIGNANT]) for name in long_names]
    names = [name for r in results for _, name, _, _ in image_downloads(r, pixels(r))]
    members = zipfile.ZipFile(io.BytesIO(results_zip(results, [pixels(r) for r in results]))).namelist()
    assert max(len(name.split("/")[-1].encode()) for name in names + members) <= 160
    assert names[0] != names[3], "names differing at their end stay apart"
    assert names[0].endswith("aaa_0001_annotated.png") and names[0].startswith("aaa")
    assert safe_stem("case 7.png") == "case_7", "short names are kept whole"
