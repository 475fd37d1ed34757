#!/usr/bin/env python
"""Turn lesion masks into box annotations (CSV or COCO JSON).

    python tools/mask_to_bbox.py --input ../shared/busi/Dataset_BUSI_with_GT --output annotations.csv

The input holds one folder per class (``benign/``, ``malignant/``, ``normal/``) with
``NAME.png`` beside ``NAME_mask.png``, ``NAME_mask_1.png``, ... Every connected
lesion region of at least ``--min-area`` pixels becomes one row
``filename,xmin,ymin,width,height,label``. Files that cannot be used are named on
stderr with the reason (among them a benign or malignant image whose masks hold no
lesion region); everything else is still written.

``NAME_mask*.png`` is a mask only beside ``NAME.png``; without it, an image of that name.

Exit status: 0 all files converted, 1 some files skipped (see stderr), 2 bad arguments
(no class folders under --input, an --output that cannot be written or that would replace
an image of --input), 130 interrupted (143 when stopped by SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tqdm import tqdm  # noqa: E402

from busdet import annotations  # noqa: E402
from busdet.cli import run_command, say  # noqa: E402
from busdet.files import check_output_file, folder_problem, write_csv, write_json  # noqa: E402
from busdet.label_map import load_label_map  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="dataset folder with one sub-folder per class")
    parser.add_argument("--output", required=True, type=Path, help="CSV (or JSON with --format coco) to write")
    parser.add_argument("--format", choices=["csv", "coco"], default="csv", help="output format (default: csv)")
    parser.add_argument("--min-area", type=int, default=annotations.DEFAULT_MIN_AREA,
                        help="drop mask regions smaller than this many pixels (default: %(default)s)")
    parser.add_argument("--include-negatives", action="store_true",
                        help="add one row with empty box fields for every image without a lesion")
    parser.add_argument("--label", "--label-map", dest="label_map", type=Path,
                        default=Path(__file__).resolve().parents[1] / "label_map.pbtxt",
                        help="label map naming the lesion classes (default: the project's)")
    parser.add_argument("--negative-class", default=annotations.DEFAULT_NEGATIVE_CLASS,
                        help="class folder of images without lesions (default: %(default)s)")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        classes = load_label_map(args.label_map)
    except ValueError as error:  # LabelMapError: the message names the file
        say(f"error: {error}")
        return 2
    if not args.input.is_dir():
        say(f"error: {args.input}: {folder_problem(args.input)}; expected one sub-folder per class")
        return 2
    try:
        check_output_file(args.output)
        annotations.check_output_outside_dataset(args.output, args.input)
        images, problems = annotations.annotate_dataset(
            args.input, list(classes.values()), args.negative_class, args.min_area,
            progress=lambda cases: tqdm(cases, desc="masks", unit="image", file=sys.stderr))
    except ValueError as error:  # an unwritable --output (OutputError); no class folder under --input
        say(f"error: {error}")
        return 2
    for problem in problems:
        say(problem.report_line)
    skipped = sum(problem.skipped for problem in problems)
    if args.format == "coco":
        write_json(annotations.annotations_to_coco(images, classes), args.output)
    else:
        write_csv(annotations.annotations_to_frame(images, include_negatives=args.include_negatives), args.output)
    boxes = Counter(box.label for image in images for box in image.boxes)
    negatives = sum(1 for image in images if not image.boxes)
    per_class = ", ".join(f"{name} {boxes.get(name, 0)}" for name in classes.values())
    say(f"{len(images)} images, {sum(boxes.values())} boxes ({per_class}), {negatives} without lesion, "
        f"{skipped} skipped -> {args.output}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
