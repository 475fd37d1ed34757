"""The in-browser page (``web/``, :mod:`busdet.web`): its build, its server, and the page in Chromium.

The browser tests build the site from ``web/node_modules`` (``make test`` runs ``npm ci``
first), serve it on a free loopback port and drive Debian's ``/usr/bin/chromium``
through Playwright, with the shipped ``saved_model/model.onnx``:

    pytest -m browser tests/test_web.py
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busdet import drawing, tables, web
from busdet.boxes import above_threshold
from busdet.images import read_image
from busdet.inference import ModelLoadError, detect, find_shape_problem, load_detector
from busdet.label_map import load_label_map
from busdet.ood_samples import document_like, photo_like, with_colour_overlay
from busdet.phantoms import generate_phantom
from busdet.results import analyse_image, result_finding, result_finding_line

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "saved_model"
BUSI_DIR = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"  # optional here: phantoms always run
PAGE_TIMEOUT_MS = 180_000
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3
# Detections below this score are compared too, but the tail near the model's own floor
# may hold a box more or less on either runtime: it is no part of any shown result.
COMPARED_SCORE_FLOOR = 0.05


# ---------------------------------------------------------------- build and server, no browser

def test_site_config_carries_the_shipped_in_distribution_check(label_map_path):
    from busdet import ood, results
    from busdet.inference import compute_saved_model_digest, read_model_info

    info = read_model_info(MODEL_DIR)
    stats = ood.load_ood_stats(MODEL_DIR, info, compute_saved_model_digest(MODEL_DIR))
    config = web.site_config(MODEL_DIR, label_map_path)["ood"]
    np.testing.assert_array_equal(np.array(config["learned"]["means"]), stats.means)
    np.testing.assert_array_equal(np.array(config["learned"]["precision"]), stats.precision)
    assert config["learned"]["threshold"] == stats.threshold
    assert (config["max_colour_fraction"], config["max_flat_fraction"]) == (ood.MAX_COLOUR_FRACTION,
                                                                           ood.MAX_FLAT_FRACTION)
    assert config["warning_template"] == ood.WARNING_TEMPLATE
    assert config["untrusted_finding"] == results.UNTRUSTED_FINDING


def test_site_build_refuses_stale_in_distribution_statistics(tmp_path, label_map_path):
    import shutil

    from busdet.inference import read_model_info, write_model_info

    model_dir = tmp_path / "model"
    shutil.copytree(MODEL_DIR, model_dir)
    info = read_model_info(model_dir)
    info["ood"]["saved_model_sha256"] = "0" * 64
    write_model_info(model_dir, info)
    with pytest.raises(ModelLoadError, match="stale, fitted on another SavedModel"):
        web.build_site(tmp_path / "dist", model_dir, label_map_path)
    assert not (tmp_path / "dist").exists()


def test_site_config_is_derived_from_the_shipped_model_and_package(label_map_path):
    config = web.site_config(MODEL_DIR, label_map_path)
    info_threshold = pd.read_json(MODEL_DIR / "model_info.json", typ="series")["score_threshold"]
    assert config["classes"] == {str(k): v for k, v in load_label_map(label_map_path).items()}
    assert config["score_threshold"] == pytest.approx(info_threshold)
    assert config["class_colours"] == {name: list(c) for name, c in drawing.CLASS_COLOURS.items()}
    assert config["prediction_columns"] == tables.PREDICTION_COLUMNS
    assert config["no_lesion_text"] == drawing.NO_LESION_TEXT
    assert "doi:10.1016/j.dib.2019.104863" in config["about"]["training_data"]  # BUSI's citation
    assert config["about"]["test_metrics"]["columns"] == ["busi", "busbra", "pooled"]


def test_site_config_refuses_a_label_map_other_than_the_models(tmp_path):
    swapped = tmp_path / "label_map.pbtxt"
    swapped.write_text('item { id: 1 name: "malignant" }\nitem { id: 2 name: "benign" }\n')
    with pytest.raises(ModelLoadError, match="differ from the model's"):
        web.site_config(MODEL_DIR, swapped)


def test_build_without_npm_ci_names_the_fix(tmp_path, label_map_path):
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    for name in web.SOURCE_FILES:
        (web_dir / name).write_text("")
    with pytest.raises(web.SiteBuildError, match="npm ci"):
        web.build_site(tmp_path / "dist", MODEL_DIR, label_map_path, web_dir=web_dir)
    assert not (tmp_path / "dist").exists()


@pytest.fixture
def static_server(tmp_path):
    (tmp_path / "site" / "vendor").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>t</title>")
    (tmp_path / "site" / "vendor" / "x.wasm").write_bytes(b"\0asm")
    with web.serving(tmp_path / "site") as url:
        yield url.rstrip("/")


def test_server_isolates_the_page_and_lists_no_folder(static_server):
    with urllib.request.urlopen(f"{static_server}/") as response:
        headers = response.headers
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    with urllib.request.urlopen(f"{static_server}/vendor/x.wasm") as response:
        assert response.headers["Content-Type"] == "application/wasm"
    for path, method in [("/vendor/", "GET"), ("/", "POST")]:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(urllib.request.Request(f"{static_server}{path}", data=b"" if method == "POST"
                                                          else None, method=method))
        assert error.value.code in (404, 501)


# ---------------------------------------------------------------- the page in Chromium

@pytest.fixture(scope="module")
def site_url(browser, tmp_path_factory, label_map_path):
    """The built site served on a free loopback port (after ``browser``: a missing browser skips first)."""
    try:
        site = web.build_site(tmp_path_factory.mktemp("web") / "dist", MODEL_DIR, label_map_path)
    except web.SiteBuildError as error:
        (pytest.fail if os.environ.get("BUSDET_REQUIRE_BROWSER") == "1" else pytest.skip)(str(error))
    with web.serving(site) as url:
        yield url


@pytest.fixture(scope="module")
def reference_detector(label_map_path):
    """What ``predict.py --runtime onnx`` runs, in this process, for every detection unrounded."""
    return load_detector(MODEL_DIR, label_map_path, "onnx")


class RecordedPage:
    """A fresh page on the site that records every request it makes."""

    def __init__(self, browser, url):
        self.context = browser.new_context(accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.requests, self.errors = [], []
        self.context.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-state=idle], body[data-state=failed]")
        assert self.page.get_attribute("body", "data-state") == "idle", self.page.text_content("#status-text")

    def open_files(self, paths):
        done = len(self.records()) + len(paths)
        self.page.set_input_files("#files", [str(p) for p in paths])
        self.page.wait_for_selector(f"body[data-state=idle][data-analysed='{done}']")

    def drop_file(self, name: str, data: bytes):
        """Drops one file on the drop zone, as a user dragging it from the desktop."""
        done = len(self.records()) + 1
        transfer = self.page.evaluate_handle(
            "([name, bytes]) => { const t = new DataTransfer(); "
            "t.items.add(new File([new Uint8Array(bytes)], name)); return t; }", [name, list(data)])
        self.page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
        self.page.wait_for_selector(f"body[data-state=idle][data-analysed='{done}']")

    def records(self):
        return self.page.evaluate("() => (window.busdet?.page.records ?? []).map(({canvas, ...r}) => r)")

    def model_runs(self) -> int:
        return self.page.evaluate("() => window.busdet.page.modelRuns")

    def set_threshold(self, value: float):
        self.page.locator("#threshold").fill(str(value))

    def download(self, scope, label: str) -> bytes:
        with self.page.expect_download() as info:
            scope.get_by_text(label, exact=True).click()
        return Path(info.value.path()).read_bytes()

    def close(self):
        self.context.close()


@pytest.fixture
def open_page(browser, site_url):
    pages = []

    def opener():
        pages.append(RecordedPage(browser, site_url))
        return pages[-1]

    yield opener
    for page in pages:
        page.close()


def write_phantom(folder: Path, name: str, seed: int, label: str, **size) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(generate_phantom(seed, label, **size).image).save(path)
    return path


def test_page_finds_a_lesion_and_the_slider_filters_without_rerunning(open_page, tmp_path, reference_detector):
    from playwright.sync_api import expect

    path = write_phantom(tmp_path, "phantom_malignant.png", 5, "malignant")
    view = open_page()
    page = view.page
    expect(page.locator("#notice")).to_contain_text("images never leave this computer")
    expect(page.locator("#about-text")).to_contain_text("doi:10.1016/j.dib.2019.104863")
    assert page.evaluate("() => self.crossOriginIsolated && window.busdet.threads") == min(4, os.cpu_count())
    view.open_files([path])
    reference = reference_result(reference_detector, path)
    shown = reference.shown_boxes
    assert shown, "the shipped model finds the phantom's lesion"
    result = page.locator("article.result")
    expect(result.locator(".finding")).to_have_text(result_finding_line(reference))
    expect(result.locator("table.boxes tbody tr")).to_have_count(len(shown))
    assert [c.get_attribute("width") for c in result.locator("canvas").all()] == ["878"] * 2

    view.set_threshold(0)
    expect(result.locator("table.boxes tbody tr")).to_have_count(len(view.records()[0]["detections"]))
    view.set_threshold(1)
    expect(result.locator("table.boxes tbody tr")).to_have_count(0)
    expect(result.locator(".finding")).to_have_text(result_finding_line(reference.at_threshold(1)))
    page.get_by_role("button", name="Operating point").click()
    expect(result.locator("table.boxes tbody tr")).to_have_count(len(shown))
    assert view.model_runs() == 1, "moving the threshold must not run the model again"

    annotated = Image.open(io.BytesIO(view.download(result, "Annotated PNG")))
    assert annotated.size == (878, 751) and annotated.format == "PNG"
    assert not np.array_equal(np.asarray(annotated.convert("RGB")), read_image(path)), "boxes are drawn"
    csv = pd.read_csv(io.BytesIO(view.download(result, "Boxes CSV")))
    assert list(csv.columns) == tables.PREDICTION_COLUMNS and len(csv) == len(shown)
    assert not view.errors


def test_no_request_leaves_the_origin_or_carries_an_image(open_page, tmp_path):
    paths = [write_phantom(tmp_path, "a.png", 1, "benign", width=320), write_phantom(tmp_path, "b.jpg", 2,
                                                                                    "malignant", width=300)]
    view = open_page()
    view.open_files(paths)
    view.set_threshold(0.2)
    view.download(view.page.locator("#summary"), "All boxes CSV")
    origin = urlsplit(view.page.url).netloc
    images = [path.read_bytes() for path in paths]
    for request in view.requests:
        url = urlsplit(request.url)
        assert url.scheme == "http" and url.netloc == origin, f"request to another origin: {request.url}"
        assert request.method == "GET" and not request.post_data_buffer, f"request with a body: {request.url}"
        assert not any(image[:64].hex() in request.url or request.url.endswith(p.name)
                       for image, p in zip(images, paths)), f"request naming an image: {request.url}"
    served = {urlsplit(r.url).path for r in view.requests}
    assert served <= {"/", "/app.js", "/style.css", "/site.json", "/model.onnx",
                      *(f"/{web.VENDOR_DIR}/{name}" for name in web.RUNTIME_FILES)}, served


def test_a_broken_file_gets_its_message_and_the_others_still_run(open_page, tmp_path):
    from playwright.sync_api import expect

    good = write_phantom(tmp_path, "good.png", 3, "benign", width=300)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:400])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 5000), 90, np.uint8)).save(strip)  # under 1 px across once fitted to 640x640
    view = open_page()
    view.open_files([truncated, empty, text, strip, good])
    view.drop_file("dropped.bmp", bmp_bytes(generate_phantom(4, "malignant", width=280).image))
    errors = view.page.locator("#errors .error")
    expect(errors).to_have_count(4)
    expect(errors.nth(0)).to_have_text("truncated.png: cannot decode image (damaged or truncated PNG)")
    expect(errors.nth(1)).to_have_text("empty.png: file is empty")
    expect(errors.nth(2)).to_contain_text("notes.jpg: not a PNG, JPEG or BMP image")
    # The same words as predict.py's error row (busdet.inference.find_shape_problem), and no model run.
    expect(errors.nth(3)).to_have_text(f"strip.png: {find_shape_problem(1, 5000, (640, 640))}")
    expect(view.page.locator("article.result h2")).to_have_text(["good.png", "dropped.bmp"])
    assert view.model_runs() == 2 and not view.errors


def bmp_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="BMP")
    return buffer.getvalue()


def comparison_images(folder: Path, busi_root: Path) -> list:
    """Phantoms in the three formats (and sizes that letterbox both ways), plus 10 BUSI images when present."""
    paths = [write_phantom(folder, f"phantom_{i}_{label}.{ext}", seed, label, **size)
             for i, (seed, label, ext, size) in enumerate([
                 (5, "malignant", "png", {}), (1, "benign", "png", {"width": 500, "height": 380}),
                 (7, "malignant", "png", {"width": 360, "height": 560}), (2, "benign", "jpg", {"width": 640}),
                 (8, "malignant", "bmp", {"width": 420}), (11, "normal", "png", {"width": 600})])]
    if busi_root.is_dir():
        busi = sorted(p for p in busi_root.glob("*/*.png") if "_mask" not in p.name)
        for source in busi[:: max(1, len(busi) // 10)][:10]:
            paths.append(folder / source.name)
            paths[-1].write_bytes(source.read_bytes())  # a scratch copy under tmp_path, never committed
    return paths


def boxes_match(page_box: dict, box) -> bool:
    corners = [(page_box[k], getattr(box, k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    return (page_box["label"] == box.label and abs(page_box["score"] - box.score) <= SCORE_TOLERANCE
            and all(abs(a - b) <= BOX_TOLERANCE_PX for a, b in corners))


def run_predict_py(folder: Path, output: Path) -> bytes:
    """``predict.py --runtime onnx`` over ``folder``: its ``predictions.csv`` bytes."""
    command = [sys.executable, str(ROOT / "predict.py"), "--input", str(folder), "--output", str(output),
               "--runtime", "onnx", "--model", str(MODEL_DIR), "--label", str(ROOT / "label_map.pbtxt")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    return (output / "predictions.csv").read_bytes()


def assert_same_csv(page_bytes: bytes, cli_bytes: bytes) -> None:
    """The same rows within the tolerances; every row whose numbers agree is the same text, byte for byte."""
    read = lambda data: pd.read_csv(io.BytesIO(data), keep_default_na=False)  # noqa: E731
    page, cli = read(page_bytes), read(cli_bytes)
    assert list(page.columns) == list(cli.columns) == tables.PREDICTION_COLUMNS
    assert len(page) == len(cli) > 0
    cli["cli_score"] = cli["score"]
    merged = pd.merge_asof(page.sort_values("score"), cli.sort_values("score"), on="score", by=["filename", "label"],
                           direction="nearest", suffixes=("", "_cli"), tolerance=SCORE_TOLERANCE)
    assert merged["cli_score"].notna().all(), merged
    geometry = ["xmin", "ymin", "width", "height"]
    for column in geometry:
        assert (merged[column] - merged[f"{column}_cli"]).abs().max() <= BOX_TOLERANCE_PX, column
    differing = (merged[geometry].to_numpy() != merged[[f"{c}_cli" for c in geometry]].to_numpy()).any(axis=1) \
        | (merged["score"] != merged["cli_score"])
    cli_lines = set(cli_bytes.decode().splitlines())
    page_lines = page_bytes.decode().splitlines()
    assert page_lines[0] == cli_bytes.decode().splitlines()[0]
    assert sum(line not in cli_lines for line in page_lines[1:]) == differing.sum()


def reference_result(detector, path: Path):
    """What ``predict.py --runtime onnx`` records for one file (boxes, in-distribution check), at its threshold."""
    return analyse_image(detector, path.name, lambda: read_image(path), detector.score_threshold)[0]


def test_same_boxes_as_predict_py(open_page, tmp_path, reference_detector):
    paths = comparison_images(tmp_path / "in", BUSI_DIR)
    cli_csv = run_predict_py(tmp_path / "in", tmp_path / "out")
    view = open_page()
    view.open_files(paths)
    records = {r["filename"]: r for r in view.records()}
    threshold = reference_detector.score_threshold
    for path in paths:
        record, reference = records[path.name], detect(reference_detector, read_image(path))
        assert record["error"] is None and (record["width"], record["height"]) == read_image(path).shape[1::-1]
        compared = [b for b in reference if b.score >= COMPARED_SCORE_FLOOR + SCORE_TOLERANCE]
        for box in compared:
            assert any(boxes_match(p, box) for p in record["detections"]), f"{path.name}: page misses {box}"
        page_shown = [p for p in record["detections"] if p["score"] >= threshold]
        assert len(page_shown) == len(above_threshold(reference, threshold)), path.name
    assert_same_csv(view.download(view.page.locator("#summary"), "All boxes CSV"), cli_csv)
    findings = view.page.locator("article.result .finding").all_text_contents()
    assert findings == [result_finding_line(reference_result(reference_detector, p)) for p in paths]


def test_a_photo_a_document_and_a_doppler_frame_get_the_warning_as_in_predict_py(open_page, tmp_path,
                                                                                 reference_detector):
    from playwright.sync_api import expect

    from busdet.images import write_image

    paths = []
    for name, image in [("photo.png", photo_like(0)), ("report.png", document_like(0)),
                        ("doppler.png", with_colour_overlay(generate_phantom(0, "benign").image, 0))]:
        paths.append(tmp_path / "in" / name)
        write_image(paths[-1], image)
    cli_csv = run_predict_py(tmp_path / "in", tmp_path / "out")
    view = open_page()
    view.open_files(paths)
    records = {r["filename"]: r for r in view.records()}
    for number, path in enumerate(paths, 1):
        reference = reference_result(reference_detector, path)
        assert reference.in_distribution is False, path.name
        check = records[path.name]["check"]
        assert check["score"] == pytest.approx(reference.check.score, rel=1e-3), path.name
        assert tuple(check["reasons"]) == reference.check.reasons, path.name
        article = view.page.locator(f"article.result[data-image='{number}']")
        expect(article.locator(".warning")).to_have_text(reference.warning[0].upper() + reference.warning[1:] + ".")
        expect(article.locator(".finding")).to_have_text(result_finding_line(reference))
        assert "malignan" not in article.locator(".finding").text_content()
    summary = view.page.locator("#summary-table tbody tr td:nth-child(3)").all_text_contents()
    assert summary == [result_finding(reference_result(reference_detector, p)) for p in paths]
    page_csv = view.download(view.page.locator("#summary"), "All boxes CSV")
    assert pd.read_csv(io.BytesIO(page_csv))["in_distribution"].eq(False).all()
    if len(pd.read_csv(io.BytesIO(cli_csv))):
        assert_same_csv(page_csv, cli_csv)
    else:
        assert page_csv == cli_csv
    assert not view.errors
