"""predict.py and busdet.batch: outputs, CSV geometry, bad input, output safety, exit statuses.

Most tests run a fake :class:`Detector` (the real dataclass with a ``predict``
callable returning known boxes), so the geometry is exact and no model loads.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import predict
from busdet import batch, images
from busdet.boxes import box_to_pixel_xywh, boxes_to_normalized_yxyx
from busdet.drawing import CLASS_COLOURS
from busdet.inference import Detector
from busdet.phantoms import generate_phantom
from busdet.tables import IMAGE_COLUMNS, PREDICTION_COLUMNS, SEED_PREDICTION_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {1: "benign", 2: "malignant"}
CLASS_IDS = {name: class_id for class_id, name in CLASSES.items()}
# One malignant box over columns 20..99 and rows 25..74 of a 200 x 100 image, and
# one benign box whose score is under the fake detector's operating point (0.5).
KNOWN_BOXES = np.array([[0.25, 0.1, 0.75, 0.5], [0.0, 0.0, 0.5, 0.5]], dtype=np.float32)
KNOWN_CLASSES = [2, 1]
KNOWN_SCORES = [0.9, 0.3]


def outputs(boxes_yxyx, classes, scores) -> dict:
    """The SavedModel signature's output dict for one image."""
    count = len(scores)
    return {"detection_boxes": np.asarray(boxes_yxyx, dtype=np.float32).reshape(1, count, 4),
            "detection_classes": np.asarray([classes], dtype=np.float32).reshape(1, count),
            "detection_scores": np.asarray([scores], dtype=np.float32).reshape(1, count),
            "num_detections": np.array([count], dtype=np.float32)}


def fake_detector(answer=None, interrupt_on_call=None, fail_on_call=None) -> Detector:
    """A Detector whose ``predict`` returns ``answer(image)`` (default: the known boxes).

    ``calls`` records the shape and dtype of every input tensor.
    """
    calls = []

    def fake_predict(tensor):
        calls.append((tuple(tensor.shape), tensor.dtype.name))
        if len(calls) == interrupt_on_call:
            raise KeyboardInterrupt
        if len(calls) == fail_on_call:
            raise RuntimeError("fake model failure")
        if answer is not None:
            return answer(tensor[0])
        return outputs(KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES)

    detector = Detector(predict=fake_predict, classes=CLASSES, input_size=(640, 640), score_threshold=0.5,
                        model_dir=Path("fake_model"), info={})
    detector.calls = calls
    return detector


FLAT_RAMP_WARNING = ("this image does not look like the breast ultrasound the model was trained on (94% of it flat, "
                     "as a page of text, a screenshot or a drawing): its boxes are not to be trusted")


def gray_ramp(width=200, height=100) -> np.ndarray:
    """RGB uint8 [H, W, 3] with no colour in it, so any box colour found was drawn."""
    ramp = np.linspace(30, 220, width, dtype=np.uint8)
    return np.repeat(np.tile(ramp, (height, 1))[..., None], 3, axis=2)


def save(path: Path, image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **options)
    return path


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG that announces ``width x height`` 8-bit gray pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def run_cli(monkeypatch, detector, *argv) -> int:
    monkeypatch.setattr(predict, "load_detector", lambda model, label_map, runtime: detector)
    return predict.main(predict.get_args_parser().parse_args(list(map(str, argv))))


def read_tables(output: Path):
    return pd.read_csv(output / "predictions.csv"), pd.read_csv(output / "images.csv", keep_default_na=False)


def folder_hashes(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def colour_near(pixel, colour, tolerance=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(colour)) <= tolerance))


# --- geometry ---------------------------------------------------------------


def test_csv_rows_are_exact_pixels_above_threshold(tmp_path, monkeypatch):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert list(predictions.columns) == PREDICTION_COLUMNS
    assert predictions[SEED_PREDICTION_COLUMNS].values.tolist() == [["scan.png", 20, 25, 80, 50, "malignant", 0.9]]
    assert list(image_table.columns) == IMAGE_COLUMNS
    # A smooth ramp is no ultrasound: the flat-area test flags it, and both tables say so.
    assert image_table.values.tolist() == [["scan.png", 200, 100, 1, "malignant", 0.9, "ok", "", "", "", False, "",
                                            FLAT_RAMP_WARNING]]
    assert predictions["in_distribution"].tolist() == [False]
    # A single PNG: no frame, no calibration, so the columns DICOM adds stay empty.
    assert predictions[["frame", "width_mm", "height_mm"]].isna().all().all()
    annotated = images.read_image(tmp_path / "out" / "scan.png")
    assert annotated.shape == (100, 200, 3)  # original resolution, not the model's
    assert colour_near(annotated[50, 20], CLASS_COLOURS["malignant"], tolerance=10)  # left edge of the box
    assert not colour_near(annotated[90, 190], CLASS_COLOURS["benign"])  # the 0.3 box is not drawn


