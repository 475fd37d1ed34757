"""tools/train.py with configs/multi_worker.yaml: Model Garden's MultiWorkerMirroredStrategy, one worker.

The strategy must be made before TensorFlow starts in the process, so the run is a
separate ``tools/train.py`` process, as a user (or each node of a cluster) runs it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_worker_multi_worker_mirrored_smoke_run(tmp_path):
    from busdet.phantoms import write_phantom_dataset

    write_phantom_dataset(tmp_path / "phantoms", 4, seed=0)
    with socket.socket() as probe:  # a free port for the worker's gRPC server
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    # One worker named in TF_CONFIG, as on a cluster of one node.
    tf_config = {"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--data", f"phantoms={tmp_path / 'phantoms'}",
         "--config", str(ROOT / "configs" / "smoke.yaml"), "--config", str(ROOT / "configs" / "multi_worker.yaml"),
         "--model-dir", str(tmp_path / "run"), "--splits", str(tmp_path), "--records", str(tmp_path / "records")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MultiWorkerMirroredStrategy with cluster_spec = {{'worker': ['localhost:{port}']}}" in done.stderr
    assert "num_workers = 1" in done.stderr
    params = (tmp_path / "run" / "params.yaml").read_text()
    assert "distribution_strategy: multi_worker_mirrored" in params
    assert (tmp_path / "run" / "ckpt-6.index").is_file()  # smoke.yaml: 6 steps
