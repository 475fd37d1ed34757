"""busdet.files: atomic writes (also under SIGKILL), the one CSV and JSON form, safe names, folder checks."""

from __future__ import annotations

import os
import re
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


def test_atomic_path_gives_each_writer_its_own_file_and_removes_it_on_failure(tmp_path):
    from busdet.files import atomic_path

    path = tmp_path / "val.tfrecord"
    with atomic_path(path) as first, atomic_path(path) as second:  # two builds of one file at once
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"first build")
        second.write_bytes(b"second build")
        assert not path.exists()
    assert path.read_bytes() == b"first build"  # each moved its own whole file; the last one stays
    assert [p.name for p in tmp_path.iterdir()] == ["val.tfrecord"]
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("reading an image failed")
    assert path.read_bytes() == b"first build" and [p.name for p in tmp_path.iterdir()] == ["val.tfrecord"]


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


def test_csv_quotes_carriage_returns_and_keeps_undecodable_bytes(tmp_path):
    from busdet.files import read_csv

    names = ["a\rb.png", "c\nd.png", os.fsdecode(b"caf\xe9.png"), 'q",x.png', "plain.png"]
    frame = pd.DataFrame({"filename": pd.Series(names, dtype=object), "n": range(5)})
    write_csv(frame, tmp_path / "t.csv")
    data = (tmp_path / "t.csv").read_bytes()
    assert data == (b'filename,n\n"a\rb.png",0\n"c\nd.png",1\ncaf\xe9.png,2\n"q"",x.png",3\nplain.png,4\n')
    assert data == csv_bytes(frame)
    assert read_csv(tmp_path / "t.csv")["filename"].tolist() == names


@pytest.mark.parametrize("cell, written", [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
                                           ("\tx", "'\tx"), ("'quoted", "''quoted"), ("safe=1", "safe=1")])