def test_phantom_truth_comes_back_as_mask_to_bbox_rows(tmp_path, monkeypatch):
    """A detector that answers the phantoms' true boxes must reproduce them in the CSV exactly."""
    phantoms = [generate_phantom(seed, label, width=240 + 20 * seed, height=200)
                for seed, label in enumerate(["benign", "malignant", "normal", "malignant"])]
    truth_by_size = {p.image.shape[:2]: p.boxes for p in phantoms}
    for index, phantom in enumerate(phantoms):
        save(tmp_path / "in" / f"{phantom.label} ({index}).png", phantom.image)

    def answer(image):
        height, width = image.shape[:2]
        truth = truth_by_size[(height, width)]
        return outputs(boxes_to_normalized_yxyx(truth, width, height),
                       [CLASS_IDS[b.label] for b in truth], [0.8] * len(truth))

    assert run_cli(monkeypatch, fake_detector(answer), "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    predictions, image_table = read_tables(tmp_path / "out")
    expected = [[f"{p.label} ({i}).png", *box_to_pixel_xywh(b), b.label, 0.8]
                for i, p in enumerate(phantoms) for b in p.boxes]
    assert sorted(predictions[SEED_PREDICTION_COLUMNS].values.tolist()) == sorted(expected)
    assert image_table["status"].tolist() == ["ok"] * 4
    assert image_table.loc[image_table["filename"] == "normal (2).png", "boxes"].item() == 0
    for index, phantom in enumerate(phantoms):
        written = images.read_image(tmp_path / "out" / f"{phantom.label} ({index}).png")
        assert written.shape == phantom.image.shape


def test_image_without_boxes_is_written_and_marked(tmp_path, monkeypatch):
    source = save(tmp_path / "in" / "clear.png", gray_ramp())
    nothing = fake_detector(lambda image: outputs(np.zeros((0, 4)), [], []))
    assert run_cli(monkeypatch, nothing, "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert predictions.empty and list(predictions.columns) == PREDICTION_COLUMNS
    assert image_table.values.tolist() == [["clear.png", 200, 100, 0, "", "", "ok", "", "", "", False, "",
                                            FLAT_RAMP_WARNING]]
    written = images.read_image(tmp_path / "out" / "clear.png")
    assert written.shape == (100, 200, 3)
    assert not np.array_equal(written, images.read_image(source))  # the "no lesion" mark


def test_threshold_defaults_to_the_models_operating_point(tmp_path, monkeypatch):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "a") == 0
    assert len(read_tables(tmp_path / "a")[0]) == 1  # detector.score_threshold = 0.5
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "b",
                   "--threshold", "0.25") == 0
    assert read_tables(tmp_path / "b")[0]["score"].tolist() == [0.9, 0.3]


# --- image kinds and bad input -----------------------------------------------


def _mode_images():
    rgb = gray_ramp()
    return {
        "gray.png": Image.fromarray(rgb[..., 0], "L"),
        "sixteen.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "scan.tif": Image.fromarray(rgb),
        "scan.bmp": Image.fromarray(rgb),
    }


@pytest.mark.parametrize("name", list(_mode_images()))
def test_image_kinds_come_out_right(tmp_path, monkeypatch, name):
    save(tmp_path / "in" / name, _mode_images()[name])
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    assert detector.calls == [((1, 100, 200, 3), "uint8")]
    predictions, image_table = read_tables(tmp_path / "out")
    assert predictions[SEED_PREDICTION_COLUMNS].values.tolist() == [[name, 20, 25, 80, 50, "malignant", 0.9]]
    assert image_table["status"].tolist() == ["ok"]
    written = images.read_image(tmp_path / "out" / name)
    assert written.shape == (100, 200, 3)
    assert colour_near(written[50, 20], CLASS_COLOURS["malignant"], tolerance=10)


