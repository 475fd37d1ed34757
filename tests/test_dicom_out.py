"""busdet.dicom_out and ``predict.py --dicom-out``: the Structured Report and the Secondary Capture.

The report is read back with highdicom's own parser, so the test checks what a viewer
would find in it, not how this project wrote it. ``dciodvfy`` (Debian's dicom3tools)
validates both objects where it is installed; CI (.ci/run) installs it and sets
BUSDET_REQUIRE_DICOM_TOOLS, so that there it fails instead of skipping.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from busdet import dicom_out
from busdet.dicom_phantoms import FAKE_PHI, moving_lesion_frames, phantom_dicom, write_dicom
from busdet.phantoms import generate_phantom
from test_predict import fake_detector, outputs, run_cli

REQUIRE_TOOLS = os.environ.get("BUSDET_REQUIRE_DICOM_TOOLS") == "1"
SECRETS = [value for value in FAKE_PHI.values() if len(value) > 3] + ["PHI-PRIVATE-TAG"]
# What the Secondary Capture and the report may say about the patient and the study: nothing else.
IDENTIFIERS = dicom_out.PATIENT_TAGS + dicom_out.STUDY_TAGS


def require_dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        (pytest.fail if REQUIRE_TOOLS else pytest.skip)("dciodvfy not installed (apt-get install dicom3tools)")
    return path


def dciodvfy_errors(path: Path) -> list:
    """The ``Error`` lines dciodvfy prints for a file (warnings are allowed)."""
    run = subprocess.run([require_dciodvfy(), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def write_study(folder: Path) -> None:
    """A calibrated single frame and a calibrated cine loop, headers full of fake PHI, and a PNG."""
    image = generate_phantom(2, "malignant", width=320, height=240).image
    write_dicom(folder / "single.dcm", phantom_dicom(image, region=(20, 10, 300, 230), cm_per_pixel=0.01, phi=True))
    frames, _ = moving_lesion_frames(count=4)
    write_dicom(folder / "loop.dcm", phantom_dicom(frames, "RGB", region=(0, 0, 320, 240), cm_per_pixel=0.02,
                                                   phi=True))
    Image.fromarray(image).save(folder / "plain.png")


def report_rows(path: Path) -> list:
    """predictions.csv's geometry, label, score, frame and mm, read back from a report's measurement groups."""
    report = hd.sr.srread(path)
    rows = []
    for group in report.content.get_planar_roi_measurement_groups():
        (xmin, ymin), (xmax, ymax) = group.roi.value.min(axis=0), group.roi.value.max(axis=0)
        frames = group.roi.ContentSequence[0].ReferencedSOPSequence[0].get("ReferencedFrameNumber")
        label = {"Benign": "benign", "Malignant": "malignant"}[group.get_qualitative_evaluations(
            name=codes.SCT.Classification)[0].value.meaning]

        def value(name):
            found = group.get_measurements(name=name)
            return float(found[0].value) if found else None
        rows.append([int(xmin), int(ymin), int(xmax - xmin), int(ymax - ymin), label,
                     value(dicom_out.SCORE_NAME), None if frames is None else int(frames),
                     value(dicom_out.WIDTH_NAME), value(dicom_out.HEIGHT_NAME)])
    return rows


def csv_rows(predictions: pd.DataFrame, filename: str) -> list:
    rows = predictions[predictions.filename == filename]
    return [[r.xmin, r.ymin, r.width, r.height, r.label, r.score, None if pd.isna(r.frame) else int(r.frame),
             r.width_mm, r.height_mm] for r in rows.itertuples()]


@pytest.fixture
def predicted(tmp_path, monkeypatch, caplog, capsys):
    """predict.py with --dicom-out over :func:`write_study`: ``(input, output, dicom folder, terminal text)``."""
    write_study(tmp_path / "in")
    status = run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                     "--dicom-out", tmp_path / "pacs")
    assert status == 0
    terminal = capsys.readouterr()
    return tmp_path / "in", tmp_path / "out", tmp_path / "pacs", "\n".join(caplog.messages) + terminal.out + terminal.err


def test_every_dicom_input_gets_a_report_and_a_capture(predicted):
    _, _, pacs, _ = predicted
    assert sorted(p.name for p in pacs.rglob("*") if p.is_file()) == [
        "loop.dcm.sc.dcm", "loop.dcm.sr.dcm", "single.dcm.sc.dcm", "single.dcm.sr.dcm"]


def test_report_measurements_are_predict_py_rows(predicted):
    source_dir, output, pacs, _ = predicted
    predictions = pd.read_csv(output / "predictions.csv")
    for name in ["single.dcm", "loop.dcm"]:
        expected = csv_rows(predictions, name)
        assert expected and report_rows(pacs / f"{name}.sr.dcm") == expected
        assert all(row[7] is not None for row in expected)  # calibrated: mm in both
    report = hd.sr.srread(pacs / "loop.dcm.sr.dcm")
    source = pydicom.dcmread(source_dir / "loop.dcm")
    group = report.content.get_planar_roi_measurement_groups()[0]
    assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    algorithm = hd.sr.utils.find_content_items(group[0], name=hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"))
    assert [item.value for item in algorithm] == [dicom_out.ALGORITHM_NAME]


def test_report_and_capture_join_the_source_study_with_its_identifiers_only(predicted):
    source_dir, output, pacs, _ = predicted
    source = pydicom.dcmread(source_dir / "single.dcm")
    report, capture = (pydicom.dcmread(pacs / f"single.dcm{suffix}") for suffix in (".sr.dcm", ".sc.dcm"))
    for made in (report, capture):
        assert made.StudyInstanceUID == source.StudyInstanceUID
        assert made.SeriesInstanceUID != source.SeriesInstanceUID
        assert [str(made.get(k)) for k in IDENTIFIERS] == [str(source.get(k)) for k in IDENTIFIERS]
        # Nothing else of the header: no age, institution, station, operator, description or private tag.
        text = pydicom.filebase.DicomBytesIO()
        pydicom.dcmwrite(text, made)
        copied = {s for s in SECRETS if s.encode() in text.getvalue()}
        assert copied == {str(source.get(k)) for k in IDENTIFIERS} & set(SECRETS)
        assert "PatientAge" not in made and "InstitutionName" not in made
    assert capture.SeriesInstanceUID != report.SeriesInstanceUID
    assert report.VerificationFlag == "UNVERIFIED" and capture.BurnedInAnnotation == "YES"
    # The capture's pixels are the annotated PNG's.
    assert np.array_equal(capture.pixel_array, np.asarray(Image.open(output / "single.dcm.png")))


def test_identifiers_reach_only_the_two_dicom_objects(predicted):
    _, output, _, terminal = predicted
    texts = [p.read_bytes() for p in output.rglob("*") if p.is_file()] + [terminal.encode()]
    assert not [s for s in SECRETS for text in texts if s.encode() in text]


def test_report_and_capture_pass_dciodvfy(predicted):
    _, _, pacs, _ = predicted
    for path in sorted(pacs.glob("*.dcm")):
        assert dciodvfy_errors(path) == [], path.name


def test_image_without_a_box_gets_a_report_saying_lesion_absent(tmp_path, monkeypatch):
    write_study(tmp_path / "in")
    nothing = fake_detector(answer=lambda image: outputs(np.zeros((0, 4)), [], []))
    assert run_cli(monkeypatch, nothing, "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--dicom-out", tmp_path / "pacs") == 0
    report = hd.sr.srread(tmp_path / "pacs" / "single.dcm.sr.dcm")
    assert not report.content.get_planar_roi_measurement_groups()
    (group,) = report.content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=codes.SCT.Lesion)[0].value == codes.SCT.Absent
    assert dciodvfy_errors(tmp_path / "pacs" / "single.dcm.sr.dcm") == [] if shutil.which("dciodvfy") else True


def test_a_file_without_study_uid_gets_an_error_row_naming_no_identifier(tmp_path, monkeypatch, capsys):
    dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image, phi=True)
    del dataset.StudyInstanceUID
    write_dicom(tmp_path / "in" / "orphan.dcm", dataset)
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--dicom-out", tmp_path / "pacs") == 1
    images = pd.read_csv(tmp_path / "out" / "images.csv", keep_default_na=False)
    assert images.error.tolist() == ["no DICOM results: the file has no StudyInstanceUID: a PACS could not "
                                     "file results for it"]
    assert not [s for s in SECRETS if s in capsys.readouterr().err]


def test_dicom_out_inside_the_input_or_over_earlier_results_is_refused(tmp_path, monkeypatch, capsys):
    write_study(tmp_path / "in")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--dicom-out", tmp_path / "in" / "pacs") == 2
    assert "inside the input folder" in capsys.readouterr().err
    (tmp_path / "pacs").mkdir()
    (tmp_path / "pacs" / "loop.dcm.sr.dcm").write_bytes(b"earlier")
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--dicom-out", tmp_path / "pacs") == 2
    assert "loop.dcm.sr.dcm: exists" in capsys.readouterr().err
    assert (tmp_path / "pacs" / "loop.dcm.sr.dcm").read_bytes() == b"earlier"


def test_the_same_input_gives_the_same_uids_so_a_resend_replaces_itself(tmp_path):
    write_study(tmp_path)
    source = dicom_out.read_source(tmp_path / "single.dcm")
    from busdet.results import analyse_image
    from busdet.scans import read_scan

    result, scan = analyse_image(fake_detector(), "single.dcm", lambda: read_scan(tmp_path / "single.dcm"), 0.5)
    first, second = (dicom_out.build_dicom_results(result, scan, source, {}) for _ in range(2))
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in second]
    other, _ = dicom_out.build_dicom_results(result.at_threshold(0.2), scan, source, {})
    assert other.SOPInstanceUID != first[0].SOPInstanceUID


def test_model_version_comes_from_model_info():
    info = {"checkpoint": "v2_640/best/best_ckpt-26", "onnx": {"saved_model_sha256": "c7fefaefd61babfd24d4"}}
    assert dicom_out.model_version(info) == "v2_640/best/best_ckpt-26 sha256:c7fefaefd61b"
    assert dicom_out.model_version({}) == "unrecorded"


def test_page_offers_the_report_and_capture_predict_py_writes(predicted, tmp_path):
    import hashlib

    import streamlit as st

    import app
    from busdet.downloads import dicom_downloads

    source_dir, _, pacs, _ = predicted
    st.cache_data.clear()
    detector = fake_detector()
    for name in ["single.dcm", "loop.dcm"]:
        data = (source_dir / name).read_bytes()
        result, scan = app.analyse(detector, name, data, hashlib.sha256(data).hexdigest(), detector.score_threshold)
        files = dicom_downloads(result, scan, data, detector.info)
        assert [f[1] for f in files] == [f"{name[:-4]}.sr.dcm", f"{name[:-4]}.sc.dcm"]
        for (_, file_name, _, build), suffix in zip(files, (".sr.dcm", ".sc.dcm")):
            (tmp_path / file_name).write_bytes(build())
            written = pydicom.dcmread(pacs / f"{name}{suffix}")
            assert pydicom.dcmread(tmp_path / file_name).SOPInstanceUID == written.SOPInstanceUID
        assert report_rows(tmp_path / f"{name[:-4]}.sr.dcm") == report_rows(pacs / f"{name}.sr.dcm")


def test_names_in_another_character_set_come_back_as_written(tmp_path):
    dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image)
    dataset.SpecificCharacterSet, dataset.PatientName = "ISO_IR 100", "Müller^Jürgen"
    write_dicom(tmp_path / "latin1.dcm", dataset)
    assert "Müller".encode("latin-1") in (tmp_path / "latin1.dcm").read_bytes()
    from busdet.results import analyse_image
    from busdet.scans import read_scan

    result, scan = analyse_image(fake_detector(), "latin1.dcm", lambda: read_scan(tmp_path / "latin1.dcm"), 0.5)
    for made in dicom_out.build_dicom_results(result, scan, dicom_out.read_source(tmp_path / "latin1.dcm"), {}):
        again = pydicom.dcmread(io.BytesIO(dicom_out.dicom_bytes(made)))
        assert again.SpecificCharacterSet == "ISO_IR 192" and str(again.PatientName) == "Müller^Jürgen"
