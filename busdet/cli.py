"""What every command line shares: its ending. No traceback reaches the user.

    if __name__ == "__main__":
        sys.exit(run_command(main, get_args_parser()))

``main(args) -> int`` reports the problems it expects (bad input, unusable
files) itself, one line each, and returns the exit status. This wrapper ends the
rest the same way for every tool: Ctrl-C (also while TensorFlow loads) exits
130 after one line, and a file that cannot be written after the checks (disk
full, a folder removed under the run) exits 1 after one line naming it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

INTERRUPTED = 130
FAILED = 1


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
    try:
        return main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return FAILED