def test_exif_rotated_jpeg_boxes_land_on_displayed_pixels(tmp_path, monkeypatch):
    """Stored 200 x 100 with orientation 6 (rotate 90 degrees clockwise): shown 100 wide, 200 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    save(tmp_path / "in" / "rotated.jpg", gray_ramp(), exif=exif.tobytes(), quality=95)
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    assert detector.calls == [((1, 200, 100, 3), "uint8")]
    predictions, image_table = read_tables(tmp_path / "out")
    # Normalized [0.25, 0.1, 0.75, 0.5] of the displayed 100 x 200 image.
    assert predictions[SEED_PREDICTION_COLUMNS].values.tolist() == [["rotated.jpg", 10, 50, 40, 100, "malignant", 0.9]]
    assert image_table[["width", "height"]].values.tolist() == [[100, 200]]
    written = images.read_image(tmp_path / "out" / "rotated.jpg")
    assert written.shape == (200, 100, 3)
    assert colour_near(written[100, 10], CLASS_COLOURS["malignant"])  # JPEG: approximate colour


def _write_bad_inputs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(gray_ramp()).save(good, format="PNG")
    (folder / "good.png").write_bytes(good.getvalue())
    (folder / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    (folder / "bomb.png").write_bytes(png_header_claiming(100_000, 100_000))
    (folder / "notes.txt").write_text("a note, not an image\n")


def test_bad_files_get_error_rows_and_the_rest_is_done(tmp_path, monkeypatch, caplog):
    _write_bad_inputs(tmp_path / "in")
    status = run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert status == 1
    predictions, image_table = read_tables(tmp_path / "out")
    assert predictions["filename"].tolist() == ["good.png"]
    rows = image_table.set_index("filename")
    assert sorted(rows.index) == ["bomb.png", "empty.png", "good.png", "text.jpg", "truncated.png"]
    assert rows.loc["good.png", "status"] == "ok"
    errors = rows[rows["status"] == "error"]
    assert len(errors) == 4 and (errors["width"] == "").all()
    assert "larger than" in rows.loc["bomb.png", "error"]
    assert "empty" in rows.loc["empty.png", "error"]
    assert "not a recognised image" in rows.loc["text.jpg", "error"]
    assert rows.loc["truncated.png", "error"]
    for name in errors.index:  # one stderr line naming each file, with the reason
        assert any(name in message and rows.loc[name, "error"] in message for message in caplog.messages)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["good.png", "images.csv", "predictions.csv", "run.json"]


def test_a_strip_too_thin_for_the_model_gets_its_reason_and_is_never_run(tmp_path, monkeypatch, caplog):
    save(tmp_path / "in" / "a_good.png", gray_ramp())
    save(tmp_path / "in" / "strip.png", np.full((1, 5000), 90, np.uint8))
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    rows = read_tables(tmp_path / "out")[1].set_index("filename")
    assert rows.loc["a_good.png", "status"] == "ok"
    reason = ("image is 5000x1 px: too elongated for the model, whose 640x640 input would shrink it to under "
              "1 px across; crop it to the scan")
    assert rows.loc["strip.png", "status"] == "error" and rows.loc["strip.png", "error"] == reason
    assert any(message.endswith(f"strip.png: {reason}") for message in caplog.messages)
    assert len(detector.calls) == 1  # the strip never reached the model


@pytest.mark.parametrize("height, width, refused", [
    (1, 640, False), (640, 1, False), (2, 1280, False), (1, 1279, True), (1, 1280, True), (3000, 4, True),
    (1, 1, False), (5000, 5000, False)])
def test_shape_problem_is_an_image_under_one_pixel_across_once_fitted_to_the_input(height, width, refused):
    from busdet.inference import find_shape_problem

    problem = find_shape_problem(height, width, (640, 640))
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"image is {width}x{height} px: too elongated")


def test_decompression_bomb_past_the_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5_000)  # Pillow errors at twice the limit
    save(tmp_path / "in" / "big.png", gray_ramp())  # 20,000 pixels
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    assert "larger than" in read_tables(tmp_path / "out")[1].loc[0, "error"]


def test_model_failure_on_one_image_does_not_stop_the_folder(tmp_path, monkeypatch):
    for name in ["a.png", "b.png", "c.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run_cli(monkeypatch, fake_detector(fail_on_call=2), "--input", tmp_path / "in",
                   "--output", tmp_path / "out") == 1
    image_table = read_tables(tmp_path / "out")[1]
    assert image_table["status"].tolist() == ["ok", "error", "ok"]
    assert "fake model failure" in image_table.loc[1, "error"]


# --- input safety, output safety, interruption -----------------------------


def test_input_folder_is_byte_identical_after_the_run(tmp_path, monkeypatch):
    _write_bad_inputs(tmp_path / "in")
    save(tmp_path / "in" / "sub" / "deeper.png", gray_ramp())
    (tmp_path / "in" / ".hidden.png").write_bytes(b"hidden")
    before = folder_hashes(tmp_path / "in")
    run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out", "--recursive")
    assert folder_hashes(tmp_path / "in") == before


@pytest.mark.parametrize("output", [".", "inside", "inside/deeper"])
def test_refuses_output_inside_input(tmp_path, monkeypatch, capsys, output):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    before = folder_hashes(tmp_path / "in")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in",
                   "--output", tmp_path / "in" / output) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert folder_hashes(tmp_path / "in") == before


def test_never_overwrites_without_overwrite(tmp_path, monkeypatch, capsys):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    args = ["--input", tmp_path / "in", "--output", tmp_path / "out"]
    assert run_cli(monkeypatch, fake_detector(), *args) == 0
    first = folder_hashes(tmp_path / "out")
    capsys.readouterr()
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, *args) == 2
    assert f"{tmp_path / 'out' / 'predictions.csv'}: exists" in capsys.readouterr().err
    assert detector.calls == [] and folder_hashes(tmp_path / "out") == first
    (tmp_path / "out" / "predictions.csv").unlink()
    (tmp_path / "out" / "images.csv").unlink()
    assert run_cli(monkeypatch, fake_detector(), *args) == 2  # the annotated copy alone also stops it
    assert f"{tmp_path / 'out' / 'scan.png'}: exists" in capsys.readouterr().err
    assert run_cli(monkeypatch, fake_detector(), *args, "--overwrite") == 0
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_interrupt_keeps_the_rows_of_finished_images(tmp_path, monkeypatch):
    for name in ["a.png", "b.png", "c.png", "d.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run_cli(monkeypatch, fake_detector(interrupt_on_call=3), "--input", tmp_path / "in",
                   "--output", tmp_path / "out") == 130
    predictions, image_table = read_tables(tmp_path / "out")
    assert image_table["filename"].tolist() == ["a.png", "b.png"]
    assert predictions["filename"].tolist() == ["a.png", "b.png"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]


def test_tables_hold_the_finished_images_while_the_run_goes_on(tmp_path, monkeypatch):
    """A hard kill (no Ctrl-C handler runs) must not lose the rows already computed."""
    monkeypatch.setattr(batch, "TABLE_SAVE_SECONDS", 0.0)
    # More images than annotated copies allowed to wait for their write: by the last
    # images, some are surely finished, whatever the speed of the disk.
    names = [f"{letter}.png" for letter in "abcdefgh"]
    assert len(names) > batch.MAX_PENDING_WRITES + 2
    for name in names:
        save(tmp_path / "in" / name, gray_ramp())
    seen_mid_run = []

    def answer(image):
        if (tmp_path / "out" / "images.csv").exists():
            seen_mid_run.append(read_tables(tmp_path / "out")[1]["filename"].tolist())
        return outputs(KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES)

    assert run_cli(monkeypatch, fake_detector(answer), "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    assert any(seen_mid_run), "no finished image was in the tables before the end"
    # Every table seen mid-run is a complete CSV of finished images in input order, never a
    # half-written file; the image the model is on is never in it yet.
    assert all(seen == sorted(set(seen)) and set(seen) <= set(names[:-1]) for seen in seen_mid_run)
    assert read_tables(tmp_path / "out")[1]["filename"].tolist() == names
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_recursive_mirrors_subfolders_and_ignores_hidden(tmp_path, monkeypatch):
    for relative in ["top.png", "left/a.png", "left/deeper/b.jpg", ".hidden/c.png", "left/.d.png"]:
        save(tmp_path / "in" / relative, gray_ramp())
    (tmp_path / "in" / "left" / "readme.md").write_text("notes")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--recursive") == 0
    image_table = read_tables(tmp_path / "out")[1]
    assert image_table["filename"].tolist() == ["top.png", "left/a.png", "left/deeper/b.jpg"]
    for relative in ["top.png", "left/a.png", "left/deeper/b.jpg"]:
        assert (tmp_path / "out" / relative).is_file()
    assert not (tmp_path / "out" / ".hidden").exists()

    plan = batch.plan_batch(tmp_path / "in", tmp_path / "flat")
    assert plan.images == [Path("top.png")] and plan.unsearched_folders == 1
    recursive = batch.plan_batch(tmp_path / "in", tmp_path / "flat", recursive=True)
    assert recursive.skipped == [Path("left/readme.md")]


# --- exit status 2: nothing done ---------------------------------------------


def test_missing_model_or_label_map_stops_before_any_work(tmp_path, capsys, label_map_path):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    parser = predict.get_args_parser()
    common = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert predict.main(parser.parse_args(common + ["--model", str(tmp_path / "nowhere"),
                                                    "--label", str(label_map_path)])) == 2
    assert "nowhere: no SavedModel here" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    assert predict.main(parser.parse_args(common + ["--model", str(tmp_path / "model"),
                                                    "--label", str(tmp_path / "none.pbtxt")])) == 2
    assert "none.pbtxt: label map not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_input_size_must_match_width_and_height(tmp_path, monkeypatch, capsys):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    detector = fake_detector()
    detector.input_size = (384, 384)
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 2
    assert "exported for 384x384" in capsys.readouterr().err
    assert detector.calls == [] and not (tmp_path / "out").exists()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--width", "384", "--height", "384") == 0


def test_bad_arguments_exit_2(tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "missing", "--output", tmp_path / "out") == 2
    assert "missing: folder not found; expected a folder of images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        predict.get_args_parser().parse_args(["--threshold", "1.5"])
    assert exit_info.value.code == 2


def test_defaults_are_the_seeds_command_and_help_explains_the_statuses():
    args = predict.get_args_parser().parse_args([])
    assert (args.input, args.output, args.width, args.height) == (Path("input"), Path("output"), 640, 640)
    # The shipped model beside predict.py, wherever it is run from; input and output stay where the user is.
    assert (args.model, args.label_map) == (ROOT / "saved_model", ROOT / "label_map.pbtxt")
    assert args.score_threshold is None and not args.recursive and not args.overwrite
    help_text = predict.get_args_parser().format_help()
    for status in ["0 ", "1 ", "2 ", "130"]:
        assert f"\n  {status}" in help_text


def test_run_from_another_folder_finds_the_shipped_model(tmp_path):
    """``python /path/to/predict.py --input in --output out`` in a folder of one's own: the model and label map
    are the ones beside predict.py, the folders are the working folder's (ONNX Runtime: no TensorFlow to load)."""
    import subprocess
    import sys

    save(tmp_path / "in" / "scan.png", generate_phantom(0, "malignant", width=256, height=192).image)
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", "in", "--output", "out",
                           "--runtime", "onnx"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"({ROOT / 'saved_model' / 'model.onnx'})" in done.stderr
    assert read_tables(tmp_path / "out")[1]["status"].tolist() == ["ok"]
    assert (tmp_path / "out" / "scan.png").is_file()


