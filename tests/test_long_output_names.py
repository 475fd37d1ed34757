"""Input names near the file system's 255-byte limit: outputs whose added suffixes would pass it.

``predict.py`` names an input's outputs by adding to its name (``x.dcm`` gets ``x.dcm.png``,
``x.dcm.mp4`` and with ``--dicom-out`` ``x.dcm.sr.dcm`` and ``x.dcm.sc.dcm``). A legal input name
of 250-255 bytes can so give an output name the file system refuses (ENAMETOOLONG): such an
input is refused when the run is planned (one line, an error row, never read), and the rest
of the run goes on. Fake detector, generated files: no model loads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from busdet import batch
from busdet.dicom_phantoms import phantom_dicom, write_dicom
from busdet.phantoms import generate_phantom
from test_predict import fake_detector, folder_hashes, gray_ramp, run_cli, save

REASON = "output name would exceed the file system's {limit}-byte limit"


def long_name(length: int, extension: str, letter: str) -> str:
    """A name of exactly ``length`` bytes ending in ``extension``."""
    return letter * (length - len(extension)) + extension


def write_inputs(folder: Path, dicom_length: int) -> dict:
    """A short PNG, a PNG named with the file system's whole limit, a DICOM file whose name is
    ``dicom_length`` bytes long and a short DICOM file; returns their names by role."""
    limit = batch.name_limit(folder.parent)
    names = {"short_png": "a_short.png", "long_png": long_name(limit, ".png", "p"),
             "long_dicom": long_name(dicom_length, ".dcm", "d"), "short_dicom": "z_short.dcm"}
    save(folder / names["short_png"], gray_ramp())
    save(folder / names["long_png"], gray_ramp())
    for key, seed in (("long_dicom", 1), ("short_dicom", 2)):
        write_dicom(folder / names[key], phantom_dicom(generate_phantom(seed, "benign", width=200, height=150).image))
    return names


def image_rows(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "images.csv", keep_default_na=False).set_index("filename")


def test_a_png_named_with_the_whole_limit_and_a_dicom_five_bytes_under_it_are_done(tmp_path, monkeypatch, caplog):
    limit = batch.name_limit(tmp_path)
    names = write_inputs(tmp_path / "in", limit - 5)
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out") == 0
    assert (image_rows(tmp_path / "out")["status"] == "ok").all() and len(detector.calls) == 4
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {names["long_png"], names["long_dicom"] + ".png"} <= written  # the temporary names were cut short
    assert not [name for name in written if name.endswith(".tmp")]
    assert not [m for m in caplog.messages if "limit" in m]


def test_dicom_out_refuses_a_dicom_whose_report_name_would_pass_the_limit(tmp_path, monkeypatch, caplog):
    limit = batch.name_limit(tmp_path)
    names = write_inputs(tmp_path / "in", limit - 5)
    before = folder_hashes(tmp_path / "in")
    detector = fake_detector()
    status = run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out",
                     "--dicom-out", tmp_path / "pacs")
    assert status == 1  # the caller is told
    reason = (f"{REASON.format(limit=limit)} (its name + .sr.dcm in {tmp_path / 'pacs'} is {limit + 2} bytes); "
              "not read: shorten its name by 2 bytes")
    assert [m for m in caplog.messages if "limit" in m] == [f"{tmp_path / 'in' / names['long_dicom']}: {reason}"]
    rows = image_rows(tmp_path / "out")
    assert rows.loc[names["long_dicom"], ["status", "error", "width"]].tolist() == ["error", reason, ""]
    assert (rows.drop(names["long_dicom"])["status"] == "ok").all()
    assert len(detector.calls) == 3  # refused when planned: never read, never run
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert names["long_dicom"] not in set(predictions["filename"]) and len(predictions) == 3
    # nothing half-written for it; the others' results are all there
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [names["short_png"], names["long_png"], names["short_dicom"] + ".png", "images.csv", "predictions.csv",
         "run.json"])
    assert sorted(p.name for p in (tmp_path / "pacs").iterdir()) == ["z_short.dcm.sc.dcm", "z_short.dcm.sr.dcm"]
    assert folder_hashes(tmp_path / "in") == before


def test_a_dicom_whose_annotated_copy_would_pass_the_limit_is_refused_and_resume_refuses_it_again(
        tmp_path, monkeypatch, caplog):
    limit = batch.name_limit(tmp_path)
    names = write_inputs(tmp_path / "in", limit - 2)
    arguments = ["--input", tmp_path / "in", "--output", tmp_path / "out"]
    assert run_cli(monkeypatch, fake_detector(), *arguments) == 1
    reason = (f"{REASON.format(limit=limit)} (its name + .png in {tmp_path / 'out'} is {limit + 2} bytes); "
              "not read: shorten its name by 2 bytes")
    assert image_rows(tmp_path / "out").loc[names["long_dicom"], "error"] == reason
    assert f"{tmp_path / 'in' / names['long_dicom']}: {reason}" in caplog.messages
    caplog.clear()
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, *arguments, "--resume") == 1
    assert len(detector.calls) == 1  # the short DICOM (DICOM files are always done again); the PNGs are kept
    assert image_rows(tmp_path / "out").loc[names["long_dicom"], "error"] == reason
    assert f"{tmp_path / 'in' / names['long_dicom']}: {reason}" in caplog.messages


@pytest.mark.parametrize("name, dicom_out, expected", [
    ("a.png", False, None), ("a.dcm", True, None),
    ("x" * 251 + ".png", False, None),  # its copy keeps its name: 255 bytes
    ("x" * 247 + ".dcm", False, None),  # 255 with .png and .mp4 added
    ("x" * 248 + ".dcm", False, "its name + .png in OUT is 256 bytes"),
    ("x" * 245 + ".dcm", True, "its name + .sr.dcm in PACS is 256 bytes"),
    ("sub/" + "é" * 125 + ".dcm", False, "its name + .png in OUT/sub is 258 bytes"),  # bytes, not characters
])
def test_every_output_name_is_measured_in_bytes(tmp_path, name, dicom_out, expected):
    plan = batch.BatchPlan(tmp_path / "in", tmp_path / "out", [Path(name)], [],
                           dicom_out=tmp_path / "pacs" if dicom_out else None)
    problem = batch.output_name_problem(plan, Path(name))
    if expected is None:
        assert problem is None
    else:
        where = expected.replace("OUT", str(tmp_path / "out")).replace("PACS", str(tmp_path / "pacs"))
        assert problem.startswith(f"{REASON.format(limit=255)} ({where}); not read: shorten its name by ")
        assert batch.find_output_conflicts(plan) == {0: problem}


def test_the_limit_is_the_file_systems_own(tmp_path, monkeypatch):
    assert batch.name_limit(tmp_path / "not" / "made" / "yet") == batch.name_limit(tmp_path)
    plan = batch.BatchPlan(tmp_path / "in", tmp_path / "out", [Path("p" * 150 + ".png")], [])
    assert batch.output_name_problem(plan, plan.images[0]) is None
    monkeypatch.setattr(batch.os, "pathconf", lambda path, name: 143)  # eCryptfs's limit
    assert batch.output_name_problem(plan, plan.images[0]) == (
        f"{REASON.format(limit=143)} (its name in {tmp_path / 'out'} is 154 bytes); "
        "not read: shorten its name by 11 bytes")

    def unanswered(path, name):
        raise OSError("no answer")
    monkeypatch.setattr(batch.os, "pathconf", unanswered)
    assert batch.name_limit(tmp_path) == batch.NAME_MAX == 255
    monkeypatch.setattr(batch.os, "pathconf", lambda path, name: -1)  # no limit given
    assert batch.name_limit(tmp_path) == 255
