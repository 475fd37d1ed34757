"""The Streamlit page through ``streamlit.testing.v1.AppTest`` (in-process, no browser).

Fast tests swap ``busdet.inference.load_detector`` / ``run_model`` for fakes that return
known boxes (and no features) and count model calls; the ``slow`` ones run the smoke-trained SavedModel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from busdet import images, inference
from busdet.boxes import Box
from busdet.images import encode_png

APP = Path(__file__).resolve().parents[1] / "app.py"
HOSTILE_NAME = "**x**<script>alert(1)</script>.png"


def phantom_png(seed: int = 0, size=(120, 160)) -> bytes:
    """A speckled gray frame with one dark oval, like a lesion on ultrasound."""
    rng = np.random.default_rng(seed)
    image = rng.normal(110, 25, size).clip(0, 255)
    yy, xx = np.mgrid[:size[0], :size[1]]
    image[((yy - 60) / 25) ** 2 + ((xx - 80) / 35) ** 2 < 1] = 30
    return encode_png(np.repeat(image.astype(np.uint8)[..., None], 3, axis=-1))


class CountingDetect:
    """Stands in for ``busdet.inference.detect``: fixed boxes scaled to the image, calls counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, detector, image):
        self.calls += 1
        height, width = image.shape[:2]
        return [Box(0.25 * width, 0.25 * height, 0.75 * width, 0.75 * height, "malignant", 0.9),
                Box(0.05 * width, 0.05 * height, 0.2 * width, 0.2 * height, "benign", 0.5)]


def patch_detect(monkeypatch, detect) -> None:
    """The model's forward pass becomes ``detect(detector, image) -> boxes``, without features."""
    monkeypatch.setattr(inference, "run_model", lambda detector, image: (detect(detector, image), None))


@pytest.fixture(autouse=True)
def fresh_caches():
    """AppTest runs in this process: each test starts with empty Streamlit caches."""
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def demo_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "demo_phantom.png").write_bytes(phantom_png())
    monkeypatch.setenv("BUSDET_DEMO_DIR", str(folder))
    return folder


@pytest.fixture
def fake_model(monkeypatch, tmp_path, label_map_path) -> CountingDetect:
    """A detector without TensorFlow: ``load_detector`` and ``run_model`` are fakes."""
    detector = inference.Detector(predict=None, classes={1: "benign", 2: "malignant"}, input_size=(384, 384),
                                  score_threshold=0.7, model_dir=tmp_path / "fake_model", info={})
    counter = CountingDetect()
    counter.detector = detector
    monkeypatch.setattr(inference, "load_detector", lambda model_dir, label_map, runtime: detector)
    patch_detect(monkeypatch, counter)
    monkeypatch.setenv("BUSDET_DEMO_DIR", str(tmp_path / "no_demos"))
    return counter


def run_app(timeout: float = 30) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def press_detect(at: AppTest) -> AppTest:
    at.sidebar.button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def all_markdown(at: AppTest) -> str:
    """Every piece of text the page rendered as markdown (titles, captions, alerts, labels)."""
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [e.label for e in at.expander]
    return "\n".join(parts + [b.label for b in at.button] + [b.label for b in at.download_button])


def test_page_runs_clean_without_input(fake_model):
    at = run_app()
    assert not at.error
    assert at.sidebar.button[0].disabled, "Detect needs an image"
    assert "No demo images" in at.sidebar.caption[0].value
    assert "not a medical device" in at.caption[0].value


def test_missing_model_is_one_clear_error_naming_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("BUSDET_MODEL_DIR", str(tmp_path / "nowhere"))
    at = run_app()
    assert len(at.error) == 1
    assert str(tmp_path / "nowhere") in at.error[0].value and "saved_model.pb" in at.error[0].value
    assert not at.sidebar.button, "the page stops before its controls"


def test_about_points_to_the_model_card_without_metrics(fake_model):
    about = run_app().expander[0]
    assert "MODEL_CARD.md" in about.caption[0].value and not about.dataframe