def summary_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("median inference"))


def test_the_rate_counts_only_images_with_a_result_and_none_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    for name in ["a.png", "b.png"]:
        (tmp_path / "in" / name).write_text("not an image")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    assert summary_line(capsys.readouterr().err).startswith(
        "median inference -/image; no images/s figure: no image gave a result (2 failed in ")
    save(tmp_path / "in" / "c.png", gray_ramp())
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--overwrite") == 1
    line = summary_line(capsys.readouterr().err)
    assert " images/s overall (1 with a result in " in line and line.endswith("; the 2 failed not counted)")


# --- the real model ----------------------------------------------------------


def run_real_model(tmp_path, smoke_model, label_map_path) -> int:
    """predict.py with the smoke SavedModel on tmp_path/in -> tmp_path/out, every box kept."""
    from busdet.inference import read_model_info

    height, width = read_model_info(smoke_model)["input_size"]
    args = predict.get_args_parser().parse_args([
        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(smoke_model),
        "--label", str(label_map_path), "--width", str(width), "--height", str(height), "--threshold", "0"])
    return predict.main(args)


@pytest.mark.slow
def test_real_model_on_phantoms(tmp_path, smoke_model, label_map_path):
    for seed, label in enumerate(["benign", "malignant", "normal"]):
        save(tmp_path / "in" / f"{label}.png", generate_phantom(seed, label, width=300 + 100 * seed).image)
    assert run_real_model(tmp_path, smoke_model, label_map_path) == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert image_table["status"].tolist() == ["ok"] * 3
    assert len(predictions) > 0 and set(predictions["label"]) <= {"benign", "malignant"}
    for row in image_table.itertuples():
        assert images.read_image(tmp_path / "out" / row.filename).shape == (row.height, row.width, 3)
        mine = predictions[predictions["filename"] == row.filename]
        assert len(mine) == row.boxes
        assert ((mine["xmin"] >= 0) & (mine["xmin"] + mine["width"] <= row.width)).all()
        assert ((mine["ymin"] >= 0) & (mine["ymin"] + mine["height"] <= row.height)).all()


