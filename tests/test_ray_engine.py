"""predict.py --engine ray (busdet.ray_engine) against --engine local, and --resume for both engines.

One local Ray instance of 2 CPUs serves the whole module (starting one takes seconds);
the tests that use it, and the one that starts a Python, are marked slow (about a minute in all).
The model is the fake :class:`Detector` of test_predict.py, shipped to the actors by
Ray; its boxes follow each image's content, so every image gets its own rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import predict
from busdet.phantoms import generate_phantom
from test_predict import (ROOT, _write_bad_inputs, fake_detector, folder_hashes, gray_ramp, multi_page_tiff,
                          outputs, read_tables, run_cli, save)


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs, as in CI; predict.py joins it instead of starting its own."""
    import test_predict
    from busdet import ray_engine

    # The fake detector lives in the test modules, which the workers cannot import: ship them by value.
    for module in (test_predict, sys.modules[__name__]):
        ray_engine.ray.cloudpickle.register_pickle_by_value(module)
    ray_engine.start_ray(num_cpus=2)
    yield
    ray_engine.ray.shutdown()


def content_answer(image: np.ndarray) -> dict:
    """Boxes that depend on the pixels (one to three, class by brightness); fails on 333-wide images."""
    if image.shape[1] == 333:
        raise RuntimeError("fake model failure")
    mean = float(image.mean()) / 255
    count = 1 + int(image.shape[1]) % 3
    boxes = [[0.1 * k, 0.05 + 0.1 * k, 0.5 + 0.1 * k, 0.4 + mean / 2] for k in range(count)]
    return outputs(boxes, [1 + (k + int(mean * 10)) % 2 for k in range(count)],
                   [0.95 - 0.2 * k - mean / 10 for k in range(count)])


def write_phantom_folder(folder: Path, count: int = 6) -> Path:
    """``count`` phantoms of different sizes, the bad files of test_predict.py, a multi-page TIFF,
    a note, and one image the fake model fails on."""
    labels = ["benign", "malignant", "normal"]
    for seed in range(count):
        phantom = generate_phantom(seed, labels[seed % 3], width=200 + 17 * seed, height=160 + 9 * seed)
        save(folder / f"{phantom.label} ({seed}).png", phantom.image)
    _write_bad_inputs(folder)
    multi_page_tiff(folder / "cine.tif", 2)
    save(folder / "model fails.png", gray_ramp(333, 120))
    return folder


def run_engine(monkeypatch, engine: str, input_dir: Path, output_dir: Path, *extra) -> int:
    return run_cli(monkeypatch, fake_detector(content_answer), "--input", input_dir, "--output", output_dir,
                   "--engine", engine, *extra)


@pytest.mark.slow
def test_both_engines_write_identical_tables_and_copies(tmp_path, monkeypatch, capsys, ray_instance):
    write_phantom_folder(tmp_path / "in")
    assert run_engine(monkeypatch, "local", tmp_path / "in", tmp_path / "local") == 1
    assert run_engine(monkeypatch, "ray", tmp_path / "in", tmp_path / "ray") == 1
    assert folder_hashes(tmp_path / "ray") == folder_hashes(tmp_path / "local")  # tables and annotated copies
    predictions, images = read_tables(tmp_path / "ray")
    assert len(images) == 13 and len(predictions) > 7
    rows = images.set_index("filename")
    assert rows.loc["model fails.png", "error"] == "model failed (RuntimeError: fake model failure)"
    assert rows.loc["cine.tif", "error"].startswith("holds 2 pages")
    assert (rows["status"] == "error").sum() == 6
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'model fails.png'}: model failed" in err  # named, as locally
    assert "13/13" in err and "img/s" in err  # progress: done/total and the rate


