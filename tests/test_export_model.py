"""tools/export_model.py's arguments: one source (a run or an exported SavedModel), one line per mistake.

The export itself (checkpoint -> SavedModel + model.onnx) runs in the smoke-model
fixture (tests/conftest.py) and is checked in tests/test_inference.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "export_model.py"


def run_tool(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], capture_output=True, text=True)


def test_onnx_for_a_folder_without_a_saved_model_is_one_line_and_exit_2(tmp_path):
    done = run_tool("--onnx-for", tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path}: no SavedModel here (expected {tmp_path / 'saved_model.pb'})\n"
    assert list(tmp_path.iterdir()) == []


def test_needs_exactly_one_source(tmp_path):
    for argv in ([], ["--model-dir", tmp_path, "--onnx-for", tmp_path]):
        done = run_tool(*argv)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "--model-dir" in done.stderr.splitlines()[-1] and "--onnx-for" in done.stderr.splitlines()[-1]
