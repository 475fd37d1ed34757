"""Writing files: atomically, as CSV or JSON, under safe names, into folders checked first.

    with atomic_write(path, "w") as stream: ...     # the old file or the whole new one, never half
    write_csv(frame, path)                          # the one CSV form: UTF-8, "\\n", no index
    write_json(data, path)                          # indented UTF-8 JSON, NaN refused
    check_writable_folder(output_dir)               # before any work: can files be created there?

Every module that writes a table, a report, a figure or an image goes through
:func:`atomic_write`, so that a crash, Ctrl-C or a kill never leaves a truncated
file, and a killed writer leaves no temporary file either (Linux).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import tempfile
import uuid
from pathlib import Path, PurePath
from typing import Iterator, Optional, Tuple, Union

import pandas as pd

PathLike = Union[str, Path]


class OutputError(ValueError):
    """An output that cannot be written where asked (checked before any work); the message says why."""


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", overwrite: bool = True) -> Iterator:
    """Opens a temporary file beside ``path`` and moves it into place on success.

    A crash or Ctrl-C leaves either the old file or no file, never half of one. On
    Linux the temporary file has no name until it is complete, so even a killed
    process (SIGKILL, power cut) leaves nothing behind. The new file gets the
    permissions a plain ``open()`` would give: those of the file it replaces, else
    0666 minus the umask. With ``overwrite=False`` an existing ``path`` raises
    FileExistsError first.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = _create_temp_file(path, path.stat().st_mode & 0o777 if path.exists() else 0o666)
    try:
        binary = "b" in mode
        with os.fdopen(handle, mode, encoding=None if binary else "utf-8", newline=None if binary else "") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
            if temp_name is None:  # unnamed: give it a name while it is still open
                temp_name = _link_unnamed(stream.fileno(), path)
        os.replace(temp_name, path)
    except BaseException:
        if temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
        raise


def _temp_name(path: Path) -> str:
    return str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")


def _create_temp_file(path: Path, permissions: int) -> Tuple[int, Optional[str]]:
    """``(descriptor, None)`` for an unnamed file in ``path``'s folder (Linux ``O_TMPFILE``),
    else ``(descriptor, name)`` of a hidden temporary file beside ``path``."""
    if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, permissions), None
        except OSError as error:  # a file system without O_TMPFILE: fall back to a named file
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    name = _temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(name, flags, permissions), name


def _link_unnamed(descriptor: int, path: Path) -> str:
    """Links the complete unnamed file under a temporary name beside ``path``; returns the name."""
    name = _temp_name(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:  # a directory descriptor makes os.link use linkat(), which follows /proc's magic link
        os.link(f"/proc/self/fd/{descriptor}", name, src_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)
    return name


def _write_csv_text(frame: pd.DataFrame, stream) -> None:
    """The one CSV form of every table written or downloaded: ``\\n`` line ends, no index."""
    frame.to_csv(stream, index=False, lineterminator="\n")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as CSV bytes (UTF-8), exactly what :func:`write_csv` writes to a file."""
    buffer = io.StringIO()
    _write_csv_text(frame, buffer)
    return buffer.getvalue().encode("utf-8")


def write_csv(frame: pd.DataFrame, path: PathLike, overwrite: bool = True) -> None:
    """Writes ``frame`` as CSV (UTF-8) atomically: never a half-written table."""
    with atomic_write(path, "w", overwrite=overwrite) as stream:
        _write_csv_text(frame, stream)


# The one JSON form: indented, UTF-8 as is, NaN and infinity refused (``null`` them first).
_JSON_OPTIONS = {"indent": 1, "ensure_ascii": False, "allow_nan": False}


def json_text(data) -> str:
    """``data`` as JSON text ending in a newline, exactly what :func:`write_json` writes."""
    return json.dumps(data, **_JSON_OPTIONS) + "\n"


def write_json(data, path: PathLike, overwrite: bool = True) -> None:
    """Writes ``data`` as JSON (UTF-8) atomically."""
    with atomic_write(path, "w", overwrite=overwrite) as stream:
        json.dump(data, stream, **_JSON_OPTIONS)
        stream.write("\n")


def safe_stem(filename: str) -> str:
    """A file-name stem safe to write or offer for download: ``"../a b*.png"`` -> ``"a_b_"``.

    Keeps letters, digits, ``-``, ``_`` and ``.``; anything else (path parts,
    spaces, quotes, brackets, markup) becomes ``_``.
    """
    stem = PurePath(filename.replace("\\", "/")).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "image"


def check_writable_folder(folder: PathLike) -> None:
    """Checks, before any work, that files can be created in ``folder``.

    A folder that does not exist yet is checked where it would be created (its
    nearest existing parent). The check creates and removes an unnamed file, so it
    answers for the real permissions (root, read-only mounts, immutable folders)
    and leaves nothing behind.

    Raises:
      OutputError: naming the folder and why nothing can be written there.
    """
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: exists and is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputError(f"{folder}: cannot write there ({error.strerror or error})") from None


def check_output_file(path: PathLike) -> None:
    """Checks, before any work, that ``path`` names a file that can be written.

    Raises:
      OutputError: ``path`` is a folder, or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name the file to write, e.g. {path / 'annotations.csv'}")
    check_writable_folder(path.parent)
