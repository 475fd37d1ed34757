"""Writing files: atomically, as CSV or JSON, under safe names, into folders checked first.

    with atomic_write(path, "w") as stream: ...     # the old file or the whole new one, never half
    with atomic_path(path) as temp: ...             # the same for a writer that wants a file name
    write_csv(frame, path)                          # the one CSV form: UTF-8, "\\n", no index
    read_csv(path)                                  # its inverse: every cell as text, as written
    write_json(data, path)                          # indented UTF-8 JSON, NaN refused
    with writing("annotated MP4", path): ...        # any failure -> WriteError naming the file and why
    check_writable_folder(output_dir)               # before any work: can files be created there?
    with open_regular(path) as stream: ...          # reading never blocks on a pipe or a device
    unreadable_reason(path)                         # "broken link (...)", "link loop (...)", ... or None
    with folder_lock(output_dir): ...               # one run per output folder at a time
    printable(name)                                 # a file name fit for a one-line message

File names come from the file system as ``str`` with undecodable bytes kept as
surrogates (Python's ``surrogateescape``): every text file written here writes
them back as the same bytes, and :func:`read_csv` reads them back to the same
name, so a table names a file that is not valid UTF-8 by its own bytes.

CSV cells are quoted wherever the dialect needs it, a carriage return included,
and a text cell that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return, OWASP's list) gets a ``'`` in
front, as does one that starts with ``'`` already; :func:`read_csv` takes that
one ``'`` off again, so the project's readers see the cells as they were.

Every module that writes a table, a report, a figure or an image goes through
:func:`atomic_write`, so that a crash, Ctrl-C or a kill never leaves a truncated
file, and a killed writer leaves no temporary file either (Linux).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
import uuid
from pathlib import Path, PurePath
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import pandas as pd

PathLike = Union[str, Path]


# Undecodable bytes of file names (surrogates) are written back as the bytes they were.
TEXT_ERRORS = "surrogateescape"


class OutputError(ValueError):
    """An output that cannot be written where asked (checked before any work); the message says why."""


class FolderLockedError(OutputError):
    """Another process holds the folder's lock (:func:`folder_lock`)."""


class WriteError(Exception):
    """An output file that could not be written (:func:`writing`): ``what`` it is (``"annotated MP4"``),
    its ``path`` and the ``reason`` (the system's words for an OSError: ``"No space left on device"``)."""

    def __init__(self, what: str, path: PathLike, reason: str):
        super().__init__(f"{printable(path)}: cannot write the {what} ({reason})")
        self.what, self.path, self.reason = what, Path(path), reason


@contextlib.contextmanager
def writing(what: str, path: PathLike) -> Iterator[None]:
    """Raises any failure inside (drawing, encoding, writing ``path``) as a :class:`WriteError`, so
    that the caller can say which of several outputs failed."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - a full disk, a read-only folder, an encoder: all named alike
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise WriteError(what, path, reason) from error


class NotRegularFileError(OSError):
    """A path that is not a regular file (a named pipe, a device, a socket): never opened for reading."""


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
        with os.fdopen(handle, mode, encoding=None if binary else "utf-8", errors=None if binary else TEXT_ERRORS,
                       newline=None if binary else "") as stream:
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


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A new temporary file beside ``path``, for a writer that takes a file name rather than a
    stream (TensorFlow's ``TFRecordWriter``); moved onto ``path`` when the block ends, removed
    when it raises.

    The temporary name is unique (created exclusively), so two processes writing ``path`` at
    once never write into one file: each moves its own whole file into place. The file gets
    0666 minus the umask, as a plain ``open()`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = _temp_name(path)
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield Path(name)
        descriptor = os.open(name, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


# Bytes of the target's name a temporary name keeps: with the dot, the uuid and ".tmp" it stays
# within the 255 bytes a file name may have, however long the target's own name is.
TEMP_NAME_KEEPS = 200


def _temp_name(path: Path) -> str:
    kept = os.fsdecode(os.fsencode(path.name)[:TEMP_NAME_KEEPS])  # a character cut in two stays its bytes
    return str(path.parent / f".{kept}.{uuid.uuid4().hex}.tmp")


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


# Cells a spreadsheet would run as a formula (OWASP "CSV Injection"), and the mark that defuses them.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_MARK = "'"


def neutralise_formula(cell):
    """A text cell that would start a formula (or starts with the mark) with the mark in front; others as given."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS + (FORMULA_MARK,)):
        return FORMULA_MARK + cell
    return cell


