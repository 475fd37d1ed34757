"""The second hostile round (issue 20): names, special files, signals, a second run, links, mixed resumes.

Every case runs predict.py's ``main`` (or, for signals, its whole command line) on
generated images with the fake :class:`Detector` of test_predict.py, and checks that
nothing is lost, no input is written, and the message names the file printably.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import predict
from busdet import batch, cli, files
from busdet.dicom_phantoms import phantom_dicom, write_dicom
from busdet.tables import read_results
from test_predict import ROOT, fake_detector, folder_hashes, gray_ramp, run_cli, save

LATIN1_NAME = os.fsdecode(b"caf\xe9.png")  # bytes of another system's encoding: not UTF-8


def run(monkeypatch, input_dir: Path, output_dir: Path, *extra, detector=None) -> int:
    return run_cli(monkeypatch, detector or fake_detector(), "--input", input_dir, "--output", output_dir, *extra)


def table_names(output_dir: Path) -> list:
    """The ``filename`` column of images.csv, read back as the project reads it."""
    return files.read_csv(output_dir / "images.csv")["filename"].tolist()


# --- 1, 2, 11: names the tables must hold ----------------------------------------


@pytest.mark.parametrize("name", [LATIN1_NAME, "scan\r01.png", "line\nbreak.png", 'quote",comma.png'],
                         ids=["not UTF-8", "carriage return", "newline", "quote and comma"])
def test_hostile_name_is_written_faithfully_and_resume_finds_it(tmp_path, monkeypatch, caplog, name):
    monkeypatch.setattr(batch, "TABLE_SAVE_SECONDS", 0.0)  # the in-run save too
    save(tmp_path / "in" / name, gray_ramp())
    save(tmp_path / "in" / "plain.png", gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    assert sorted(table_names(tmp_path / "out")) == sorted([name, "plain.png"])
    assert len(files.read_csv(tmp_path / "out" / "predictions.csv")) == 2  # one row each, none split
    assert (tmp_path / "out" / name).is_file()
    detector = fake_detector()
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume", detector=detector) == 0
    assert detector.calls == []  # both kept: the tables name the same paths


def test_undecodable_bytes_are_the_files_own_bytes_in_the_tables(tmp_path, monkeypatch):
    save(tmp_path / "in" / LATIN1_NAME, gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    assert b"\ncaf\xe9.png," in (tmp_path / "out" / "images.csv").read_bytes()


def test_carriage_return_is_quoted_and_escaped_on_stderr(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad\r01.png").write_bytes(b"not an image")
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(predict, "load_detector", lambda *a: fake_detector())
    monkeypatch.setattr("logging.root.handlers", [])  # let predict.py install its own handler
    assert cli.run_command(predict.main, predict.get_args_parser(), args) == 1
    assert b'\n"bad\r01.png",' in (tmp_path / "out" / "images.csv").read_bytes()
    err = capsys.readouterr().err
    assert "bad\\r01.png: not a recognised image format" in err and "\r01" not in err


@pytest.mark.parametrize("folder", ["=cmd|' ", "+sum", "-x", "@at"])
def test_formula_names_are_neutralised_and_read_back_unchanged(tmp_path, monkeypatch, folder):
    save(tmp_path / "in" / folder / "scan.png", gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--recursive") == 0
    written = (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8").splitlines()[1]
    assert written.startswith("'" + folder[0]) or written.startswith("\"'" + folder[0])
    assert table_names(tmp_path / "out") == [f"{folder}/scan.png"]
    assert [r.filename for r in read_results(*[tmp_path / "out" / n for n in ("predictions.csv", "images.csv")])] \
        == [f"{folder}/scan.png"]


def test_page_downloads_equal_the_cli_tables_for_hostile_names(tmp_path, monkeypatch):
    from busdet.tables import images_csv, predictions_csv

    for name in ["=1+1.png", "a\rb.png", "'quoted.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    results = read_results(tmp_path / "out" / "predictions.csv", tmp_path / "out" / "images.csv")
    assert images_csv(results) == (tmp_path / "out" / "images.csv").read_bytes()
    assert predictions_csv(results) == (tmp_path / "out" / "predictions.csv").read_bytes()


# --- 3: two inputs, one output ---------------------------------------------------


def write_collisions(folder: Path) -> None:
    folder.mkdir(parents=True)
    write_dicom(folder / "scan", phantom_dicom(gray_ramp(120, 80)))      # extension-less DICOM -> scan.png
    save(folder / "scan.png", gray_ramp())                                # the same output name
    write_dicom(folder / "a.dcm", phantom_dicom(gray_ramp(120, 80)))      # -> a.dcm.png
    save(folder / "a.dcm.png", gray_ramp())


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["fresh", "--overwrite"])
def test_output_collisions_are_refused_at_planning_naming_both(tmp_path, monkeypatch, caplog, overwrite):
    write_collisions(tmp_path / "in")
    before = folder_hashes(tmp_path / "in")
    detector = fake_detector()
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", *overwrite, detector=detector) == 1
    rows = files.read_csv(tmp_path / "out" / "images.csv").set_index("filename")
    assert rows.loc["scan", "status"] == "ok" and rows.loc["a.dcm", "status"] == "ok"  # listed first: kept
    for loser, winner in [("scan.png", "scan"), ("a.dcm.png", "a.dcm")]:
        assert rows.loc[loser, "status"] == "error"
        assert f"is also that of {tmp_path / 'in' / winner} (listed first" in rows.loc[loser, "error"]
        assert any(str(tmp_path / "in" / loser) in m and winner in m for m in caplog.messages)
    assert len(detector.calls) == 2  # the refused images were never read
    # The annotated copies are the DICOM files' (120 x 80), not replaced by the PNGs' (200 x 100).
    from PIL import Image
    assert Image.open(tmp_path / "out" / "scan.png").size == (120, 80)
    assert Image.open(tmp_path / "out" / "a.dcm.png").size == (120, 80)
    assert folder_hashes(tmp_path / "in") == before


# --- 4: special files ------------------------------------------------------------


def run_with_deadline(target, seconds: float = 60.0):
    """Runs ``target()`` in a thread; fails the test (instead of hanging it) if it does not end in time."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("value", target()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the run blocked"
    return outcome["value"]


