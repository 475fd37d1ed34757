#!/usr/bin/env python
"""A DICOM node: receive ultrasound images (C-STORE), find lesions, send a report and an annotated image on.

    python tools/dicom_node.py --ae-title BUSDET --port 11112 --send-to ORTHANC@127.0.0.1:4242
    python tools/dicom_node.py --send-to PACS@10.0.0.5:104 --listen 0.0.0.0 --queue /var/lib/busdet-node

Point a scanner or a PACS at it (AE title, this machine's address, --port). For each
ultrasound image or cine loop it receives, it sends to --send-to a DICOM Structured
Report (TID 1500: one measurement group per box, with score and size in mm) and the
annotated key frame as a Secondary Capture, both in the image's own study. It answers
C-ECHO; it accepts the ultrasound storage classes in the transfer syntaxes predict.py
reads, and refuses any other at association time. Results wait in --queue while the
destination is down and are sent when it is back (retries with a growing pause).
Ctrl-C or SIGTERM stops it after the image in hand; whatever is queued stays on disk
for the next start. The queue holds patient images and identifiers: keep it private.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet.cli import run_command  # noqa: E402
from busdet.dicom_node import Destination, DicomNode, NodeSettings, NodeSetupError  # noqa: E402
from busdet.inference import RUNTIMES, ModelLoadError, describe_runtime, load_detector  # noqa: E402
from predict import DEFAULT_LABEL_MAP, DEFAULT_MODEL, frame_choice, score  # noqa: E402  the same knobs and defaults

EPILOG = """exit status:
  0    stopped by Ctrl-C or SIGTERM (queued work stays in --queue)
  2    bad arguments, no usable model, a queue folder or port that cannot be used
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae-title", default="BUSDET", help="this node's AE title (default: %(default)s)")
    parser.add_argument("--port", type=int, default=11112, help="port to listen on (default: %(default)s)")
    parser.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                        help="address to listen on; 0.0.0.0 for every interface (default: %(default)s, "
                             "this machine only)")
    parser.add_argument("--send-to", required=True, type=Destination.parse, metavar="AE@HOST:PORT",
                        help="where the reports and annotated images go, e.g. ORTHANC@127.0.0.1:4242")
    parser.add_argument("--queue", type=Path, default=Path("dicom_node_queue"), metavar="DIR",
                        help="folder for images waiting for the model and results waiting to be sent "
                             "(default: %(default)s)")
    parser.add_argument("--score-threshold", "--threshold", dest="score_threshold", type=score, default=None,
                        help="lowest score (0-1) of a box that is reported (default: the model's operating point)")
    parser.add_argument("--frames", type=frame_choice, default="all", metavar="all|key|N",
                        help="cine loops: report every frame's boxes (all), the most suspicious frame's (key), "
                             "or every Nth frame's (default: %(default)s)")
    parser.add_argument("--retry-seconds", type=float, default=2.0,
                        help="pause after a failed send, doubled after each further failure (default: %(default)s)")
    parser.add_argument("--max-retry-seconds", type=float, default=60.0,
                        help="longest pause between tries (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="SavedModel folder (default: the checkout's saved_model, %(default)s)")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path, default=DEFAULT_LABEL_MAP,
                        help="label map (default: the checkout's label_map.pbtxt, %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="as predict.py's --runtime")
    return parser


def wait_for_stop() -> None:
    """Blocks until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(timeout=1.0):
        pass


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines dump whole associations
    # A destination that is down: the node's own line says so, once per try.
    logging.getLogger("pynetdicom.transport").setLevel(logging.CRITICAL)
    try:
        detector = load_detector(args.model, args.label_map, args.runtime)
        settings = NodeSettings(args.ae_title, args.port, args.send_to, args.queue, args.listen,
                                args.score_threshold, args.frames, args.retry_seconds, args.max_retry_seconds)
        node = DicomNode(detector, settings)
        node.start()
    except (ModelLoadError, NodeSetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.ae_title} listening on {args.listen}:{args.port}, sending to {args.send_to}; "
          f"runtime: {describe_runtime(detector)}; Ctrl-C stops", file=sys.stderr)
    try:
        wait_for_stop()
    finally:
        print("stopping: finishing the image in hand", file=sys.stderr)
        node.stop()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
