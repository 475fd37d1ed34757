#!/usr/bin/env python
"""Build the in-browser page and serve it on localhost: the model runs in the visitor's browser.

    make web                                        # npm ci (first time), build, serve on port 8502
    python tools/serve_web.py                       # build web/dist from saved_model/, serve it
    python tools/serve_web.py --build-only          # build only (make test does this)
    python tools/serve_web.py --port 9000 --model saved_model --label label_map.pbtxt

The site (``web/dist``) is static: any web server can host it, as long as it sends
the files of this origin only (the headers of :mod:`busdet.web` also enable threads).
Images opened on the page are never sent to this server.

Exit status: 0 built (and served until Ctrl-C), 2 the site cannot be built
(``npm ci`` not run, a stale or missing model.onnx), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet import web  # noqa: E402
from busdet.cli import run_command  # noqa: E402
from busdet.inference import ModelLoadError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BAD_INPUT = 2


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "saved_model",
                        help="model folder with model.onnx and model_info.json (default: saved_model)")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--site", type=Path, default=web.WEB_DIR / "dist", help="where the site is built")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=web.DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--build-only", action="store_true", help="build the site and exit")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        site = web.build_site(args.site, args.model, args.label)
    except (web.SiteBuildError, ModelLoadError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    if args.build_only:
        return 0
    with web.make_server(site, args.host, args.port) as server:
        host, port = server.server_address[:2]
        print(f"busdet in the browser: http://{host}:{port}/  (Ctrl-C stops; images stay in the browser)",
              file=sys.stderr)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