def restore_formula(cell: str) -> str:
    """The inverse of :func:`neutralise_formula` for a cell read back as text."""
    return cell[1:] if cell.startswith(FORMULA_MARK) else cell


class _RowEnds:
    """A text stream that turns the csv module's ``\\r\\n`` row ends into ``\\n``.

    The csv module quotes a field holding ``\\r`` only when ``\\r`` is in the line
    terminator (Python 3.11): rows are written with ``\\r\\n``, which quotes every
    ``\\r`` and ``\\n`` inside a field, and each row (one ``write`` per row) ends in ``\\n``.
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text[:-2] + "\n" if text.endswith("\r\n") else text)


def _write_csv_text(frame: pd.DataFrame, stream) -> None:
    """The one CSV form of every table written or downloaded: ``\\n`` line ends, no index,
    formula cells neutralised, ``\\r`` and ``\\n`` in a cell quoted."""
    text_columns = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c].dtype)]
    if text_columns:
        frame = frame.assign(**{c: _text_column(frame[c], neutralise_formula) for c in text_columns})
    frame.to_csv(_RowEnds(stream), index=False, lineterminator="\r\n")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as CSV bytes (UTF-8), exactly what :func:`write_csv` writes to a file."""
    buffer = io.StringIO()
    _write_csv_text(frame, buffer)
    return buffer.getvalue().encode("utf-8", TEXT_ERRORS)


def read_csv(path: PathLike) -> pd.DataFrame:
    """A CSV written by :func:`write_csv` (or by hand) with every cell as text (``object``: names
    that are not UTF-8 kept), empty cells ``""``, formula marks taken off. The index is each row's
    line number in the file (``line``), for messages that name the row.

    The text is UTF-8 (a byte-order mark dropped) or UTF-16 with its byte-order mark (Excel's and
    PowerShell's "Unicode" text); blank lines are passed over. Every row must have as many cells as
    the header: a row with one cell too many would otherwise shift every cell of the table under the
    wrong column name, and one too few leave its last cells silently empty.

    Raises:
      pandas.errors.EmptyDataError: no header (a 0-byte or blank file).
      pandas.errors.ParserError: not such a table (the line and why: NUL bytes, a row of another
        length, an unclosed quote, a cell longer than :data:`MAX_CELL` characters, a column named twice).
      OSError: the file cannot be read.
    """
    with open_regular(path) as stream:
        text = decode_text(stream.read(), TEXT_ERRORS)
    if "\x00" in text:
        raise pd.errors.ParserError("not text (it holds NUL bytes); save it as a UTF-8 CSV")
    header, rows, lines = None, [], []
    for line, row in _csv_records(text):
        if header is None:
            header = [cell or f"Unnamed: {i}" for i, cell in enumerate(row)]  # pandas' names for empty ones
            twice = sorted({cell for cell in header if header.count(cell) > 1})
            if twice:
                raise pd.errors.ParserError(f"line {line}: column(s) {', '.join(twice)} named twice in the header")
        elif len(row) != len(header):
            raise pd.errors.ParserError(f"line {line}: {len(row)} cells, but the header has {len(header)}")
        else:
            rows.append([restore_formula(cell) for cell in row])
            lines.append(line)
    if header is None:
        raise pd.errors.EmptyDataError("no header line (the file is empty)")
    return pd.DataFrame(rows, columns=pd.Index(header, dtype=object), index=pd.Index(lines, name="line"),
                        dtype=object)


