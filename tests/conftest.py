"""Shared fixtures: the label map, the BUSI copy when present, a smoke-trained model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUSI_DIR = ROOT.parent / "shared" / "busi" / "Dataset_BUSI_with_GT"

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
