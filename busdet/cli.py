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
from typing import Callable, Optional, Sequence

INTERRUPTED = 130
FAILED = 1


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