# The longest cell read_csv accepts (the csv module's own limit): no file name or number comes near.
MAX_CELL = csv.field_size_limit()


# The csv module's words for a damaged record, in the reader's terms.
_CSV_ERRORS = {"unexpected end of data": "a quote opened here is never closed",
               "field larger than field limit": f"a cell longer than {MAX_CELL} characters"}


def _csv_records(text: str) -> Iterator[Tuple[int, list]]:
    """``(first line, cells)`` of each record of CSV ``text``, blank lines left out."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # an unclosed quote, a quote inside a cell, a cell over MAX_CELL
            reason = _CSV_ERRORS.get(str(error).split(" (")[0], str(error))
            raise pd.errors.ParserError(f"line {line}: {reason}") from None
        if row:
            yield line, row


# Byte-order marks and the text they announce; UTF-8 without one is the default.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode_text(data: bytes, errors: str = "strict") -> str:
    """A text file's bytes as ``str``: UTF-8, or the encoding a byte-order mark announces (UTF-8 or
    UTF-16, as Windows editors save "Unicode" text), the mark dropped.

    Raises:
      UnicodeDecodeError: with ``errors="strict"``, bytes that are not text in that encoding.
    """
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return data[len(mark):].decode(encoding, errors)
    return data.decode("utf-8", errors)


class TableError(ValueError):
    """A CSV table that cannot be used; the message names the file and why (:func:`read_table`)."""


def read_table(path: PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """:func:`read_csv` for a table that needs ``columns`` (others may follow, in any order).

    Raises:
      TableError: one line naming the file: missing, a folder or a pipe, empty, not a CSV table
        (:func:`read_csv`'s line and reason), or a column missing.
    """
    reason = unreadable_reason(path)
    if reason is not None:
        raise TableError(f"{path}: {reason}")
    try:
        frame = read_csv(path)
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: file is empty (expected the header {','.join(columns)})") from None
    except pd.errors.ParserError as error:
        raise TableError(f"{path}: not a CSV table ({error})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(columns)})")
    return frame


NAMES_SHOWN = 5  # how many names a message lists before "... and N more"


def name_some(names: Iterable[str], shown: int = NAMES_SHOWN) -> str:
    """``"a.png, b.png, c.png and 7 more"``: the first few names of a sorted list and a count."""
    names = sorted(names)
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


def _text_column(column: pd.Series, convert) -> pd.Series:
    """``convert`` applied to every cell, kept as ``object`` (pandas' string type refuses surrogates)."""
    return pd.Series([convert(cell) for cell in column], index=column.index, dtype=object)


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


def printable(text: str) -> str:
    """``text`` (a file name) fit for a one-line message: undecodable bytes as ``\\xe9``, control
    characters (``\\r``, ``\\n``, escape sequences) as Python escapes, everything else as is."""
    text = str(text).encode("utf-8", TEXT_ERRORS).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def open_regular(path: PathLike):
    """Opens a regular file for binary reading; anything else (a named pipe, a device, a socket)
    raises :class:`NotRegularFileError` at once instead of blocking.

    Opened with ``O_NONBLOCK`` and checked on the open descriptor, so a file swapped
    for a pipe between a check and the open cannot block either.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a socket
            raise NotRegularFileError(errno.ENXIO, "not a regular file", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(descriptor, "rb")


def read_text(path: PathLike) -> str:
    """A regular file's text, UTF-8 or as its byte-order mark says (:func:`decode_text`); a named pipe
    raises instead of blocking (:func:`open_regular`)."""
    with open_regular(path) as stream:
        return decode_text(stream.read())


def is_regular_file(path: PathLike) -> bool:
    """True for a regular file (or a link to one): what the tools read."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


NOT_REGULAR_REASON = "not a regular file (a named pipe, device or socket); not read"
BROKEN_LINK_REASON = "broken link (its target does not exist)"
LINK_LOOP_REASON = "link loop (its links lead back to themselves)"
NOT_FOUND_REASON = "file not found"
FOLDER_REASON = "a folder, not a file"


def unreadable_reason(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be read as a file, in words for one line; None for a readable regular
    file (or a link to one).

    The reasons: :data:`BROKEN_LINK_REASON` (a link whose target is missing),
    :data:`LINK_LOOP_REASON`, :data:`NOT_FOUND_REASON`, :data:`FOLDER_REASON`,
    :data:`NOT_REGULAR_REASON` (a named pipe, a device, a socket), ``"no permission to read it"``,
    else ``"cannot open (why)"``. Only ``stat`` is called: nothing is opened, nothing blocks.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return LINK_LOOP_REASON
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return BROKEN_LINK_REASON if os.path.islink(path) else NOT_FOUND_REASON
        return f"cannot open ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return FOLDER_REASON
    if not stat.S_ISREG(mode):
        return NOT_REGULAR_REASON
    return None if os.access(path, os.R_OK) else "no permission to read it"


def folder_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` cannot be read as a folder, for one line; None for a folder (or a link to one).

    ``"folder not found"``, ``"a file, not a folder"``, or :func:`unreadable_reason`'s words
    for a broken link, a link loop, a named pipe, ...
    """
    reason = unreadable_reason(path)
    return {FOLDER_REASON: None, None: "a file, not a folder", NOT_FOUND_REASON: "folder not found"}.get(reason, reason)


LOCK_FILE = ".busdet.lock"


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str = "run") -> Iterator[Path]:
    """Holds ``folder``'s lock file (created with the folder if need be) for the ``with`` block.

    The lock is the kernel's (``flock``): it dies with the process holding it, so a
    lock file left by a crash or a kill is taken over at once. The file records the
    holder's process id for the refusal; it is removed on release, and so is the
    folder if this call created it and nothing else was written there.

    Raises:
      FolderLockedError: another process holds the lock (one line naming it).
      OSError: the folder or the lock file cannot be created.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    stream = _acquire_lock(path, what)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        stream.close()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing was written


def _acquire_lock(path: Path, what: str):
    """The open, locked lock file; retried when the file was replaced while being locked."""
    while True:
        stream = open(path, "a+", encoding="ascii")
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            stream.close()
            raise FolderLockedError(f"{path.parent}: another {what} (process {holder}) is writing there; "
                                    "wait for it to finish or choose another folder") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            stream.truncate(0)
            stream.write(f"{os.getpid()}\n")
            stream.flush()
            return stream
        stream.close()


# The longest stem safe_stem gives: followed by a suffix ("_predictions.json", a gallery's
# "missed_01_" and ".png", a ZIP's "_2"), a name stays far inside the 255 bytes a file system
# allows; the image's own name need not (a browser sends what the user's system allows).
MAX_STEM = 120


def safe_stem(filename: str) -> str:
    """A file-name stem safe to write or offer for download: ``"../a b*.png"`` -> ``"a_b_"``.

    Keeps letters, digits, ``-``, ``_`` and ``.``; anything else (path parts,
    spaces, quotes, brackets, markup) becomes ``_``. A stem over :data:`MAX_STEM`
    characters is cut in the middle, so long names differing at their end (numbered
    ones) stay apart.
    """
    stem = PurePath(filename.replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "image"
    if len(stem) <= MAX_STEM:
        return stem
    head = MAX_STEM // 2
    return f"{stem[:head]}_{stem[-(MAX_STEM - head - 1):]}"


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
    existing = next(p for p in [folder, *folder.absolute().parents] if os.path.lexists(p))
    link_problem = unreadable_reason(existing)
    if link_problem in (BROKEN_LINK_REASON, LINK_LOOP_REASON):  # nothing can be created through it
        raise OutputError(f"{existing}: {link_problem}")
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