def test_about_names_the_training_datasets_and_shows_their_test_metrics(fake_model):
    from busdet.datasets import citation_line

    fake_model.detector.info["trained_on"] = [{"name": n, "citation": citation_line(n)} for n in ("busi", "busbra")]
    fake_model.detector.info["test_metrics"] = {"busi": {"AP50_lesion": 0.5}, "busbra": {"AP50_lesion": 0.75}}
    at = run_app()
    about = at.expander[0]
    text = " ".join(block.value for block in about.markdown)
    assert "RetinaNet" in text and "Al-Dhabyani" in text and "Gomez-Flores" in text
    metrics = about.dataframe[0].value
    assert metrics.index.tolist() == ["AP50_lesion"] and metrics.loc["AP50_lesion"].tolist() == ["0.500", "0.750"]


def test_demo_image_detect_shows_annotated_image_table_and_downloads(fake_model, demo_dir):
    at = run_app()
    assert at.info and not at.image, "nothing runs before Detect"
    assert fake_model.calls == 0
    press_detect(at)
    assert [i.captions for i in at.image] == [["Original"], ["Detections"]]
    table = at.dataframe[-1].value
    assert table[["label", "score"]].values.tolist() == [["malignant", 0.9]], "0.5 is below the 0.7 default"
    assert table[["xmin", "ymin", "width", "height"]].values.tolist() == [[40, 30, 80, 60]]
    assert "suspicious for malignancy" in all_markdown(at)
    assert "demo_phantom.png" in [t.value for t in at.text]
    assert [b.label for b in at.download_button] == ["Annotated PNG", "Boxes CSV", "Boxes JSON"]
    assert fake_model.calls == 1


def test_slider_changes_boxes_without_running_the_model_again(fake_model, demo_dir, monkeypatch):
    decodes = []
    real_decode = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda data, name: decodes.append(name) or real_decode(data, name))
    at = press_detect(run_app())
    assert at.sidebar.slider[0].value == pytest.approx(0.7), "default is the model's operating point"
    assert len(at.dataframe[-1].value) == 1
    at.sidebar.slider[0].set_value(0.4).run()
    assert len(at.dataframe[-1].value) == 2, "results persist and the lower threshold shows more boxes"
    at.sidebar.slider[0].set_value(0.95).run()
    assert len(at.dataframe[-1].value) == 0
    assert "no lesion above the threshold" in all_markdown(at)
    assert fake_model.calls == 1
    assert len(decodes) == 1, "the image is decoded once, not on every slider move"


def test_bad_file_is_named_and_the_others_still_run(fake_model):
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("broken.png", b"not an image at all", "image/png"),
                                           ("good.png", phantom_png(1), "image/png")]).run()
    press_detect(at)
    assert len(at.error) == 1
    assert "broken.png: not a recognised image format" in [t.value for t in at.text]
    summary = at.dataframe[0].value
    assert summary["filename"].tolist() == ["broken.png", "good.png"]
    assert summary["status"].tolist() == ["error", "ok"]
    assert [e.label for e in at.expander[1:]] == ["Image 2: suspicious for malignancy (0.90)"]
    assert [b.label for b in at.download_button][0] == "All results (ZIP)"
    assert fake_model.calls == 1


def test_model_failure_on_one_file_is_named_and_the_others_still_run(fake_model, monkeypatch):
    def fail_on_tiny(detector, image):
        if image.shape[0] < 10:
            raise ValueError("cannot resize")
        return fake_model(detector, image)

    patch_detect(monkeypatch, fail_on_tiny)
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("tiny.png", encode_png(np.zeros((4, 4, 3), np.uint8)), "image/png"),
                                           ("good.png", phantom_png(1), "image/png")]).run()
    press_detect(at)
    assert len(at.error) == 1
    assert "tiny.png: model failed (ValueError: cannot resize)" in [t.value for t in at.text]
    assert at.dataframe[0].value["status"].tolist() == ["error", "ok"]


def test_new_input_waits_for_detect_again(fake_model):
    at = run_app()
    at.sidebar.file_uploader[0].set_value(("one.png", phantom_png(1), "image/png")).run()
    press_detect(at)
    assert at.image
    at.sidebar.file_uploader[0].set_value(("two.png", phantom_png(2), "image/png")).run()
    assert not at.image and at.info


@pytest.mark.parametrize("content", [phantom_png(3), b"\x89PNG\r\n\x1a\n truncated"])
def test_file_names_are_shown_literally_never_as_markup(fake_model, content):
    at = run_app()
    at.sidebar.file_uploader[0].set_value((HOSTILE_NAME, content, "image/png")).run()
    press_detect(at)
    shown = [t.value for t in at.text]
    assert any(text.startswith(HOSTILE_NAME) for text in shown), shown
    assert "<script>" not in all_markdown(at) and "**x**" not in all_markdown(at)
    assert not at.html


