"""End to end in a real browser: ``streamlit run app.py``, upload a phantom, press Detect.

Drives Debian's ``/usr/bin/chromium`` through Playwright's Python package (never a
browser download), against the smoke-trained model on a free loopback port.

    apt-get install -y chromium && pip install playwright   # once
    pytest -m browser tests/test_browser.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from busdet.images import encode_png
from busdet.phantoms import generate_phantom

# Needs the smoke-trained TensorFlow model as well as a browser.
pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
# The first page load imports TensorFlow and loads the model, slow on 2 busy cores.
PAGE_TIMEOUT_MS = 180_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()}")


@pytest.fixture
def app_url(browser, smoke_model, label_map_path, tmp_path):
    """``streamlit run app.py`` on a free loopback port with the smoke model; stopped afterwards.

    Takes ``browser`` first, so that a missing browser skips (or fails) before any work."""
    port, log_path = free_port(), tmp_path / "streamlit.log"
    env = {**os.environ, "BUSDET_MODEL_DIR": str(smoke_model), "BUSDET_LABEL_MAP": str(label_map_path),
           "BUSDET_DEMO_DIR": str(tmp_path / "no_demos")}
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, server, log_path)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_upload_detect_shows_annotated_image_and_table(browser, app_url, tmp_path):
    from playwright.sync_api import expect

    upload = tmp_path / "phantom_malignant.png"
    upload.write_bytes(encode_png(generate_phantom(seed=5, label="malignant").image))
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(app_url)
        page.locator("input[type=file]").set_input_files(str(upload))
        detect = page.get_by_role("button", name="Detect")
        expect(detect).to_be_enabled(timeout=PAGE_TIMEOUT_MS)
        detect.click()
        main = page.locator("[data-testid='stMain']")
        expect(main.get_by_text("Detections", exact=True)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        expect(main.locator("[data-testid='stImage'] img")).to_have_count(2)
        expect(main.locator("[data-testid='stDataFrame']")).to_be_visible()
        expect(main.get_by_text("phantom_malignant.png", exact=True)).to_be_visible()
        expect(main.get_by_role("button", name="Annotated PNG")).to_be_visible()
        assert not page.locator("[data-testid='stException']").count()
        for width, height in [(1366, 900), (1920, 1080)]:  # a laptop and a wide monitor
            page.set_viewport_size({"width": width, "height": height})
            page.screenshot(path=str(tmp_path / f"app_{width}x{height}.png"), full_page=True)
    finally:
        page.close()
    assert (tmp_path / "app_1366x900.png").stat().st_size > 0
