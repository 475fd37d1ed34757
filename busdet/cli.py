"""What every command line shares: its ending. No traceback reaches the user.

    if __name__ == "__main__":
        sys.exit(run_command(main, get_args_parser()))

``main(args) -> int`` reports the problems it expects (bad input, unusable
files) itself, one line each, and returns the exit status. This wrapper ends the
rest the same way for every tool: Ctrl-C (also while TensorFlow loads) exits
130 after one line, SIGTERM (``kill``, systemd, Docker, batch schedulers) is
turned into :class:`Terminated`, which every Ctrl-C clean-up catches too, and
exits 143, and a file that cannot be written after the checks (disk full, a
folder removed under the run) exits 1 after one line naming it. Every message
goes through :func:`busdet.files.printable`, so a file name cannot bring control
characters or undecodable bytes onto the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from busdet.files import printable

INTERRUPTED = 130
TERMINATED = 128 + signal.SIGTERM  # 143
FAILED = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that the same clean-up
    (tables of what finished, locks released) runs for both."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds Ctrl-C and SIGTERM back until the block ends, then raises as they would have.

    For the last save of the tables: a second Ctrl-C must not cut it short. Only the
    main thread can set signal handlers; elsewhere the block runs as is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {stop: signal.getsignal(stop) for stop in stops}
    for stop in stops:
        signal.signal(stop, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler if handler is not None else signal.SIG_DFL)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()


def stop_status(error: BaseException) -> int:
    """The exit status of a run stopped by ``error`` (KeyboardInterrupt or :class:`Terminated`)."""
    return TERMINATED if isinstance(error, Terminated) else INTERRUPTED


class PrintableFormatter(logging.Formatter):
    """Log lines with control characters and undecodable bytes escaped (:func:`busdet.files.printable`)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def configure_logging(fmt: str = "%(message)s", level: int = logging.INFO) -> None:
    """The tools' logging: one printable line per record on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def say(message: str) -> None:
    """One printable line on stderr."""
    print(printable(message), file=sys.stderr)
def add_split_model_arguments(parser: argparse.ArgumentParser, root: Path) -> None:
    """``--data`` (repeatable), ``--model``, ``--label`` and ``--splits``: the arguments of the tools that
    measure a model on the committed splits (read them with :func:`busdet.datasets.parse_split_datasets`)."""
    parser.add_argument("--data", required=True, action="append", metavar="NAME=FOLDER",
                        help="a dataset: its name and folder, one sub-folder per class (repeatable)")
    parser.add_argument("--model", type=Path, default=root / "saved_model", help="SavedModel folder")
    parser.add_argument("--label", type=Path, default=root / "label_map.pbtxt", help="label map")
    parser.add_argument("--splits", type=Path, default=root / "data",
                        help="folder of the NAME_split.csv files (default: %(default)s)")


def run_command(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
                argv: Optional[Sequence[str]] = None) -> int:
    """Parses ``argv`` (default: ``sys.argv[1:]``), runs ``main`` and returns its exit status."""
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return main(args)
    except KeyboardInterrupt as error:
        say("terminated" if isinstance(error, Terminated) else "interrupted")
        return stop_status(error)
    except OSError as error:
        say(f"error: {error}")
        return FAILED