@pytest.mark.slow
def test_smoke_model_end_to_end_slider_reuses_detections(smoke_model, label_map_path, demo_dir, monkeypatch):
    monkeypatch.setenv("BUSDET_MODEL_DIR", str(smoke_model))
    monkeypatch.setenv("BUSDET_LABEL_MAP", str(label_map_path))
    calls = []
    real_run_model = inference.run_model
    monkeypatch.setattr(inference, "run_model",
                        lambda detector, image: calls.append(1) or real_run_model(detector, image))
    at = press_detect(run_app(timeout=300))
    assert not at.error
    assert [i.captions for i in at.image] == [["Original"], ["Detections"]]
    at.sidebar.slider[0].set_value(0.0).run()
    assert not at.exception
    low = len(at.dataframe[-1].value)
    at.sidebar.slider[0].set_value(1.0).run()
    assert len(at.dataframe[-1].value) <= low
    assert len(calls) == 1


# --- hostile input (issue 11): one clear error, no traceback, the other files still run ---


def test_multi_page_tiff_upload_is_named_and_the_others_still_run(fake_model):
    import io

    from PIL import Image

    pages = [Image.fromarray(np.full((40, 60), value, np.uint8)) for value in (40, 90)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("cine.tif", buffer.getvalue(), "image/tiff"),
                                           ("good.png", phantom_png(1), "image/png")]).run()
    press_detect(at)
    assert len(at.error) == 1
    assert "cine.tif: holds 2 pages (multi-page TIFF); only single images are read: save each one as its own file" \
        in [t.value for t in at.text]
    assert at.dataframe[0].value["status"].tolist() == ["error", "ok"]
    assert fake_model.calls == 1


@pytest.mark.parametrize("damage", ["truncated model info", "other classes"])
def test_damaged_or_mismatched_model_is_one_error(monkeypatch, tmp_path, label_map_path, damage):
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    info = '{"input_size": [640, 6' if damage == "truncated model info" else '{"classes": {"1": "cyst"}}'
    (model / "model_info.json").write_text(info)
    monkeypatch.setenv("BUSDET_MODEL_DIR", str(model))
    monkeypatch.setenv("BUSDET_LABEL_MAP", str(label_map_path))
    at = run_app()
    assert len(at.error) == 1 and "No usable model" in at.error[0].value
    detail = [t.value for t in at.text]
    assert len(detail) == 1 and detail[0].startswith(str(model / "model_info.json") if damage.startswith("trunc")
                                                     else f"{label_map_path}: classes")
    assert not at.sidebar.button, "the page stops before its controls"


# --- DICOM and cine loops (issue 13) ----------------------------------------------


def dicom_upload(dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def page_text(at: AppTest) -> str:
    """Everything the page shows as text: markdown, captions, plain text, tables, widget labels."""
    parts = [all_markdown(at)] + [t.value for t in at.text] + [c.value for c in at.caption]
    parts += [frame.value.to_csv() for frame in at.dataframe]
    parts += [s.label for s in at.select_slider] + [s.help or "" for s in at.select_slider]
    return "\n".join(parts)


def test_dicom_upload_shows_sizes_in_mm_from_its_calibrated_region(fake_model):
    from busdet.dicom_phantoms import phantom_dicom
    from busdet.phantoms import generate_phantom

    image = generate_phantom(5, "benign", width=320, height=240).image
    data = dicom_upload(phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01))
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("IM000001", data, "application/octet-stream")]).run()
    press_detect(at)
    table = at.dataframe[-1].value
    # CountingDetect answers the middle half of what it is given: the 260 x 190 region.
    assert table[["label", "xmin", "ymin", "width", "height"]].values.tolist() == [["malignant", 105, 78, 130, 94]]
    assert table[["width_mm", "height_mm"]].values.tolist() == [[13.0, 9.4]]
    assert "suspicious for malignancy (0.90); largest lesion 13.0 x 9.4 mm" in all_markdown(at)
    assert [i.captions for i in at.image] == [["Original"], ["Detections"]]
    assert not at.select_slider, "a single frame has no frame slider"


