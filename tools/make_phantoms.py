#!/usr/bin/env python
"""Write synthetic ultrasound phantoms: a BUSI-layout dataset, or the demo images.

    python tools/make_phantoms.py --output work/phantoms --per-class 20 --seed 0
    python tools/make_phantoms.py --demo --output input

The dataset has ``benign/``, ``malignant/`` and ``normal/`` folders with
``phantom_CLASS (i).png`` beside ``phantom_CLASS (i)_mask.png`` (and ``_mask_1.png``
for a second lesion), ready for ``tools/mask_to_bbox.py``. ``--demo`` writes the
four labelled frames ``phantom_*_demo.png`` (no masks, fixed seeds). The images are made by a
seeded physical model (see ``busdet/phantoms.py``), not taken from any patient;
the same seed gives byte-identical files.

Exit status: 0 written, 1 some file could not be written, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet import phantoms  # noqa: E402
from busdet.cli import run_command  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--per-class", type=int, default=10,
                        help="images per class (benign, malignant, normal) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--image-format", choices=["png", "jpg", "bmp", "tif"], default="png",
                        help="file type of the images; masks are always PNG (default: %(default)s)")
    parser.add_argument("--demo", action="store_true",
                        help="write the four labelled demo frames instead of a dataset")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.per_class < 0 or args.seed < 0:
        print("error: --per-class and --seed must be >= 0", file=sys.stderr)
        return 2
    try:
        if args.demo:
            written = phantoms.write_demo_images(args.output)
        else:
            written = phantoms.write_phantom_dataset(args.output, args.per_class, args.seed, args.image_format)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    lesions = sum(len(image.boxes) for image in written)
    print(f"{len(written)} phantom images with {lesions} lesions -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