def test_named_pipe_gets_a_not_a_regular_file_row_and_never_blocks(tmp_path, monkeypatch, caplog):
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "pipe.png")
    os.mkfifo(tmp_path / "in" / "pipe")  # extension-less: would be opened to look for the DICM preamble
    save(tmp_path / "in" / "scan.png", gray_ramp())
    monkeypatch.setattr(predict, "load_detector", lambda *a: fake_detector())
    args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert run_with_deadline(lambda: predict.main(args)) == 1
    rows = files.read_csv(tmp_path / "out" / "images.csv").set_index("filename")
    assert rows.loc["scan.png", "status"] == "ok"
    assert rows.loc["pipe.png", "error"].startswith("not a regular file")
    assert "pipe" not in rows.index
    assert any(m.endswith("pipe: passed over: not a regular file (a named pipe, device or socket); not read")
               for m in caplog.messages)


def test_broken_links_and_link_loops_are_named_as_such(tmp_path, monkeypatch, caplog):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "elsewhere" / "gone.png")  # dangling
    (tmp_path / "in" / "a.png").symlink_to(tmp_path / "in" / "b.png")  # a loop of two
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "gone").symlink_to(tmp_path / "elsewhere" / "gone")  # no image name: passed over
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in" / "loop")
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 1
    rows = files.read_csv(tmp_path / "out" / "images.csv").set_index("filename")
    assert rows.loc["scan.png", "status"] == "ok"
    expected = {"gone.png": files.BROKEN_LINK_REASON, "a.png": files.LINK_LOOP_REASON,
                "b.png": files.LINK_LOOP_REASON}
    for name, reason in expected.items():
        assert rows.loc[name, "error"] == reason
        assert f"{tmp_path / 'in' / name}: {reason}" in caplog.messages
    assert f"{tmp_path / 'in' / 'gone'}: passed over: {files.BROKEN_LINK_REASON}" in caplog.messages
    assert f"{tmp_path / 'in' / 'loop'}: passed over: {files.LINK_LOOP_REASON}" in caplog.messages