class LoopDetect:
    """Stands in for ``detect`` on a loop: benign everywhere, malignant in frame 7."""

    def __init__(self):
        self.calls = 0

    def __call__(self, detector, image):
        self.calls += 1
        height, width = image.shape[:2]
        label, score = ("malignant", 0.8) if self.calls == 7 else ("benign", 0.75)
        return [Box(0.25 * width, 0.25 * height, 0.5 * width, 0.5 * height, label, score)]


def test_cine_upload_has_a_frame_slider_starting_on_the_most_suspicious_frame(fake_model, monkeypatch):
    from pydicom.uid import JPEGBaseline8Bit

    from busdet.dicom_phantoms import FAKE_PHI, moving_lesion_frames, phantom_dicom

    loop_detect = LoopDetect()
    patch_detect(monkeypatch, loop_detect)
    frames, _ = moving_lesion_frames(count=12)
    data = dicom_upload(phantom_dicom(frames, "YBR_FULL_422", JPEGBaseline8Bit, phi=True))
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("loop.dcm", data, "application/dicom")]).run()
    press_detect(at)
    slider = at.select_slider[0]
    assert slider.options == [str(n) for n in range(1, 13)] and slider.value == 7
    assert "Frame 7 of 12: suspicious for malignancy (0.80)" in [c.value for c in at.caption]
    assert at.dataframe[-1].value["label"].tolist() == ["malignant"]
    assert [b.label for b in at.download_button] == ["Annotated PNG", "Boxes CSV", "Boxes JSON", "Annotated MP4",
                                                     "DICOM report (SR)", "DICOM annotated image (SC)"]
    slider.set_value(3).run()
    assert "Frame 3 of 12: benign-appearing lesion (0.75)" in [c.value for c in at.caption]
    assert at.dataframe[-1].value["label"].tolist() == ["benign"]
    assert "suspicious for malignancy (0.80)" in all_markdown(at), "the file's finding stays the key frame's"
    assert loop_detect.calls == 12, "moving the slider does not run the model"
    shown = page_text(at)
    assert not [value for value in FAKE_PHI.values() if len(value) > 3 and value in shown]
def test_dicom_upload_without_a_study_is_told_why_it_gets_no_dicom_report(fake_model):
    from busdet.dicom_phantoms import phantom_dicom
    from busdet.phantoms import generate_phantom

    dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image, phi=True)
    del dataset.StudyInstanceUID
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("orphan.dcm", dicom_upload(dataset), "application/dicom")]).run()
    press_detect(at)
    assert [b.label for b in at.download_button] == ["Annotated PNG", "Boxes CSV", "Boxes JSON"]
    assert ("No DICOM report for this file: the file has no StudyInstanceUID: a PACS could not file results "
            "for it.") in [c.value for c in at.caption]


# --- the runtime (issue 12) ---------------------------------------------------------------


def test_runtime_comes_from_the_environment_and_is_shown(fake_model, demo_dir, monkeypatch):
    asked = []
    monkeypatch.setattr(inference, "load_detector",
                        lambda model_dir, label_map, runtime: asked.append(runtime) or fake_model.detector)
    monkeypatch.setenv("BUSDET_RUNTIME", "tensorflow")
    at = run_app()
    assert asked == ["tensorflow"]
    assert f"Model runtime: {inference.describe_runtime(fake_model.detector)}" in [c.value for c in at.sidebar.caption]


