"""Shared fixtures: the label map, the BUSI copy when present, a smoke-trained model, a browser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUSI_DIR = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that would reach out of the machine on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Keep TensorFlow's start-up chatter out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def label_map_path() -> Path:
    return ROOT / "label_map.pbtxt"


@pytest.fixture(scope="session")
def busi_dir() -> Path:
    """The shared BUSI copy; tests using it are skipped where ../shared is absent."""
    if not BUSI_DIR.is_dir():
        pytest.skip(f"BUSI not available at {BUSI_DIR}")
    return BUSI_DIR


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory) -> Path:
    """A SavedModel trained a few steps on phantoms through the production path.

    Built once per test session (about a minute on 2 cores) and shared by the
    predict, app and training tests. Its predictions are weak but real. Its backbone
    starts from a random weights file, through the path ImageNet weights take.
    """
    from busdet.training.smoke import train_smoke_model, write_random_mobilenet_weights

    work_dir = tmp_path_factory.mktemp("smoke")
    return train_smoke_model(work_dir, init=f"imagenet={write_random_mobilenet_weights(work_dir / 'weights.h5')}")


@pytest.fixture(scope="module")
def browser():
    """Debian's ``/usr/bin/chromium`` driven by Playwright's Python package (never a browser download).

    CI (.ci/run) installs the browser and sets BUSDET_REQUIRE_BROWSER: there a
    missing browser is a failure, not a skip that would hide an untested page.
    """
    required = os.environ.get("BUSDET_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        (pytest.fail if required else pytest.skip)(f"{CHROMIUM} not installed (apt-get install chromium)")
    if required:
        import playwright.sync_api  # noqa: F401  an ImportError fails the test
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package only)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """An existing folder in which no file can be created, even by root.

    ``chmod 555`` stops an ordinary user; root is stopped only by the immutable
    attribute (``chattr +i``, ext4 and friends). Skipped where neither works.
    """
    import shutil
    import subprocess
    import tempfile

    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError:
            pass  # chmod was enough
        else:
            chattr = shutil.which("chattr")
            immutable = bool(chattr) and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