@pytest.mark.slow
def test_real_model_on_a_calibrated_cine_loop(tmp_path, smoke_model, label_map_path):
    """The SavedModel on a JPEG loop with a region: rows per frame, inside the region, mm = px x 0.1."""
    from pydicom.uid import JPEGBaseline8Bit

    from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, write_dicom

    frames, _ = moving_lesion_frames(count=6)
    write_dicom(tmp_path / "in" / "loop.dcm", phantom_dicom(frames, "YBR_FULL_422", JPEGBaseline8Bit,
                                                            region=(16, 8, 304, 232), cm_per_pixel=0.01))
    assert run_real_model(tmp_path, smoke_model, label_map_path) == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert image_table[["frames", "status"]].values.tolist() == [[6, "ok"]]
    assert len(predictions) == image_table["boxes"].item() > 0
    assert set(predictions["frame"]) <= set(range(1, 7))
    assert ((predictions["xmin"] >= 16) & (predictions["xmin"] + predictions["width"] <= 304)).all()
    assert ((predictions["ymin"] >= 8) & (predictions["ymin"] + predictions["height"] <= 232)).all()
    assert (predictions["width_mm"] == (predictions["width"] * 0.1).round(1)).all()
    assert (predictions["height_mm"] == (predictions["height"] * 0.1).round(1)).all()
    assert video_frame_count(tmp_path / "out" / "loop.dcm.mp4") == 6


# --- the page and the CLI agree (issue 11) -------------------------------------


def test_page_and_cli_write_byte_identical_tables(tmp_path, monkeypatch):
    """The page's images.csv and predictions.csv (its ZIP) equal predict.py's for the same files."""
    import zipfile

    import streamlit as st

    import app
    from busdet.downloads import results_zip

    st.cache_data.clear()  # the page's caches live in this process: start from nothing
    _write_bad_inputs(tmp_path / "in")
    save(tmp_path / "in" / "second.png", gray_ramp(120, 90))
    assert run_cli(monkeypatch, fake_detector(fail_on_call=2), "--input", tmp_path / "in",
                   "--output", tmp_path / "out") == 1
    uploads = [(p.name, p.read_bytes()) for p in sorted((tmp_path / "in").iterdir()) if images.is_image_file(p)]
    detector = fake_detector(fail_on_call=2)
    analysed = [app.analyse(detector, name, data, hashlib.sha256(data).hexdigest(), detector.score_threshold)
                for name, data in uploads]
    archive = zipfile.ZipFile(io.BytesIO(results_zip(*zip(*analysed))))
    for table in ["images.csv", "predictions.csv"]:
        assert archive.read(table) == (tmp_path / "out" / table).read_bytes(), table
    statuses = read_tables(tmp_path / "out")[1].set_index("filename")["status"]
    assert statuses.to_dict() == {"bomb.png": "error", "empty.png": "error", "good.png": "ok",
                                  "second.png": "error", "text.jpg": "error", "truncated.png": "error"}


# --- hostile input (issue 11): one line, the documented status, no traceback ------------


def fake_model_dir(folder: Path, classes: dict) -> Path:
    """A folder that passes load_detector's checks up to TensorFlow (they come first)."""
    from busdet.inference import write_model_info

    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    write_model_info(folder, {"input_size": [640, 640], "classes": {str(k): v for k, v in classes.items()}})
    return folder


@pytest.mark.parametrize("items", ['item { id: 1 name: "benign" }',
                                   'item { id: 1 name: "malignant" } item { id: 2 name: "benign" }'],
                         ids=["id 2 missing", "ids swapped"])
def test_label_map_other_than_the_models_is_refused_without_a_traceback(tmp_path, items):
    """Run as a user runs it: a separate process, stderr as the user sees it (case 2)."""
    import subprocess
    import sys

    save(tmp_path / "in" / "scan.png", gray_ramp())
    model = fake_model_dir(tmp_path / "model", CLASSES)
    (tmp_path / "labels.pbtxt").write_text(items)
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), "--model", str(model),
                           "--label", str(tmp_path / "labels.pbtxt")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {tmp_path / 'labels.pbtxt'}: classes ") and done.stderr.count("\n") == 1
    assert "differ from the model's {1 benign, 2 malignant}" in done.stderr
    assert not (tmp_path / "out").exists()