def stop_on_third_model_call(input_dir: Path, output_dir: Path, monkeypatch) -> list:
    """A local run stopped by Ctrl-C as the model gets its third image; returns the ok rows kept."""
    detector = fake_detector(content_answer, interrupt_on_call=3)
    assert run_cli(monkeypatch, detector, "--input", input_dir, "--output", output_dir) == 130
    images = read_tables(output_dir)[1]
    assert 2 < len(images) < 13  # two images the model saw, and the bad files listed before them
    return images.loc[images["status"] == "ok", "filename"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_resume_keeps_finished_images_and_does_the_rest(tmp_path, monkeypatch, capsys, engine, ray_instance):
    write_phantom_folder(tmp_path / "in")
    assert run_engine(monkeypatch, "local", tmp_path / "in", tmp_path / "whole") == 1
    ok_rows = stop_on_third_model_call(tmp_path / "in", tmp_path / "out", monkeypatch)
    kept = {name: (tmp_path / "out" / name).stat().st_ino for name in ok_rows}  # a rewrite gives a new inode
    assert len(kept) == 2
    capsys.readouterr()
    assert run_engine(monkeypatch, engine, tmp_path / "in", tmp_path / "out") == 2  # no --resume: refused
    assert run_engine(monkeypatch, engine, tmp_path / "in", tmp_path / "out", "--resume") == 1
    assert folder_hashes(tmp_path / "out") == folder_hashes(tmp_path / "whole")
    assert {name: (tmp_path / "out" / name).stat().st_ino for name in kept} == kept
    err = capsys.readouterr().err
    assert "2 of them kept from the earlier run's tables (--resume)" in err
    assert "11/11" in err  # 13 images less the 2 kept (error rows are done again)


def test_resume_redoes_error_rows_and_missing_copies(tmp_path, monkeypatch, capsys):
    for name in ["a.png", "b.png", "c.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run_cli(monkeypatch, fake_detector(fail_on_call=2), "--input", tmp_path / "in",
                   "--output", tmp_path / "out") == 1
    assert read_tables(tmp_path / "out")[1]["status"].tolist() == ["ok", "error", "ok"]
    (tmp_path / "out" / "c.png").unlink()
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out", "--resume") == 0
    assert len(detector.calls) == 2  # b (its error row) and c (its copy gone); a is kept
    assert read_tables(tmp_path / "out")[1]["status"].tolist() == ["ok", "ok", "ok"]
    assert (tmp_path / "out" / "c.png").is_file()


def test_resume_with_tables_that_cannot_be_read_back_stops_before_any_work(tmp_path, monkeypatch, capsys):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images.csv").write_text("name,size\nscan.png,3\n")
    detector = fake_detector()
    assert run_cli(monkeypatch, detector, "--input", tmp_path / "in", "--output", tmp_path / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'out' / 'images.csv'}: cannot resume from it (columns ")
    assert err.endswith("use --overwrite to start again\n") and err.count("\n") == 1
    assert detector.calls == []


@pytest.mark.parametrize("argv, message", [
    (["--resume", "--overwrite"], "--resume keeps an earlier run's rows, --overwrite replaces them: give one"),
    (["--ray-address", "auto"], "--ray-address needs --engine ray")])
def test_contradictory_options_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    save(tmp_path / "in" / "scan.png", gray_ramp())
    assert run_cli(monkeypatch, fake_detector(), "--input", tmp_path / "in", "--output", tmp_path / "out",
                   *argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


SCRIPT = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import predict, test_predict
predict.load_detector = lambda model, label_map, runtime="auto": test_predict.fake_detector()
status = predict.main(predict.get_args_parser().parse_args(sys.argv[1:]))
print("ray imported" if "ray" in sys.modules else "ray not imported", status)
"""


def run_script(tmp_path: Path, *argv) -> subprocess.CompletedProcess:
    save(tmp_path / "in" / "scan.png", gray_ramp())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"))
    return subprocess.run([sys.executable, "-c", code, "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), *argv], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_local_engine_never_imports_ray(tmp_path):
    done = run_script(tmp_path)
    assert done.stdout.strip() == "ray not imported 0", done.stderr
    assert "ray" not in predict.get_args_parser().parse_args([]).engine


@pytest.mark.slow
def test_actors_that_cannot_load_the_model_stop_the_run_with_one_line(tmp_path, monkeypatch, capsys, ray_instance):
    """The model folder missing on the worker nodes: exit 1, one line, the tables written."""
    from busdet.inference import ModelLoadError

    driver = os.getpid()

    def load_here_only(model, label_map, runtime="auto"):
        if os.getpid() != driver:
            raise ModelLoadError(f"{model}: no SavedModel here (expected {model}/saved_model.pb)")
        return fake_detector()

    save(tmp_path / "in" / "scan.png", gray_ramp())
    monkeypatch.setattr(predict, "load_detector", load_here_only)
    args = predict.get_args_parser().parse_args(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                                 "--engine", "ray"])
    assert predict.main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: the Ray run stopped (")
    assert errors[0].endswith("0 images are in the tables, --resume continues")
    assert read_tables(tmp_path / "out")[1].empty


@pytest.mark.slow
def test_hostile_names_come_out_of_both_engines_alike(tmp_path, monkeypatch, ray_instance):
    """Names that are not UTF-8 (Arrow strings must be), hold a CR or start a formula: same files either way."""
    for name in [os.fsdecode(b"caf\xe9.png"), "scan\r01.png", "=cmd.png", "plain.png"]:
        save(tmp_path / "in" / name, gray_ramp())
    assert run_engine(monkeypatch, "local", tmp_path / "in", tmp_path / "local") == 0
    assert run_engine(monkeypatch, "ray", tmp_path / "in", tmp_path / "ray") == 0
    assert folder_hashes(tmp_path / "ray") == folder_hashes(tmp_path / "local")


@pytest.mark.slow
def test_sigterm_stops_the_ray_run_and_keeps_what_finished(tmp_path, ray_instance):
    from busdet import batch, cli, ray_engine
    from busdet.files import read_csv

    for letter in "abcdef":
        save(tmp_path / "in" / f"{letter}.png", gray_ramp())
    plan = batch.plan_batch(tmp_path / "in", tmp_path / "out")

    def terminated_after_two(records, total=None):
        for count, record in enumerate(records):
            if count == 2:
                raise cli.Terminated()  # what busdet.cli's SIGTERM handler raises
            yield record

    result = ray_engine.run_batch(lambda: fake_detector(content_answer), plan, 0.5, progress=terminated_after_two)
    assert result.interrupted and result.terminated
    assert len(read_csv(tmp_path / "out" / "images.csv")) == 2


RAY_DRIVER = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import predict, test_predict, test_ray_engine
from busdet import cli, ray_engine
for module in (test_predict, test_ray_engine):
    ray_engine.ray.cloudpickle.register_pickle_by_value(module)
predict.load_detector = lambda *args: test_predict.fake_detector(test_ray_engine.slow_after_first)
sys.exit(cli.run_command(predict.main, predict.get_args_parser()))
"""


def slow_after_first(image):
    """The fake model on Ray's actors: 201-pixel-wide images go at once, every other takes 60 s."""
    import time

    if image.shape[1] != 201:
        time.sleep(60)
    return content_answer(image)


@pytest.mark.slow
def test_sigterm_to_a_ray_run_saves_the_tables_and_exits_143(tmp_path):
    """ray.init replaces the SIGTERM handler; predict.py must still save what finished."""
    import signal
    import time

    fast = [f"a{k}.png" for k in range(4)]  # one block of rows (ray_engine.ROWS_PER_BLOCK) that finishes
    for name in fast:
        save(tmp_path / "in" / name, gray_ramp(201, 100))
    for k in range(4):
        save(tmp_path / "in" / f"b{k}.png", gray_ramp())
    script = RAY_DRIVER.format(root=str(ROOT), tests=str(ROOT / "tests"))
    process = subprocess.Popen([sys.executable, "-c", script, "--input", str(tmp_path / "in"), "--output",
                                str(tmp_path / "out"), "--engine", "ray"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / fast[-1]).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err
    from busdet.files import read_csv
    # The tables are written; which finished records Ray Data has streamed back by then is its business.
    assert set(read_csv(tmp_path / "out" / "images.csv")["filename"]) <= set(fast)