@pytest.mark.parametrize("which", ["--input", "--output"])
@pytest.mark.parametrize("link", ["broken", "loop"])
def test_an_input_or_output_folder_that_is_a_bad_link_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, which,
                                                                             link):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    bad = tmp_path / "bad"
    bad.symlink_to(tmp_path / "nowhere" if link == "broken" else bad)
    folders = {"--input": tmp_path / "in", "--output": tmp_path / "out", which: bad}
    detector = fake_detector()
    assert run(monkeypatch, folders["--input"], folders["--output"], detector=detector) == 2
    reason = files.BROKEN_LINK_REASON if link == "broken" else files.LINK_LOOP_REASON
    assert capsys.readouterr().err.startswith(f"error: {bad}: {reason}")
    assert detector.calls == [] and not (tmp_path / "out").exists()


def test_mask_to_bbox_names_broken_links_and_link_loops(tmp_path, capsys):
    from busdet.phantoms import generate_phantom
    from test_mask_to_bbox import run as run_tool

    phantom = generate_phantom(0, "benign", width=128, height=128)
    folder = tmp_path / "data" / "benign"
    for name in ["ok", "broken", "gone", "looped"]:
        save(folder / f"{name}.png", phantom.image)
        save(folder / f"{name}_mask.png", phantom.masks[0].astype(np.uint8) * 255)
    for name in ["broken_mask.png", "gone.png"]:  # the files are gone, their links stay
        (folder / name).rename(tmp_path / name)
        (folder / name).symlink_to(tmp_path / "nowhere" / name)
    (folder / "looped_mask.png").unlink()
    (folder / "looped_mask.png").symlink_to(folder / "looped_mask.png")
    status, lines = run_tool(capsys, "--input", tmp_path / "data", "--output", tmp_path / "a.csv")
    assert status == 1
    assert [line for line in lines if line.startswith("skipped")] == [
        f"skipped {folder / 'broken.png'}: {folder / 'broken_mask.png'}: {files.BROKEN_LINK_REASON}",
        f"skipped {folder / 'gone.png'}: {files.BROKEN_LINK_REASON}",
        f"skipped {folder / 'looped.png'}: {folder / 'looped_mask.png'}: {files.LINK_LOOP_REASON}"]
    assert [row.split(",")[0] for row in (tmp_path / "a.csv").read_text().splitlines()[1:]] == ["ok.png"]


def test_mask_to_bbox_names_a_pipe_among_the_masks(tmp_path):
    from busdet.annotations import annotate_dataset
    from busdet.phantoms import generate_phantom

    phantom = generate_phantom(0, "benign", width=128, height=128)
    save(tmp_path / "data" / "benign" / "a.png", phantom.image)
    save(tmp_path / "data" / "benign" / "a_mask.png", phantom.masks[0].astype(np.uint8) * 255)
    os.mkfifo(tmp_path / "data" / "benign" / "b.png")
    images, problems = run_with_deadline(lambda: annotate_dataset(tmp_path / "data", ["benign", "malignant"]))
    assert [image.filename for image in images] == ["a.png"]
    assert any(p.path.name == "b.png" and p.reason.startswith("not a regular file") for p in problems)


@pytest.mark.parametrize("name", [os.fsdecode(b"caf\xe9"), "scan\r01", "line\nbreak", "=cmd|' "],
                         ids=["not UTF-8", "CR", "LF", "formula"])
def test_mask_to_bbox_writes_hostile_names_that_evaluate_reads_back(tmp_path, capsys, name):
    from busdet.evaluation import read_annotations_csv
    from busdet.phantoms import generate_phantom
    from test_mask_to_bbox import run as run_tool

    phantom = generate_phantom(1, "malignant", width=128, height=128)
    save(tmp_path / "data" / "malignant" / f"{name}.png", phantom.image)
    save(tmp_path / "data" / "malignant" / f"{name}_mask.png", phantom.masks[0].astype(np.uint8) * 255)
    save(tmp_path / "data" / "benign" / "b.png", phantom.image)
    save(tmp_path / "data" / "benign" / "b_mask.png", phantom.masks[0].astype(np.uint8) * 255)
    status, lines = run_tool(capsys, "--input", tmp_path / "data", "--output", tmp_path / "a.csv",
                         "--include-negatives")
    assert status == 0, lines
    truth, labels = read_annotations_csv(tmp_path / "a.csv")
    assert labels == {f"{name}.png": "malignant", "b.png": "benign"}
    assert len(truth[f"{name}.png"]) == 1


