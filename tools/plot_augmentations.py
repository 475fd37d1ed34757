#!/usr/bin/env python
"""Draw augmented phantoms as a grid: originals, one row per augmentation family, full random chains.

    python tools/plot_augmentations.py --output docs/augmentation_grid.png
    python tools/plot_augmentations.py --output /tmp/grid.png --time 200   # also ms per 600x500 image
    python tools/plot_augmentations.py --output /tmp/copy_paste.png --copy-paste   # copy-paste rows too

Only synthetic phantoms (busdet.phantoms), never BUSI or BUS-BRA images. Each
family row applies that family alone (probability 1); the last row is
``augment_ultrasound`` with the default configuration. Boxes are drawn after
augmentation, so they show where the boxes went. With ``--copy-paste``, two more
rows paste lesions cut from other phantoms (a lesion bank made the way training
makes one from the masks): alone, then followed by the default chain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from busdet.boxes import Box, boxes_to_normalized_yxyx  # noqa: E402
from busdet.drawing import draw_boxes  # noqa: E402
from busdet.images import atomic_write  # noqa: E402
from busdet.phantoms import generate_phantom  # noqa: E402
from busdet.training.augment import (FAMILIES, UltrasoundAugmentation, augment_example, augment_ultrasound,  # noqa: E402
                                     only_family)
from busdet.training.copy_paste import LesionBank, lesions_of_image  # noqa: E402

COLUMNS = [("benign", 1, 0), ("malignant", 1, 9), ("benign", 2, 3), ("normal", 0, 1), ("malignant", 1, 4)]
LABEL_WIDTH, BACKGROUND = 120, 64  # the gray around tiles, so that black margins show
CLASS_IDS = {"benign": 1, "malignant": 2}  # label_map.pbtxt
CLASS_NAMES = {class_id: name for name, class_id in CLASS_IDS.items()}
BANK_SEEDS = range(100, 106)  # phantoms the pasted lesions are cut from, none of them in the grid


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed")
    parser.add_argument("--tile-width", type=int, default=220, help="pixels per image in the grid")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="also time N images of 600x500")
    parser.add_argument("--copy-paste", action="store_true",
                        help="add rows of copy-paste (lesions cut from other phantoms), alone and with the chain")
    return parser


def draw_tile(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str], width: int) -> np.ndarray:
    """Augmented ``uint8 [H, W, 3]`` with its normalized boxes drawn, fitted into a ``width`` square-ish tile."""
    height_px, width_px = image.shape[:2]
    pixel_boxes = [Box(x0 * width_px, y0 * height_px, x1 * width_px, y1 * height_px, label)
                   for (y0, x0, y1, x1), label in zip(boxes, labels)]
    drawn = draw_boxes(image, pixel_boxes, mark_empty=False)
    scale = min(width / width_px, 0.85 * width / height_px)
    small = cv2.resize(drawn, (round(width_px * scale), round(height_px * scale)), interpolation=cv2.INTER_AREA)
    tile = np.full((int(0.85 * width) + 6, width + 6, 3), BACKGROUND, dtype=np.uint8)
    top, left = (tile.shape[0] - small.shape[0]) // 2, (tile.shape[1] - small.shape[1]) // 2
    tile[top:top + small.shape[0], left:left + small.shape[1]] = small
    return tile


def draw_row(name: str, phantoms, params, seed: Sequence[int], width: int, bank=None) -> np.ndarray:
    """One grid row: a label, then every phantom augmented with ``params`` (None: untouched)."""
    tiles = []
    for column, phantom in enumerate(phantoms):
        image = phantom.image
        boxes = boxes_to_normalized_yxyx(phantom.boxes, phantom.image.shape[1], phantom.image.shape[0])
        classes = np.array([CLASS_IDS[box.label] for box in phantom.boxes], dtype=np.int64)
        if params is not None:
            rng = np.random.default_rng([*seed, column])
            image, boxes, classes = augment_example(image, boxes, classes, rng, params, bank)
        tiles.append(draw_tile(image, boxes, [CLASS_NAMES[c] for c in classes], width))
    label = np.full((tiles[0].shape[0], LABEL_WIDTH, 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(label, name, (6, label.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.hstack([label] + tiles)


def write_palette_png(path: Path, image: np.ndarray) -> None:
    """RGB ``uint8 [H, W, 3]`` as a 256-colour PNG: a third of the size of RGB for a speckled grid."""
    palette = Image.fromarray(image).quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_write(path, "wb") as stream:
        palette.save(stream, format="PNG", optimize=True)


def time_augmentation(count: int, seed: int) -> np.ndarray:
    """Milliseconds of ``augment_ultrasound`` (defaults) on ``count`` phantoms of 600x500, one per image."""
    labels = ("benign", "malignant", "normal")
    phantoms = [generate_phantom(index, labels[index % 3], width=600, height=500) for index in range(count)]
    rng, params, times = np.random.default_rng(seed), UltrasoundAugmentation(), []
    for phantom in phantoms:
        boxes = boxes_to_normalized_yxyx(phantom.boxes, 600, 500)
        start = time.perf_counter()
        augment_ultrasound(phantom.image, boxes, rng, params)
        times.append(1000 * (time.perf_counter() - start))
    return np.array(times)


def phantom_lesion_bank() -> LesionBank:
    """Lesions cut from phantoms of :data:`BANK_SEEDS` (benign and malignant), as training cuts them."""
    lesions = []
    for seed in BANK_SEEDS:
        for label in CLASS_IDS:
            phantom = generate_phantom(seed, label)
            lesions += lesions_of_image(phantom.image, phantom.masks, label, CLASS_IDS[label], "phantoms",
                                        f"phantom {label} {seed}")
    return LesionBank(tuple(lesions))


def main(args: argparse.Namespace) -> int:
    phantoms = [generate_phantom(seed, label, width=600, height=500, lesions=lesions)
                for label, lesions, seed in COLUMNS]
    settings = ([("original", None)] + [(family, only_family(family)) for family in FAMILIES]
                + [(f"full chain {i + 1}", UltrasoundAugmentation()) for i in range(2)])
    bank = None
    if args.copy_paste:
        bank = phantom_lesion_bank()
        pasting = dict(copy_paste_probability=1.0, copy_paste_lesion_image_factor=1.0)
        settings += [("copy-paste", UltrasoundAugmentation(probability=0.0, **pasting)),
                     ("paste + chain", UltrasoundAugmentation(**pasting))]
    rows = [draw_row(name, phantoms, params, (args.seed, row), args.tile_width, bank)
            for row, (name, params) in enumerate(settings)]
    write_palette_png(args.output, np.vstack(rows))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    if args.time:
        times = time_augmentation(args.time, args.seed)
        print(f"augment_ultrasound: mean {times.mean():.2f} ms, median {np.median(times):.2f} ms, "
              f"95th percentile {np.percentile(times, 95):.2f} ms per 600x500 image ({args.time} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
