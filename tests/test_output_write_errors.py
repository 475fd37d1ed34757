"""An output that cannot be written: the line and the row name that file, and the boxes stay.

``predict.py`` writes for one input its annotated copy, for a cine loop an MP4, and with
``--dicom-out`` a DICOM report and capture. When one of them fails (a full disk, a read-only
folder, a path taken by a folder), the line and the ``images.csv`` row name the input, which
output failed, its path and the system's reason; the row is an error row but keeps the boxes
found, in ``images.csv`` and ``predictions.csv``, as a run where nothing failed writes them.
Fake detector, generated files: no model loads.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pandas as pd
import pytest

from busdet import batch, dicom_out, images
from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, write_dicom
from busdet.phantoms import generate_phantom
from busdet.results import ImageResult
from busdet.tables import images_table, predictions_table
from test_predict import KNOWN_SCORES, fake_detector, gray_ramp, run_cli, save

FULL = os.strerror(errno.ENOSPC)
# What each output is called in the line and the row, and the suffix its name gets.
OUTPUTS = [("annotated copy", ".png"), ("annotated MP4", ".mp4"), ("DICOM report", ".sr.dcm"),
           ("DICOM capture", ".sc.dcm")]


def write_inputs(folder: Path) -> None:
    """A PNG, a single-frame DICOM file and a three-frame cine loop."""
    save(folder / "scan.png", gray_ramp())
    write_dicom(folder / "single.dcm", phantom_dicom(generate_phantom(1, "malignant", width=200, height=150).image))
    frames, _ = moving_lesion_frames(count=3)
    write_dicom(folder / "loop.dcm", phantom_dicom(frames, "RGB"))


def run(monkeypatch, root: Path, output: str, *extra) -> int:
    return run_cli(monkeypatch, fake_detector(), "--input", root / "in", "--output", root / output,
                   "--dicom-out", root / f"{output}_pacs", *extra)


def tables(output: Path):
    return (pd.read_csv(output / "predictions.csv", keep_default_na=False),
            pd.read_csv(output / "images.csv", keep_default_na=False).set_index("filename"))


def disk_full_for(monkeypatch, suffix: str) -> None:
    """Every atomic write of an output whose name ends in ``suffix`` fails as on a full disk."""
    for module in (images, dicom_out):
        real = module.atomic_write

        @contextlib.contextmanager
        def failing(path, *args, real=real, **kwargs):
            if str(path).endswith(suffix):
                raise OSError(errno.ENOSPC, FULL)
            with real(path, *args, **kwargs) as stream:
                yield stream
        monkeypatch.setattr(module, "atomic_write", failing)


@pytest.mark.parametrize("what, suffix", OUTPUTS)
def test_the_output_that_failed_is_named_and_the_boxes_stay(tmp_path, monkeypatch, caplog, what, suffix):
    write_inputs(tmp_path / "in")
    assert run(monkeypatch, tmp_path, "clean") == 0
    disk_full_for(monkeypatch, "loop.dcm" + suffix)
    caplog.clear()
    assert run(monkeypatch, tmp_path, "out") == 1
    failed = (tmp_path / ("out_pacs" if "DICOM" in what else "out")) / ("loop.dcm" + suffix)
    error = f"cannot write its {what} {failed} ({FULL})"
    assert [m for m in caplog.messages if "cannot write" in m] == [f"{tmp_path / 'in' / 'loop.dcm'}: {error}"]
    predictions, rows = tables(tmp_path / "out")
    clean_predictions, clean_rows = tables(tmp_path / "clean")
    assert rows.loc["loop.dcm", ["status", "error"]].tolist() == ["error", error]
    # Everything else in the tables is what the run where nothing failed wrote: no box lost.
    pd.testing.assert_frame_equal(predictions, clean_predictions)
    assert len(predictions[predictions.filename == "loop.dcm"]) == 3  # one box per frame
    pd.testing.assert_frame_equal(rows.drop(columns=["status", "error"]), clean_rows.drop(columns=["status", "error"]))
    assert (rows.drop("loop.dcm")[["status", "error"]] == ["ok", ""]).all(axis=None)
    assert rows.loc["loop.dcm", "boxes"] == 3 and rows.loc["loop.dcm", "top_score"] == KNOWN_SCORES[0]
    assert not failed.exists()


def test_a_dicom_report_path_taken_by_a_folder_names_the_report_not_the_copy(tmp_path, monkeypatch, caplog):
    write_inputs(tmp_path / "in")
    (tmp_path / "out_pacs" / "single.dcm.sr.dcm").mkdir(parents=True)  # a real failure: no monkeypatching
    assert run(monkeypatch, tmp_path, "out", "--overwrite") == 1
    report = tmp_path / "out_pacs" / "single.dcm.sr.dcm"
    error = f"cannot write its DICOM report {report} ({os.strerror(errno.EISDIR)})"
    assert [m for m in caplog.messages if "cannot write" in m] == [f"{tmp_path / 'in' / 'single.dcm'}: {error}"]
    predictions, rows = tables(tmp_path / "out")
    assert rows.loc["single.dcm", ["status", "error", "boxes", "top_label"]].tolist() == [
        "error", error, 1, "malignant"]
    assert len(predictions[predictions.filename == "single.dcm"]) == 1
    assert (tmp_path / "out" / "single.dcm.png").is_file()  # the copy was written: it is not the one named


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder of mode 0555")
def test_a_read_only_dicom_out_folder_names_the_report(tmp_path, monkeypatch, caplog):
    write_inputs(tmp_path / "in")
    (tmp_path / "out_pacs").mkdir()
    (tmp_path / "out_pacs").chmod(0o555)
    try:
        # The folder check before the run refuses it; made read-only after that check, the writes fail.
        check = batch.check_output_location
        monkeypatch.setattr(batch, "check_output_location",
                            lambda source, target: None if Path(target).name == "out_pacs" else check(source, target))
        assert run(monkeypatch, tmp_path, "out") == 1
    finally:
        (tmp_path / "out_pacs").chmod(0o755)
    denied = os.strerror(errno.EACCES)
    lines = sorted(m for m in caplog.messages if "cannot write" in m)
    assert lines == [f"{tmp_path / 'in' / name}: cannot write its DICOM report "
                     f"{tmp_path / 'out_pacs' / name}.sr.dcm ({denied})" for name in ("loop.dcm", "single.dcm")]
    _, rows = tables(tmp_path / "out")
    assert rows.loc[["loop.dcm", "single.dcm"], "boxes"].tolist() == [3, 1]


def test_resume_does_an_image_whose_copy_failed_again(tmp_path, monkeypatch):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    with monkeypatch.context() as patch:
        disk_full_for(patch, "scan.png")
        assert run_cli(patch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out") == 1
    _, rows = tables(tmp_path / "out")
    assert rows.loc["scan.png", ["status", "boxes"]].tolist() == ["error", 1]
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out", "--resume") == 0
    assert len(detector.calls) == 1 and (tmp_path / "out" / "scan.png").is_file()
    _, rows = tables(tmp_path / "out")
    assert rows.loc["scan.png", ["status", "error", "boxes"]].tolist() == ["ok", "", 1]


def test_a_failed_write_keeps_the_record_a_failed_read_has_none(tmp_path):
    from busdet.boxes import Box
    from busdet.ood import ImageCheck

    result = ImageResult("scan.png", 10, 10, (Box(1, 1, 9, 9, "benign", 0.8),), score_threshold=0.5,
                         check=ImageCheck(2.0))
    error = batch.write_failed(result, OSError(errno.ENOSPC, FULL))  # not named by busdet.files.writing
    assert not error.ok and error.shown_boxes == result.shown_boxes and error.in_distribution is True
    assert error.error == f"cannot write its outputs (OSError: [Errno {errno.ENOSPC}] {FULL})"
    row = images_table([error]).iloc[0]
    assert (row.boxes, row.status, row.ood_score) == (1, "error", 2.0)
    assert len(predictions_table([error])) == 1
    lost = result.failed("model failed")
    assert lost.shown_boxes == [] and lost.check is None and lost.in_distribution is None