# --- 4, 8: Ctrl-C and SIGTERM ----------------------------------------------------

DRIVER = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import predict
from busdet import cli
from test_predict import fake_detector, outputs, KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES

def slow(image):
    if len(detector.calls) >= 3:
        print("busy", flush=True)
        time.sleep(60)
    return outputs(KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES)

detector = fake_detector(slow)
predict.load_detector = lambda *args: detector
sys.exit(cli.run_command(predict.main, predict.get_args_parser()))
"""


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_the_run_promptly_and_saves_what_finished(tmp_path, stop, status):
    for letter in "abcdef":
        save(tmp_path / "in" / f"{letter}.png", gray_ramp())
    script = DRIVER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    # As from a terminal: a test run started in the background (nohup ... &) passes SIGINT on ignored.
    process = subprocess.Popen([sys.executable, "-c", script, "--input", str(tmp_path / "in"),
                                "--output", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().strip() == "busy"  # the model is on its third image
    started = time.monotonic()
    process.send_signal(stop)
    _, err = process.communicate(timeout=30)
    assert process.returncode == status
    assert time.monotonic() - started < 10  # prompt: not after the 60 s the model would take
    assert table_names(tmp_path / "out") == ["a.png", "b.png"]
    assert ("stopped by SIGTERM: 4 images" if stop == signal.SIGTERM else "interrupted: 4 images") in err
    assert not (tmp_path / "out" / files.LOCK_FILE).exists()


# --- 5: one run per output folder ------------------------------------------------


def test_second_run_into_the_same_output_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    detector = fake_detector()
    with files.folder_lock(tmp_path / "out"):  # another run holds the folder
        assert run(monkeypatch, tmp_path / "in", tmp_path / "out", detector=detector) == 2
    error = capsys.readouterr().err
    assert error == (f"error: {tmp_path / 'out'}: another predict.py run (process {os.getpid()}) is writing "
                     "there; wait for it to finish or choose another folder\n")
    assert detector.calls == [] and not (tmp_path / "out").exists()  # nothing done, nothing left


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(tmp_path, monkeypatch):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / files.LOCK_FILE).write_text("999999\n")  # its process is gone: no kernel lock
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    assert table_names(tmp_path / "out") == ["scan.png"]
    assert not (tmp_path / "out" / files.LOCK_FILE).exists()


def test_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    refused = []

    def answer(image):
        try:
            with files.folder_lock(tmp_path / "out"):
                pass
        except files.FolderLockedError as error:
            refused.append(str(error))
        from test_predict import KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES, outputs
        return outputs(KNOWN_BOXES, KNOWN_CLASSES, KNOWN_SCORES)

    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", detector=fake_detector(answer)) == 0
    assert len(refused) == 1 and f"(process {os.getpid()})" in refused[0]


# --- 6: what made the tables -----------------------------------------------------


def test_resume_with_another_threshold_is_refused_unless_asked(tmp_path, monkeypatch, capsys):
    for name in ["a.png", "b.png", "c.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", detector=fake_detector(interrupt_on_call=2)) == 130
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record == {"model_sha256": None, "model_checkpoint": None, "runtime": "tensorflow",
                      "score_threshold": 0.5, "frames": "all"}
    capsys.readouterr()
    before = folder_hashes(tmp_path / "out")
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume", "--threshold", "0.05") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'out' / 'run.json'}: --resume would mix rows of two runs "
                            "(score_threshold 0.5 there, 0.05 now)") and error.count("\n") == 1
    assert folder_hashes(tmp_path / "out") == before
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume", "--frames", "key") == 2  # frames too
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume-anyway", "--threshold", "0.05") == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["score_threshold"] == 0.05 and record["earlier_runs"][0]["score_threshold"] == 0.5
    assert table_names(tmp_path / "out") == ["a.png", "b.png", "c.png"]


def test_resume_without_run_json_is_refused(tmp_path, monkeypatch, capsys):
    save(tmp_path / "in" / "a.png", gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    (tmp_path / "out" / "run.json").unlink()  # tables of an older version, or a damaged folder
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume") == 2
    assert "no readable run.json, so what made the tables is unknown" in capsys.readouterr().err
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume") == 2  # still nothing written


def test_resume_with_the_same_settings_keeps_the_rows(tmp_path, monkeypatch):
    for name in ["a.png", "b.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--threshold", "0.2",
               detector=fake_detector(interrupt_on_call=2)) == 130
    detector = fake_detector()
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--resume", "--threshold", "0.2",
               detector=detector) == 0
    assert len(detector.calls) == 1 and "earlier_runs" not in json.loads((tmp_path / "out" / "run.json").read_text())


def test_run_json_records_the_real_models_digest(tmp_path):
    from busdet.inference import Detector, compute_saved_model_digest
    from test_predict import CLASSES, fake_model_dir

    model = fake_model_dir(tmp_path / "model", CLASSES)
    detector = Detector(predict=None, classes=CLASSES, input_size=(640, 640), score_threshold=0.4,
                        model_dir=model, info={"checkpoint": "v2/best"}, runtime="onnx")
    settings = batch.run_settings(detector, 0.4, 5)
    assert settings == {"model_sha256": compute_saved_model_digest(model), "model_checkpoint": "v2/best",
                        "runtime": "onnx", "score_threshold": 0.4, "frames": 5}


# --- 7: links between the input and the output trees -----------------------------


def test_link_into_the_output_tree_is_never_read_nor_written(tmp_path, monkeypatch, caplog):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out") == 0
    (tmp_path / "in" / "mirror").symlink_to(tmp_path / "out", target_is_directory=True)
    (tmp_path / "in" / "copy.png").symlink_to(tmp_path / "out" / "scan.png")
    before = folder_hashes(tmp_path / "in")
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--recursive", "--overwrite") == 0
    assert table_names(tmp_path / "out") == ["scan.png"]
    for name in ("mirror", "copy.png"):
        assert any(m == f"{tmp_path / 'in' / name}: passed over: a link into the output folder; outputs are never "
                        "read as inputs" for m in caplog.messages)
    assert folder_hashes(tmp_path / "in") == before


def test_output_written_through_a_link_into_the_inputs_is_refused(tmp_path, monkeypatch):
    save(tmp_path / "in" / "sub" / "scan.png", gray_ramp(120, 80))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "in" / "sub", target_is_directory=True)
    before = folder_hashes(tmp_path / "in")
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", "--recursive", "--overwrite") == 1
    rows = files.read_csv(tmp_path / "out" / "images.csv").set_index("filename")
    assert "would be written into the input folder (through a link)" in rows.loc["sub/scan.png", "error"]
    assert folder_hashes(tmp_path / "in") == before


# --- 9: model_info.json values of the wrong type ---------------------------------


@pytest.mark.parametrize("key, value, expected", [
    ("score_threshold", "high", 'score_threshold is "high", expected a number between 0 and 1'),
    ("score_threshold", 7, "score_threshold is 7, expected a number between 0 and 1"),
    ("input_size", "640", 'input_size is "640", expected [height, width] in whole pixels'),
    ("classes", ["benign"], 'classes is ["benign"], expected {id: name}'),
])
def test_model_info_value_of_the_wrong_type_is_one_line_and_exit_2(tmp_path, capsys, label_map_path, key, value,
                                                                   expected):
    from busdet.inference import read_model_info, write_model_info
    from test_predict import CLASSES, fake_model_dir

    save(tmp_path / "in" / "scan.png", gray_ramp())
    model = fake_model_dir(tmp_path / "model", CLASSES)
    write_model_info(model, {**read_model_info(model), key: value})
    args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                                 "--model", str(model), "--label", str(label_map_path)])
    assert predict.main(args) == 2
    error = capsys.readouterr().err
    assert error == f"error: {model / 'model_info.json'}: damaged ({expected}); export the model again\n"
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_bad_model_info_is_one_line_and_exit_2(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import evaluate
    from busdet.inference import write_model_info

    (tmp_path / "model").mkdir()
    write_model_info(tmp_path / "model", {"score_threshold": "high"})
    args = evaluate.get_args_parser().parse_args(["--annotations", "a.csv", "--predictions", "p.csv", "--output",
                                                  str(tmp_path / "report"), "--model", str(tmp_path / "model")])
    assert evaluate.main(args) == 2
    assert capsys.readouterr().err.count("\n") == 1


# --- 10: DICOM geometry that disagrees with its pixels ----------------------------


def test_dicom_geometry_mismatch_is_an_error_row_with_both_numbers(tmp_path, monkeypatch, caplog, capsys):
    from pydicom.uid import JPEGBaseline8Bit

    from busdet.dicom_phantoms import moving_lesion_frames

    longer = phantom_dicom(gray_ramp(200, 150))
    longer.PixelData = longer.PixelData + bytes(200 * 150)
    loop = phantom_dicom(moving_lesion_frames(count=4)[0], "YBR_FULL_422", JPEGBaseline8Bit)
    loop.NumberOfFrames = 9
    write_dicom(tmp_path / "in" / "longer.dcm", longer)
    write_dicom(tmp_path / "in" / "loop.dcm", loop)
    detector = fake_detector()
    assert run(monkeypatch, tmp_path / "in", tmp_path / "out", detector=detector) == 1
    rows = files.read_csv(tmp_path / "out" / "images.csv").set_index("filename")
    assert rows.loc["longer.dcm", "error"].startswith(
        "DICOM pixel data holds 60,000 bytes but its header declares 1 frame(s) of 200x150 pixels, 30,000 bytes")
    assert rows.loc["loop.dcm", "error"].startswith(
        "DICOM compressed pixel data holds 4 fragment(s) but its header declares 9 frame(s) of 320x240 pixels")
    assert detector.calls == []
    # Every line on stderr or in the log names its file: no bare pydicom warning.
    lines = caplog.messages + capsys.readouterr().err.splitlines()
    assert all(str(tmp_path / "in") in line for line in lines if "pixel data" in line.lower())


def test_a_second_ctrl_c_during_the_last_save_does_not_cut_it_short(tmp_path, monkeypatch):
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background
    for name in ["a.png", "b.png", "c.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    write_csv = batch.write_csv

    def impatient_write(frame, path, **options):  # the user presses Ctrl-C again while the tables are written
        os.kill(os.getpid(), signal.SIGINT)
        write_csv(frame, path, **options)

    monkeypatch.setattr(batch, "write_csv", impatient_write)
    with pytest.raises(KeyboardInterrupt):  # raised once the save is done
        run(monkeypatch, tmp_path / "in", tmp_path / "out", detector=fake_detector(interrupt_on_call=3))
    assert table_names(tmp_path / "out") == ["a.png", "b.png"]
    assert len(files.read_csv(tmp_path / "out" / "predictions.csv")) == 2
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers put back


def test_label_map_or_model_info_that_is_a_pipe_is_one_line_not_a_hang(tmp_path, capsys):
    from test_predict import CLASSES, fake_model_dir

    save(tmp_path / "in" / "scan.png", gray_ramp())
    model = fake_model_dir(tmp_path / "model", CLASSES)
    os.mkfifo(tmp_path / "labels.pbtxt")
    args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                                 "--model", str(model), "--label", str(tmp_path / "labels.pbtxt")])
    assert run_with_deadline(lambda: predict.main(args)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'labels.pbtxt'}: cannot read the label map (")
    assert "not a regular file" in error
    (model / "model_info.json").unlink()
    os.mkfifo(model / "model_info.json")
    args.label_map = ROOT / "label_map.pbtxt"
    assert run_with_deadline(lambda: predict.main(args)) == 2
    assert "model_info.json: damaged (" in capsys.readouterr().err


def test_an_input_folder_inside_the_output_folder_is_still_read(tmp_path, monkeypatch):
    """Only links are refused: --input out/scans --output out is a layout, not a link into the outputs."""
    save(tmp_path / "out" / "scans" / "scan.png", gray_ramp())
    before = folder_hashes(tmp_path / "out" / "scans")
    assert run(monkeypatch, tmp_path / "out" / "scans", tmp_path / "out") == 0
    assert table_names(tmp_path / "out") == ["scan.png"]
    assert folder_hashes(tmp_path / "out" / "scans") == before
