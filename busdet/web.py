"""The in-browser page (``web/``): build its static site and serve it on localhost.

    build_site("web/dist", "saved_model", "label_map.pbtxt")   # sources + runtime + model + site.json
    make_server("web/dist", port=8502).serve_forever()         # http://127.0.0.1:8502/
    with serving("web/dist") as url: ...                       # a free port, in the background (tests)

The page runs ``model.onnx`` with ONNX Runtime Web (WebAssembly) inside the
visitor's browser: images are decoded, analysed and drawn there and never sent
anywhere. Everything it loads is a file of the built site, served from one origin:
the page's own sources (``web/index.html``, ``web/app.js``, ``web/style.css``),
onnxruntime-web's module and ``.wasm`` files copied from ``web/node_modules`` (``npm ci``,
pinned in ``web/package-lock.json``), the model, and ``site.json``.

``site.json`` is derived here from the shipped ``model_info.json``, ``label_map.pbtxt``
and ``ood_stats.npz`` and from the package's own constants (colours, texts, table
columns, the in-distribution check's cut-offs), so the page cannot carry a second,
hand-written copy of any of them.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from busdet import about, drawing, images, ood, results, tables
from busdet.files import write_json
from busdet.inference import (DEFAULT_INPUT_SIZE, FEATURES_OUTPUT, ONNX_FILE, TOO_ELONGATED, ModelLoadError,
                              check_classes, default_score_threshold, find_onnx_problem, load_checked_ood_stats,
                              read_model_info)
from busdet.label_map import load_label_map

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
SOURCE_FILES = ("index.html", "app.js", "style.css")
RUNTIME_PACKAGE = "onnxruntime-web"
# The WebAssembly build without WebGPU/WebGL: its ES module, the Emscripten glue it
# imports and the SIMD (+threads) binary. Nothing else of the package is served.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
VENDOR_DIR = "vendor"
SITE_CONFIG_FILE = "site.json"
# What the browser decodes as the Python readers do (TIFF and DICOM stay with `make run`).
WEB_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
NOTICE = ("Research tool, not a medical device: it does not diagnose and does not replace a radiologist. "
          "The model runs in this browser: images never leave this computer, nothing is uploaded, "
          "stored or logged, and the page loads nothing from any other site.")
DEFAULT_PORT = 8502
# Cross-origin isolation lets ONNX Runtime Web use threads (SharedArrayBuffer); the
# policy makes the browser itself refuse any request to another origin.
SECURITY_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                               "img-src 'self' blob: data:; worker-src 'self' blob:; connect-src 'self'; "
                               "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".json": "application/json", ".onnx": "application/octet-stream", ".css": "text/css",
              ".html": "text/html; charset=utf-8"}


class SiteBuildError(RuntimeError):
    """The site cannot be built: the message names the missing or unusable file and the fix."""


def runtime_version(web_dir: Path = WEB_DIR) -> str:
    """The onnxruntime-web version installed in ``web_dir/node_modules`` (what ``npm ci`` put there)."""
    manifest = web_dir / "node_modules" / RUNTIME_PACKAGE / "package.json"
    if not manifest.is_file():
        raise SiteBuildError(f"{manifest}: missing; run `npm ci` in {web_dir} (make web does)")
    return json.loads(manifest.read_text(encoding="utf-8"))["version"]


def metrics_table(info: dict) -> Optional[Dict[str, List]]:
    """The About box's test metrics (:func:`busdet.about.recorded_test_metrics`) as
    ``{"columns": [dataset...], "rows": [[metric, value...]...]}``; None when none were recorded."""
    frame = about.recorded_test_metrics(info)
    if frame is None:
        return None
    return {"columns": list(frame.columns), "rows": [[name, *values] for name, values in zip(frame.index,
                                                                                            frame.values.tolist())]}


def ood_config(model_dir: Path, info: dict) -> dict:
    """The in-distribution check (:mod:`busdet.ood`) for the page: the statistics read from
    ``ood_stats.npz`` (None for a model that records none: the cheap tests still run), the
    cheap tests' parameters and cut-offs, and the texts, with Python format fields
    (``{:.1f}``, ``{:.0%}``) the page fills as Python does.

    Raises:
      ModelLoadError: the statistics are missing, altered or fitted on another SavedModel
        (:func:`busdet.ood.find_ood_problem`).
    """
    stats = load_checked_ood_stats(model_dir, info)
    learned = None if stats is None else {"means": stats.means.tolist(), "precision": stats.precision.tolist(),
                                          "threshold": stats.threshold, "datasets": list(stats.datasets)}
    return {
        "features_output": FEATURES_OUTPUT,
        "learned": learned,
        "colour_spread": ood.COLOUR_SPREAD, "max_colour_fraction": ood.MAX_COLOUR_FRACTION,
        "flat_spread": ood.FLAT_SPREAD, "flat_darkest": ood.FLAT_DARKEST, "max_flat_fraction": ood.MAX_FLAT_FRACTION,
        "learned_reason": ood.LEARNED_REASON, "colour_reason": ood.COLOUR_REASON, "flat_reason": ood.FLAT_REASON,
        "warning_template": ood.WARNING_TEMPLATE, "untrusted_finding": results.UNTRUSTED_FINDING,
        "untrusted_caption": results.UNTRUSTED_CAPTION,
    }


def site_config(model_dir: Path, label_map_path: Path, web_dir: Path = WEB_DIR) -> dict:
    """What the page needs besides the model, JSON-ready: classes, operating point, colours,
    texts, table columns, limits, and what serves the model.

    Raises:
      ModelLoadError: the label map differs from the model's classes, ``model.onnx``
        is missing or not made from the SavedModel beside it, or the in-distribution
        statistics are stale (:func:`ood_config`).
    """
    info = read_model_info(model_dir)
    classes = load_label_map(label_map_path)
    check_classes(classes, info, label_map_path, model_dir)
    problem = find_onnx_problem(model_dir, info)
    if problem:
        raise ModelLoadError(f"{problem}; the page serves only the ONNX file made from the SavedModel")
    return {
        "classes": {str(class_id): name for class_id, name in classes.items()},
        "score_threshold": default_score_threshold(info),
        "input_size": list(info.get("input_size", DEFAULT_INPUT_SIZE)),
        "too_elongated_text": TOO_ELONGATED,
        "model_file": ONNX_FILE,
        "model_sha256": info["onnx"]["sha256"],
        "runtime": f"ONNX Runtime Web {runtime_version(web_dir)} (WebAssembly)",
        "class_colours": {name: list(colour) for name, colour in drawing.CLASS_COLOURS.items()},
        "other_colour": list(drawing.OTHER_COLOUR),
        "text_colour": list(drawing.TEXT_COLOUR),
        "no_lesion_text": drawing.NO_LESION_TEXT,
        "prediction_columns": tables.PREDICTION_COLUMNS,
        "box_columns": [c for c in tables.BOX_COLUMNS if not c.endswith("_mm")],  # no calibration in PNG/JPEG
        "image_extensions": list(WEB_IMAGE_EXTENSIONS),
        "max_image_pixels": images.MAX_IMAGE_PIXELS,
        "notice": NOTICE,
        "ood": ood_config(model_dir, info),
        "about": {"model": about.model_markdown(info), "training_data": about.training_data_markdown(info),
                  "limits": about.LIMITS_MARKDOWN, "test_metrics": metrics_table(info)},
    }


def build_site(site_dir: str | Path, model_dir: str | Path, label_map_path: str | Path,
               web_dir: Path = WEB_DIR) -> Path:
    """Assembles the static site in ``site_dir`` (replaced whole) and returns it.

    Raises:
      SiteBuildError: ``npm ci`` has not been run, or a source file is missing.
      ModelLoadError: see :func:`site_config`.
    """
    site_dir, model_dir = Path(site_dir), Path(model_dir)
    config = site_config(model_dir, Path(label_map_path), web_dir)
    runtime_dir = web_dir / "node_modules" / RUNTIME_PACKAGE / "dist"
    sources = [web_dir / name for name in SOURCE_FILES] + [runtime_dir / name for name in RUNTIME_FILES]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise SiteBuildError(f"missing {', '.join(missing)}; run `npm ci` in {web_dir} (make web does)")
    staging = site_dir.with_name(site_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / VENDOR_DIR).mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copy2(web_dir / name, staging / name)
    for name in RUNTIME_FILES:
        shutil.copy2(runtime_dir / name, staging / VENDOR_DIR / name)
    shutil.copy2(model_dir / ONNX_FILE, staging / ONNX_FILE)
    write_json(config, staging / SITE_CONFIG_FILE)
    shutil.rmtree(site_dir, ignore_errors=True)
    staging.rename(site_dir)  # a server never sees half a site
    log.info("built %s (%s)", site_dir, config["runtime"])
    return site_dir


class SiteRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of one folder, with :data:`SECURITY_HEADERS`; GET and HEAD only, no listing."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def list_directory(self, path):  # noqa: ARG002 - the site has an index.html; never show folders
        self.send_error(404)
        return None

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def make_server(site_dir: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> http.server.HTTPServer:
    """A threading HTTP server for ``site_dir`` (not started; ``port=0`` picks a free one)."""
    handler = functools.partial(SiteRequestHandler, directory=str(site_dir))
    return http.server.ThreadingHTTPServer((host, port), handler)


@contextlib.contextmanager
def serving(site_dir: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serves ``site_dir`` on a free port from a background thread for the block; yields its URL."""
    server = make_server(site_dir, host, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
