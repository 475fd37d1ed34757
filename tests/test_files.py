"""busdet.files: atomic writes (also under SIGKILL), the one CSV and JSON form, safe names, folder checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from busdet.files import (OutputError, atomic_write, check_output_file, check_writable_folder, csv_bytes, json_text,
                          write_csv, write_json)

ROOT = Path(__file__).resolve().parents[1]


def saved(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_atomic_write_replaces_on_success(tmp_path):
    path = tmp_path / "sub" / "out.csv"
    with atomic_write(path, "w") as stream:
        stream.write("a,b\n")
        assert not path.exists(), "nothing visible before the end"
    assert path.read_text(encoding="utf-8") == "a,b\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.csv"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_the_old_file_and_no_temp_on_exception(tmp_path, error):
    path = saved(tmp_path, "out.csv", b"old\n")
    with pytest.raises(error):
        with atomic_write(path, "wb") as stream:
            stream.write(b"half of the new")
            raise error()
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_write_leaves_nothing_when_there_was_no_file(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.json", "w"):
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_refuses_to_overwrite_when_asked(tmp_path):
    path = saved(tmp_path, "out.csv", b"keep\n")
    with pytest.raises(FileExistsError, match="out.csv"):
        with atomic_write(path, "w", overwrite=False) as stream:
            stream.write("lost")
    assert path.read_bytes() == b"keep\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.csv", "w") as stream:
            stream.write("x")
        assert (tmp_path / "new.csv").stat().st_mode & 0o777 == 0o644, "not mkstemp's private 0600"
        existing = saved(tmp_path, "existing.csv", b"x")
        existing.chmod(0o640)
        with atomic_write(existing, "w") as stream:
            stream.write("y")
        assert existing.stat().st_mode & 0o777 == 0o640, "a replaced file keeps its mode"
    finally:
        os.umask(umask)


def test_text_mode_writes_utf8_and_keeps_newlines(tmp_path):
    path = tmp_path / "t.csv"
    with atomic_write(path, "w") as stream:
        stream.write("bénin\r\nx\n")
    assert path.read_bytes() == "bénin\r\nx\n".encode("utf-8")


KILLED_WRITER = """
import os, signal, sys
from busdet.files import atomic_write
with atomic_write(sys.argv[1], "w") as stream:
    stream.write("half of the new table")
    stream.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("existing", [False, True])
def test_a_killed_writer_leaves_no_temporary_file(tmp_path, existing):
    """SIGKILL runs no cleanup: the half-written file must never have had a name (issue 11, case 7)."""
    path = tmp_path / "predictions.csv"
    if existing:
        path.write_bytes(b"old\n")
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT, capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == (["predictions.csv"] if existing else [])
    if existing:
        assert path.read_bytes() == b"old\n"


def test_csv_bytes_are_what_write_csv_writes(tmp_path):
    frame = pd.DataFrame({"filename": ["a b.png", "ç.png"], "width": pd.array([3, None], dtype="Int64")})
    write_csv(frame, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == csv_bytes(frame) == "filename,width\na b.png,3\nç.png,\n".encode()


def test_json_is_written_as_shown_and_nan_is_refused(tmp_path):
    write_json({"a": [1, None], "b": "é"}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == json_text({"a": [1, None], "b": "é"})
    with pytest.raises(ValueError):
        write_json({"a": float("nan")}, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_writable_folder_check_creates_nothing(tmp_path):
    check_writable_folder(tmp_path / "new" / "deeper")  # would be created in tmp_path: fine
    check_writable_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_writable_folder(tmp_path / "file" / "sub")


def test_writable_folder_check_refuses_a_read_only_folder(unwritable_folder):
    for folder in (unwritable_folder, unwritable_folder / "not_yet"):
        with pytest.raises(OutputError, match=f"{folder}: cannot write there"):
            check_writable_folder(folder)


def test_output_file_check_refuses_a_folder(tmp_path):
    with pytest.raises(OutputError, match="is a folder; name the file to write"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "annotations.csv")