def test_read_only_output_folder_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, unwritable_folder):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    loads = []
    monkeypatch.setattr(predict, "load_detector", lambda *args: loads.append(args) or fake_detector())
    for output in (unwritable_folder, unwritable_folder / "new"):
        args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(output)])
        assert predict.main(args) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {output}: cannot write there (") and error.count("\n") == 1
        assert error.endswith("); choose another --output\n")
    assert loads == [] and list(unwritable_folder.iterdir()) == []


def test_damaged_model_info_is_one_line_and_exit_2(tmp_path, capsys, label_map_path):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    model = fake_model_dir(tmp_path / "model", CLASSES)
    (model / "model_info.json").write_text('{"input_size": [640, 64')  # cut short
    args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                                 "--model", str(model), "--label", str(label_map_path)])
    assert predict.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {model / 'model_info.json'}: damaged (") and error.count("\n") == 1


@pytest.mark.slow
def test_truncated_weights_are_one_line_and_exit_2(tmp_path, label_map_path):
    """The shipped model with half of its weights cut off, run as a user would (case 5)."""
    import shutil
    import subprocess
    import sys

    save(tmp_path / "in" / "scan.png", gray_ramp())
    model = tmp_path / "damaged"
    shutil.copytree(ROOT / "saved_model", model)
    weights = next((model / "variables").glob("variables.data-*"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), "--model", str(model),
                           "--label", str(label_map_path)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: {model}: cannot load the SavedModel's serving_default (IndexError" in done.stderr


def multi_page_tiff(path: Path, pages: int) -> Path:
    frames = [Image.fromarray(gray_ramp()) for _ in range(pages)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def test_multi_page_tiff_is_named_not_cut_to_its_first_page(tmp_path, monkeypatch, caplog):
    (tmp_path / "in").mkdir()
    multi_page_tiff(tmp_path / "in" / "cine.tif", 3)
    save(tmp_path / "in" / "single.tif", gray_ramp())
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    rows = read_tables(tmp_path / "out")[1].set_index("filename")
    assert rows.loc["single.tif", "status"] == "ok" and rows.loc["cine.tif", "status"] == "error"
    assert rows.loc["cine.tif", "error"].startswith("holds 3 pages (multi-page TIFF)")
    assert any("cine.tif: holds 3 pages" in message for message in caplog.messages)
    assert len(detector.calls) == 1 and not (tmp_path / "out" / "cine.tif").exists()


def test_other_files_are_named_with_the_reason(tmp_path, monkeypatch, caplog, capsys):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    (tmp_path / "in" / "frame.dcm").write_bytes(b"DICM")  # a DICOM name, not a DICOM file: an error row
    (tmp_path / "in" / "notes.txt").write_text("notes")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    assert f"{tmp_path / 'in' / 'frame.dcm'}: not a DICOM file (no DICM preamble)" in caplog.messages
    assert any(m.startswith(f"{tmp_path / 'in' / 'notes.txt'}: passed over: not an image file (png, jpg")
               for m in caplog.messages)
    assert "1 other files passed over" in capsys.readouterr().err


def test_recursive_follows_linked_folders_and_names_a_loop(tmp_path, monkeypatch, caplog):
    save(tmp_path / "elsewhere" / "linked.png", gray_ramp())
    save(tmp_path / "in" / "top.png", gray_ramp())
    (tmp_path / "in" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a loop
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--recursive") == 0
    assert read_tables(tmp_path / "out")[1]["filename"].tolist() == ["top.png", "link/linked.png"]
    assert (tmp_path / "out" / "link" / "linked.png").is_file()
    assert f"{tmp_path / 'in' / 'link' / 'back'}: passed over: a folder already read through another link; " \
           "not read twice" in caplog.messages


def test_ctrl_c_while_the_model_loads_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    from busdet.cli import run_command

    save(tmp_path / "in" / "scan.png", gray_ramp())

    def interrupted_load(model, label_map, runtime):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "load_detector", interrupted_load)
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert run_command(predict.main, predict.get_args_parser(), argv) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert not (tmp_path / "out").exists()


# --- DICOM and cine loops (issue 13) ----------------------------------------------


def dicom_image(seed=0, width=200, height=150) -> np.ndarray:
    return generate_phantom(seed, "benign", width=width, height=height).image


def truth_answer(boxes_per_call, scores_per_call, labels_per_call=None):
    """A fake model that answers, call by call, the given pixel boxes (of the image it gets)."""
    calls = iter(range(len(boxes_per_call)))

    def answer(image):
        index = next(calls)
        height, width = image.shape[:2]
        labels = (labels_per_call or [["malignant"] * len(b) for b in boxes_per_call])[index]
        return outputs(boxes_to_normalized_yxyx(boxes_per_call[index], width, height),
                       [CLASS_IDS[label] for label in labels], scores_per_call[index])
    return answer


def write_mixed_dicom_folder(folder: Path):
    """A PNG, DICOM files of each kind the issue names, a cine loop and two bad DICOM files."""
    from pydicom.uid import JPEGBaseline8Bit, RLELossless

    from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, report_dicom, write_dicom

    save(folder / "a_scan.png", gray_ramp())
    write_dicom(folder / "b_plain.dcm", phantom_dicom(dicom_image()))
    write_dicom(folder / "c_jpeg.dcm", phantom_dicom(dicom_image(1), "YBR_FULL_422", JPEGBaseline8Bit))
    write_dicom(folder / "d_rle.dcm", phantom_dicom(dicom_image(2), "RGB", RLELossless))
    write_dicom(folder / "e_mono1.dcm", phantom_dicom(dicom_image(3), "MONOCHROME1"))
    write_dicom(folder / "IM000006", phantom_dicom(dicom_image(4)))  # no extension: found by its preamble
    frames, _ = moving_lesion_frames(count=12)
    write_dicom(folder / "g_loop.dcm", phantom_dicom(frames, "YBR_FULL_422", JPEGBaseline8Bit))
    write_dicom(folder / "h_report.dcm", report_dicom())
    data = (folder / "b_plain.dcm").read_bytes()
    (folder / "i_truncated.dcm").write_bytes(data[: len(data) // 2])


def video_frame_count(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def test_a_folder_of_png_and_dicom_gets_copies_loops_and_both_tables(tmp_path, monkeypatch, caplog):
    write_mixed_dicom_folder(tmp_path / "in")
    before = folder_hashes(tmp_path / "in")
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    predictions, image_table = read_tables(tmp_path / "out")
    rows = image_table.set_index("filename")
    assert rows["status"].to_dict() == {
        "IM000006": "ok", "a_scan.png": "ok", "b_plain.dcm": "ok", "c_jpeg.dcm": "ok", "d_rle.dcm": "ok",
        "e_mono1.dcm": "ok", "g_loop.dcm": "ok", "h_report.dcm": "error", "i_truncated.dcm": "error"}
    assert rows.loc["h_report.dcm", "error"].startswith("DICOM without pixel data")
    assert rows.loc["i_truncated.dcm", "error"].startswith("DICOM pixel data holds ")  # fewer bytes than declared
    assert "(a file cut short, or a wrong header)" in rows.loc["i_truncated.dcm", "error"]
    assert any(m.startswith(f"{tmp_path / 'in' / 'i_truncated.dcm'}: DICOM pixel data") for m in caplog.messages)
    # images.csv is read as text here (empty cells stay ""): one row per file, its frames and key frame
    assert rows.loc["g_loop.dcm", ["frames", "key_frame", "boxes"]].astype(str).tolist() == ["12", "1", "12"]
    assert rows.loc["b_plain.dcm", ["frames", "key_frame", "boxes"]].astype(str).tolist() == ["", "", "1"]
    assert len(detector.calls) == 6 + 12
    loop = predictions[predictions["filename"] == "g_loop.dcm"]
    assert loop["frame"].tolist() == list(range(1, 13))
    assert predictions[predictions["filename"] != "g_loop.dcm"]["frame"].isna().all()
    for name in ["IM000006", "b_plain.dcm", "c_jpeg.dcm", "d_rle.dcm", "e_mono1.dcm", "g_loop.dcm"]:
        assert images.read_image(tmp_path / "out" / f"{name}.png").shape == (150, 200, 3) or name == "g_loop.dcm"
    assert images.read_image(tmp_path / "out" / "g_loop.dcm.png").shape == (240, 320, 3)
    assert video_frame_count(tmp_path / "out" / "g_loop.dcm.mp4") == 12
    assert not (tmp_path / "out" / "b_plain.dcm.mp4").exists() and not (tmp_path / "out" / "h_report.dcm.png").exists()
    assert folder_hashes(tmp_path / "in") == before, "inputs are never modified"


def test_region_is_what_the_model_sees_and_boxes_come_back_in_frame_pixels_with_mm(tmp_path, monkeypatch):
    from busdet.boxes import Box
    from busdet.dicom_phantoms import phantom_dicom, write_dicom

    image = dicom_image(5, width=320, height=240)
    write_dicom(tmp_path / "in" / "calibrated.dcm", phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01))
    write_dicom(tmp_path / "in" / "uncalibrated.dcm", phantom_dicom(image))
    in_crop = Box(10, 20, 90, 70, "malignant")  # 80 x 50 px of the region
    detector = fake_detector(truth_answer([[in_crop], [in_crop]], [[0.9], [0.9]]))
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    assert [shape for shape, _ in detector.calls] == [(1, 190, 260, 3), (1, 240, 320, 3)]
    predictions = read_tables(tmp_path / "out")[0].set_index("filename")
    calibrated = predictions.loc["calibrated.dcm"]
    assert calibrated[["xmin", "ymin", "width", "height"]].tolist() == [50, 50, 80, 50]
    assert calibrated[["width_mm", "height_mm"]].tolist() == pytest.approx([80 * 0.1, 50 * 0.1])
    uncalibrated = predictions.loc["uncalibrated.dcm"]
    assert uncalibrated[["xmin", "ymin", "width", "height"]].tolist() == [10, 20, 80, 50]
    assert uncalibrated[["width_mm", "height_mm"]].isna().all()
    text = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert text[0] == "filename,xmin,ymin,width,height,label,score,frame,width_mm,height_mm,in_distribution"
    assert "calibrated.dcm,50,50,80,50,malignant,0.9,,8.0,5.0,True" in text
    assert "uncalibrated.dcm,10,20,80,50,malignant,0.9,,,,True" in text


def loop_answer(truth):
    """A model that finds the moving lesion in every frame, most sure (malignant) in frame 7."""
    scores = [[0.6 + 0.04 * min(i, 12 - i)] for i in range(len(truth))]
    labels = [["malignant" if i == 6 else "benign"] for i in range(len(truth))]
    return truth_answer([[box] for box in truth], scores, labels)


def test_cine_loop_rows_follow_the_moving_lesion_and_name_the_key_frame(tmp_path, monkeypatch):
    from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, write_dicom

    frames, truth = moving_lesion_frames(count=12, step=4)
    write_dicom(tmp_path / "in" / "loop.dcm", phantom_dicom(frames))
    assert run_cli(monkeypatch, fake_detector(loop_answer(truth)), "--input", tmp_path / "in",
                   "--output", tmp_path / "out") == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert predictions["frame"].tolist() == list(range(1, 13))
    assert predictions["xmin"].tolist() == [int(b.xmin) for b in truth]  # moves 4 px a frame
    assert image_table[["frames", "key_frame", "boxes", "top_label"]].values.tolist() == [[12, 7, 12, "malignant"]]
    key_png = images.read_image(tmp_path / "out" / "loop.dcm.png")
    box = truth[6]
    assert colour_near(key_png[int(box.ymin + box.ymax) // 2, int(box.xmin)], CLASS_COLOURS["malignant"], 10)
    assert video_frame_count(tmp_path / "out" / "loop.dcm.mp4") == 12


@pytest.mark.parametrize("choice, frames_written, calls", [("key", [7], 12), ("3", [1, 4, 7, 10], 4)])
def test_frames_option_picks_the_key_frame_or_every_nth(tmp_path, monkeypatch, choice, frames_written, calls):
    from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, write_dicom

    frames, truth = moving_lesion_frames(count=12, step=4)
    write_dicom(tmp_path / "in" / "loop.dcm", phantom_dicom(frames))
    run = [truth[i - 1] for i in range(1, 13, 3)] if choice == "3" else truth
    answer = loop_answer(truth) if choice == "key" else truth_answer([[b] for b in run], [[0.8]] * len(run))
    detector = fake_detector(answer)
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--frames", choice) == 0
    predictions, image_table = read_tables(tmp_path / "out")
    assert predictions["frame"].tolist() == frames_written and len(detector.calls) == calls
    assert image_table["frames"].tolist() == [12]
    assert video_frame_count(tmp_path / "out" / "loop.dcm.mp4") == calls


def test_frames_option_refuses_other_values(capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.get_args_parser().parse_args(["--frames", "0"])
    assert exit_.value.code == 2 and "'0' is not all, key or a whole number >= 1" in capsys.readouterr().err


def test_recursive_finds_dicom_in_subfolders_and_extension_less_files(tmp_path, monkeypatch):
    from busdet.dicom_phantoms import phantom_dicom, write_dicom

    write_dicom(tmp_path / "in" / "patient" / "series" / "IM000001", phantom_dicom(dicom_image()))
    (tmp_path / "in" / "patient" / "notes").write_text("no preamble here")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--recursive") == 0
    assert read_tables(tmp_path / "out")[1]["filename"].tolist() == ["patient/series/IM000001"]
    assert (tmp_path / "out" / "patient" / "series" / "IM000001.png").is_file()


def test_no_header_field_but_geometry_reaches_any_output(tmp_path, monkeypatch, caplog, capsys):
    """A cine loop and a single frame whose headers are full of fake PHI: no output, log line
    or terminal line holds any of it."""
    from pydicom.uid import JPEGBaseline8Bit

    from busdet.dicom_phantoms import FAKE_PHI, moving_lesion_frames, phantom_dicom, report_dicom, write_dicom

    frames, truth = moving_lesion_frames(count=12)
    write_dicom(tmp_path / "in" / "loop.dcm", phantom_dicom(frames, "YBR_FULL_422", JPEGBaseline8Bit,
                                                            region=(0, 0, 320, 240), cm_per_pixel=0.01, phi=True))
    write_dicom(tmp_path / "in" / "single.dcm", phantom_dicom(dicom_image(), phi=True))
    write_dicom(tmp_path / "in" / "report.dcm", report_dicom(phi=True))
    data = (tmp_path / "in" / "single.dcm").read_bytes()
    (tmp_path / "in" / "cut.dcm").write_bytes(data[: len(data) * 3 // 4])
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    outputs_ = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert {p.name for p in outputs_} == {"loop.dcm.png", "loop.dcm.mp4", "single.dcm.png", "images.csv",
                                          "predictions.csv", "run.json"}
    terminal = capsys.readouterr()
    texts = [p.read_bytes() for p in outputs_] + [
        "\n".join(caplog.messages).encode(), terminal.out.encode(), terminal.err.encode()]
    secrets = [value for value in FAKE_PHI.values() if len(value) > 3] + ["PHI-PRIVATE-TAG"]
    assert all(secret.encode() in (tmp_path / "in" / "loop.dcm").read_bytes() for secret in secrets)
    found = [(secret, index) for secret in secrets for index, text in enumerate(texts)
             if secret.encode() in text or secret.encode("utf-16-le") in text]
    assert not found
    # The PNGs carry pixels only: no text chunks of any kind.
    for png in (tmp_path / "out").glob("*.png"):
        assert Image.open(png).info.keys() <= {"dpi"} and not Image.open(png).text


def test_page_and_cli_write_byte_identical_tables_for_dicom_and_loops(tmp_path, monkeypatch):
    """The same DICOM files (a loop, a calibrated region, bad ones) give the page's ZIP and
    predict.py the same images.csv and predictions.csv, byte for byte."""
    import zipfile

    import streamlit as st

    import app
    from busdet.dicom_phantoms import phantom_dicom, write_dicom
    from busdet.downloads import results_zip

    st.cache_data.clear()
    write_mixed_dicom_folder(tmp_path / "in")
    write_dicom(tmp_path / "in" / "j_region.dcm",
                phantom_dicom(dicom_image(6, 320, 240), region=(40, 30, 300, 220), cm_per_pixel=0.01))
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    detector = fake_detector()
    uploads = [(p.name, p.read_bytes()) for p in sorted((tmp_path / "in").iterdir())]
    analysed = [app.analyse(detector, name, data, hashlib.sha256(data).hexdigest(), detector.score_threshold)
                for name, data in uploads]
    archive = zipfile.ZipFile(io.BytesIO(results_zip(*zip(*analysed))))
    for table in ["images.csv", "predictions.csv"]:
        assert archive.read(table) == (tmp_path / "out" / table).read_bytes(), table
    assert "annotated/g_loop_annotated.mp4" in archive.namelist()
    # KNOWN_BOXES on the 260 x 190 region, moved by its corner (40, 30); mm = pixels x 0.1
    assert "j_region.dcm,66,78,104,94,malignant,0.9,,10.4,9.4" in archive.read("predictions.csv").decode()
def test_no_ray_cluster_to_join_is_one_line_and_exit_2(tmp_path):
    """--engine ray --ray-address auto with no Ray instance on this machine (run as a user runs it)."""
    import subprocess
    import sys

    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray instance runs on this machine: 'auto' would join it")
    save(tmp_path / "in" / "scan.png", gray_ramp())
    code = ("import sys, predict, test_predict; predict.load_detector = lambda *a: test_predict.fake_detector(); "
            "sys.exit(predict.main(predict.get_args_parser().parse_args(sys.argv[1:])))")
    done = subprocess.run([sys.executable, "-c", code, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--engine", "ray", "--ray-address", "auto"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: --ray-address auto: cannot join the Ray cluster (")
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "images.csv").exists()