def test_page_served_by_onnx_runtime_never_imports_tensorflow(tmp_path, demo_dir):
    """The shipped model on a fresh interpreter: first result after Detect, TensorFlow never loaded."""
    import os
    import subprocess
    import sys

    script = ("import sys; from streamlit.testing.v1 import AppTest; "
              "at = AppTest.from_file(sys.argv[1], default_timeout=120); at.run(); at.sidebar.button[0].click().run(); "
              "print('tensorflow' in sys.modules, len(at.image), not at.exception); print(at.sidebar.caption[-1].value)")
    environment = {**os.environ, "BUSDET_DEMO_DIR": str(demo_dir), "BUSDET_RUNTIME": "onnx"}
    done = subprocess.run([sys.executable, "-c", script, str(APP)], capture_output=True, text=True, env=environment,
                          cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["False", "2", "True"], done.stderr
    assert lines[1].startswith("Model runtime: ONNX Runtime ") and lines[1].endswith("model.onnx)")


def test_hostile_upload_names_and_dicom_geometry_behave_as_in_the_cli(fake_model):
    """Issue 20 on the page: formula and CR names go through as they are (the downloads neutralise them
    exactly as predict.py's tables: busdet.tables), a DICOM whose header disagrees with its pixels is one line."""
    from busdet.dicom_phantoms import phantom_dicom
    from busdet.phantoms import generate_phantom

    dataset = phantom_dicom(generate_phantom(5, "benign", width=200, height=150).image)
    dataset.PixelData = dataset.PixelData + bytes(200 * 150)
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("=cmd.png", phantom_png(1), "image/png"),
                                           ("a\rb.png", phantom_png(2), "image/png"),
                                           ("IM000001", dicom_upload(dataset), "application/octet-stream")]).run()
    press_detect(at)
    assert at.dataframe[0].value["filename"].tolist() == ["=cmd.png", "a\rb.png", "IM000001"]
    assert at.dataframe[0].value["status"].tolist() == ["ok", "ok", "error"]
    assert ("IM000001: DICOM pixel data holds 60,000 bytes but its header declares 1 frame(s) of 200x150 pixels, "
            "30,000 bytes; header and pixels disagree (a file cut short, or a wrong header), not read"
            in [t.value for t in at.text])


# --- hostile input on the page: what predict.py's rounds could not see ------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_renamed_png_is_named_and_the_others_still_run(fake_model, fmt):
    """An animated GIF or WebP under a PNG name is refused by its format, not read as its first frame."""
    import io

    from PIL import Image

    frames = [Image.fromarray(np.full((40, 60, 3), value, np.uint8)) for value in (40, 90, 140)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("cine.png", buffer.getvalue(), "image/png"),
                                           ("good.png", phantom_png(1), "image/png")]).run()
    press_detect(at)
    assert len(at.error) == 1
    assert (f"cine.png: is in {fmt} format; only PNG, JPEG, BMP and TIFF images are read: save it as PNG"
            in [t.value for t in at.text])
    assert at.dataframe[0].value["status"].tolist() == ["error", "ok"]
    assert fake_model.calls == 1


def test_names_with_control_or_bidi_characters_are_shown_escaped(fake_model):
    """A line feed would split the file's line, a right-to-left override show "gnp.scan" as "scan.png"."""
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("two\nlines.png", phantom_png(1), "image/png"),
                                           ("\u202egnp.scan", b"not an image", "image/png")]).run()
    press_detect(at)
    shown = [t.value for t in at.text]
    assert "\\u202egnp.scan: not a recognised image format" in shown
    assert "two\\nlines.png" in shown
    assert at.dataframe[0].value["filename"].tolist() == ["two\nlines.png", "\u202egnp.scan"], "the data as given"


def test_dicom_identifier_dicom_cannot_hold_refuses_the_report_up_front_quoting_nothing(fake_model, capfd, caplog,
                                                                                       recwarn):
    """A birth date that is not a DICOM date made the report's button fail when pressed, and the error,
    which quotes the date, went to the server's log: the page now says why there is no report instead."""
    import warnings

    from busdet.dicom_phantoms import FAKE_PHI, phantom_dicom
    from busdet.phantoms import generate_phantom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's word on the value set here
        dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image, phi=True)
        dataset.PatientBirthDate = "PHI-BAD-DATE"
        data = dicom_upload(dataset)
    capfd.readouterr()
    caplog.clear()
    at = run_app()
    at.sidebar.file_uploader[0].set_value([("IM000001", data, "application/octet-stream")]).run()
    press_detect(at)
    assert [b.label for b in at.download_button] == ["Annotated PNG", "Boxes CSV", "Boxes JSON"]
    assert ("No DICOM report for this file: cannot build the DICOM results (ValueError)."
            in [c.value for c in at.caption])
    printed = capfd.readouterr()
    seen = "\n".join([page_text(at), printed.out, printed.err, *caplog.messages, *(str(w.message) for w in recwarn)])
    assert not [value for value in [*FAKE_PHI.values(), "PHI-BAD-DATE"] if len(value) > 3 and value in seen]


def test_tables_offer_no_csv_export_of_their_own():
    """Streamlit's table toolbar would export "=cmd.png" as a formula; the page's own CSVs neutralise it."""
    import tomllib

    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["disableDataExport"] is True


def test_unforeseen_errors_show_their_type_only():
    """An exception's message or traceback may quote a file's name or a DICOM value: the page shows the type."""
    import tomllib

    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "type"