def test_formula_cells_are_neutralised_and_read_back_unchanged(tmp_path, cell, written):
    from busdet.files import read_csv

    write_csv(pd.DataFrame({"filename": [cell], "score": [-0.5]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[1] == f"{written},-0.5"  # numbers are left alone
    assert read_csv(tmp_path / "t.csv")["filename"].tolist() == [cell]


def test_printable_escapes_control_characters_and_undecodable_bytes():
    from busdet.files import printable

    assert printable(os.fsdecode(b"caf\xe9\r01\x1b[31m.png")) == "caf\\xe9\\r01\\x1b[31m.png"
    assert printable("café scan (1).png") == "café scan (1).png"


def test_open_regular_refuses_a_named_pipe_without_blocking(tmp_path):
    from busdet.files import NotRegularFileError, is_regular_file, open_regular

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(NotRegularFileError):
        open_regular(tmp_path / "pipe.png")
    assert not is_regular_file(tmp_path / "pipe.png") and not is_regular_file(tmp_path)
    with open_regular(saved(tmp_path, "a.bin", b"abc")) as stream:
        assert stream.read() == b"abc"


def test_unreadable_reason_names_broken_links_loops_and_special_files(tmp_path):
    from busdet.files import BROKEN_LINK_REASON, LINK_LOOP_REASON, NOT_REGULAR_REASON, unreadable_reason

    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "chain.png").symlink_to(tmp_path / "dangling.png")  # a link to a broken link
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    (tmp_path / "link.png").symlink_to(saved(tmp_path, "real.png", b"x"))
    os.mkfifo(tmp_path / "pipe.png")
    assert BROKEN_LINK_REASON == "broken link (its target does not exist)"
    assert unreadable_reason(tmp_path / "dangling.png") == unreadable_reason(tmp_path / "chain.png") \
        == BROKEN_LINK_REASON
    assert LINK_LOOP_REASON.startswith("link loop")
    assert unreadable_reason(tmp_path / "a.png") == unreadable_reason(tmp_path / "self.png") == LINK_LOOP_REASON
    assert unreadable_reason(tmp_path / "pipe.png") == NOT_REGULAR_REASON
    assert unreadable_reason(tmp_path / "gone.png") == "file not found"
    assert unreadable_reason(tmp_path) == "a folder, not a file"
    assert unreadable_reason(tmp_path / "real.png") is None and unreadable_reason(tmp_path / "link.png") is None


def test_folder_problem_and_the_output_check_name_a_folder_link_that_leads_nowhere(tmp_path):
    from busdet.files import BROKEN_LINK_REASON, LINK_LOOP_REASON, folder_problem

    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert folder_problem(tmp_path) is None and folder_problem(tmp_path / "linked") is None
    assert folder_problem(tmp_path / "gone") == "folder not found"
    assert folder_problem(saved(tmp_path, "a.png", b"x")) == "a file, not a folder"
    assert folder_problem(tmp_path / "dangling") == BROKEN_LINK_REASON
    assert folder_problem(tmp_path / "loop") == LINK_LOOP_REASON
    for folder, reason in [(tmp_path / "dangling" / "sub", BROKEN_LINK_REASON), (tmp_path / "loop", LINK_LOOP_REASON)]:
        with pytest.raises(OutputError, match=rf"^{tmp_path}/(dangling|loop): {re.escape(reason)}$"):
            check_writable_folder(folder)


def test_folder_lock_refuses_a_second_holder_and_cleans_up(tmp_path):
    from busdet.files import LOCK_FILE, FolderLockedError, folder_lock

    with folder_lock(tmp_path / "new") as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderLockedError, match=f"another run \\(process {os.getpid()}\\) is writing there"):
            with folder_lock(tmp_path / "new"):
                pass
    assert not (tmp_path / "new").exists()  # created by the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / LOCK_FILE).write_text("12345\n")  # stale: no process holds it
    with folder_lock(tmp_path / "kept"):
        pass
    assert list((tmp_path / "kept").iterdir()) == []


def test_folder_lock_of_a_killed_holder_is_taken_over(tmp_path):
    from busdet.files import folder_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from busdet.files import folder_lock\n"
                               "with folder_lock(sys.argv[2]):\n print('held', flush=True); time.sleep(60)",
                               str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


# --- hostile tables (issue 20, third round): read_csv never shifts, pads or guesses ------------------


@pytest.mark.parametrize("body, reason", [
    (b"a.png,1,2,EXTRA\n", "line 2: 4 cells, but the header has 3"),  # pandas took a.png as the row's index
    (b"a.png,1\n", "line 2: 2 cells, but the header has 3"),          # pandas left the last cell empty
    (b'a.png,1,"2\n', "line 2: a quote opened here is never closed"),
    (b"a.png,1,2\n" + b"x" * 200_000 + b",1,2\n", "line 3: a cell longer than 131072 characters"),
    (b"a\x00.png,1,2\n", "not text (it holds NUL bytes)"),
], ids=["cell too many", "cell too few", "unclosed quote", "very long cell", "NUL bytes"])
def test_read_csv_refuses_a_damaged_table_naming_the_line(tmp_path, body, reason):
    from busdet.files import read_csv

    with pytest.raises(pd.errors.ParserError, match=f"^{re.escape(reason)}"):
        read_csv(saved(tmp_path, "t.csv", b"filename,x,y\n" + body))


def test_read_csv_refuses_a_column_named_twice(tmp_path):
    from busdet.files import read_csv

    with pytest.raises(pd.errors.ParserError, match="line 1: column.s. x named twice"):
        read_csv(saved(tmp_path, "t.csv", b"filename,x,x\na.png,1,2\n"))


def test_read_csv_reads_byte_order_marks_utf16_and_line_ends_alike(tmp_path):
    from busdet.files import read_csv

    text = 'filename,x\n"two\nlines.png",1\n\nb.png,=2\n'
    expected = read_csv(saved(tmp_path, "plain.csv", text.encode()))
    assert expected["filename"].tolist() == ["two\nlines.png", "b.png"]
    assert list(expected.index) == [2, 5], "each row's first line; the blank line passed over"
    for name, data in {"bom": b"\xef\xbb\xbf" + text.encode(), "utf16": text.encode("utf-16"),
                       "utf16be": b"\xfe\xff" + text.encode("utf-16-be"),
                       "crlf": text.replace("\n", "\r\n").replace("two\r\nlines", "two\nlines").encode()}.items():
        frame = read_csv(saved(tmp_path, f"{name}.csv", data))
        assert list(frame.columns) == ["filename", "x"], name
        assert frame.equals(expected), name


def test_read_table_names_the_file_and_the_reason(tmp_path):
    from busdet.files import TableError, read_table

    (tmp_path / "folder.csv").mkdir()
    cases = {saved(tmp_path, "zero.csv", b""): "file is empty (expected the header filename,split)",
             saved(tmp_path, "cols.csv", b"filename\na.png\n"): "missing column(s) split",
             saved(tmp_path, "ragged.csv", b"filename,split\na,b,c\n"): "not a CSV table (line 2: 3 cells",
             tmp_path / "folder.csv": "a folder, not a file", tmp_path / "none.csv": "file not found"}
    for path, reason in cases.items():
        with pytest.raises(TableError, match=f"^{re.escape(f'{path}: {reason}')}"):
            read_table(path, ["filename", "split"])
    assert read_table(saved(tmp_path, "ok.csv", b"split,extra,filename\nval,,a.png\n"),
                      ["filename", "split"])["filename"].tolist() == ["a.png"]


@pytest.mark.parametrize("name", ["a" * 251 + ".png", "é" * 123 + ".png"])  # 255 and 250 bytes
def test_atomic_write_takes_a_name_as_long_as_the_file_system_allows(tmp_path, name):
    """The temporary name added 38 bytes to the target's: an output named as a long input could not be written."""
    from busdet.files import atomic_path, atomic_write

    with atomic_write(tmp_path / name) as stream:
        stream.write(b"data")
    with atomic_path(tmp_path / ("b" + name[1:])) as temp:
        temp.write_bytes(b"more")
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"data", b"more"]
