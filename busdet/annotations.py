"""Lesion masks to box annotations, and the annotation CSV / COCO formats.

Input layout (Kaggle's ``Dataset_BUSI_with_GT``): one folder per class holding
``NAME.png`` beside ``NAME_mask.png``, ``NAME_mask_1.png``, ... Each connected
component of each mask, after dropping specks below ``min_area`` pixels, becomes
one box. The CSV is the seed's: ``filename,xmin,ymin,width,height,label`` with
``width``/``height`` the inclusive pixel extent; an image without lesions may be
written with empty box fields (a *negative* row). A lesion-class image whose masks
hold no lesion region is refused rather than written as a negative.

Command line: ``python tools/mask_to_bbox.py --input DATASET_DIR --output annotations.csv``
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from busdet.boxes import Box, box_from_xywh, box_to_pixel_xywh, box_to_xywh
from busdet.files import OutputError
from busdet.images import IMAGE_EXTENSIONS, ImageReadError, open_input, read_image

log = logging.getLogger(__name__)

ANNOTATION_COLUMNS = ["filename", "xmin", "ymin", "width", "height", "label"]
DEFAULT_MIN_AREA = 50
DEFAULT_NEGATIVE_CLASS = "normal"
# NAME_mask or NAME_mask_K (fullmatch); a NAME may hold any character, a line break too (DOTALL).
_MASK_STEM = re.compile(r"(?P<name>.+)_mask(?:_(?P<index>[0-9]+))?", re.DOTALL)


@dataclass
class AnnotatedImage:
    """One image and its lesion boxes (empty for a negative image).

    ``filename`` is the file's base name (the CSV key); ``label`` its class folder.
    """

    filename: str
    path: Path
    label: str
    width: int
    height: int
    boxes: List[Box] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """A file that was skipped (or, with ``skipped`` False, used but suspect), and why.

    One line of the report; only skipped files make the converter's exit status 1.
    """

    path: Path
    reason: str
    skipped: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    @property
    def report_line(self) -> str:
        """The line every tool prints or logs for it: ``skipped PATH: why`` or ``warning: PATH: why``."""
        return f"{'skipped' if self.skipped else 'warning:'} {self}"


@dataclass(frozen=True)
class Case:
    """An image file with the mask files that belong to it."""

    label: str
    image_path: Path
    mask_paths: Tuple[Path, ...]


def find_cases(dataset_dir: Path) -> Tuple[List[Case], List[Problem]]:
    """Pairs every image in ``dataset_dir/CLASS/`` with its ``_mask*`` files (:func:`separate_masks`).

    Returns the cases in a stable order (class, then file name) and the problems
    found on the way (masks without an image; two images whose masks cannot be told
    apart; numbered masks without the first one, a warning: the case is still converted).
    Files are only listed here: one that cannot be read (a broken link, a named pipe)
    is named when its case is read (:func:`annotate_case`).

    Raises:
      FileNotFoundError: ``dataset_dir`` is not a folder.
      ValueError: no class folder holds an image (e.g. one class folder was given).
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"{dataset_dir}: not a folder")
    cases, problems = [], []
    for class_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folder_cases, folder_problems = _folder_cases(class_dir)
        cases.extend(folder_cases)
        problems.extend(folder_problems)
    if not cases:
        raise ValueError(_layout_hint(dataset_dir))
    return cases, problems


def separate_masks(paths: Iterable[Path]) -> Tuple[List[Path], Dict[str, List[Tuple[int, Path]]], List[Path]]:
    """Sorts the image files of one folder into images and masks, by BUSI's names.

    ``NAME_mask.png``, ``NAME_mask_1.png``, ... is a mask only when the image
    ``NAME.png`` (any image extension) is in the same folder; otherwise it is an image
    itself (an ultrasound may be called ``x_mask.png``, with masks ``x_mask_mask.png``),
    unless ``NAME`` looks like a mask in turn (``a_mask_mask.png`` with neither
    ``a_mask.png`` nor ``a.png``): a mask whose image is missing.

    Returns:
      ``(images, masks, orphans)``: the images sorted by name; ``{image stem: [(index,
      path)]}`` of their masks sorted by index (0 for ``_mask``, k for ``_mask_k``); the
      masks without an image.
    """
    images: Dict[str, Path] = {}
    masks: Dict[str, List[Tuple[int, Path]]] = {}
    orphans, clashing = [], []
    for path in sorted(paths, key=lambda p: (len(p.stem), p.name)):  # NAME is decided before NAME_mask
        match = _MASK_STEM.fullmatch(path.stem)
        if match and match["name"] in images:
            masks.setdefault(match["name"], []).append((int(match["index"] or 0), path))
        elif match and _MASK_STEM.fullmatch(match["name"]):
            orphans.append(path)
        elif path.stem in images:
            clashing.append(path)  # a.png beside a.jpg: both images
        else:
            images[path.stem] = path
    return (sorted([*images.values(), *clashing], key=lambda p: p.name),
            {stem: sorted(found) for stem, found in masks.items()}, sorted(orphans))


def _folder_cases(class_dir: Path) -> Tuple[List[Case], List[Problem]]:
    """The cases of one class folder and the problems of its files (see :func:`find_cases`)."""
    paths = [p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
    images, masks, orphans = separate_masks(paths)
    problems = [Problem(p, "mask without a matching image") for p in orphans]
    cases, stems = [], Counter(p.stem for p in images)
    for image_path in images:
        stem = image_path.stem
        if stems[stem] > 1:  # a.png beside a.jpg: which one a_mask.png outlines cannot be told
            twin = next(p.name for p in images if p.stem == stem and p != image_path)
            problems.append(Problem(image_path, f"{twin} has the same name but for the extension, so "
                                                "their masks cannot be told apart; rename one"))
            continue
        indexed = masks.get(stem, [])
        if indexed and indexed[0][0] != 0:
            # BUSI numbers extra masks from _1: without NAME_mask the lesion it
            # outlined may be missing from the boxes. Convert what is there, but say so.
            problems.append(Problem(image_path, f"has {indexed[0][1].name} but no {stem}_mask"
                                    f"{indexed[0][1].suffix}; boxes come from the masks present",
                                    skipped=False))
        cases.append(Case(class_dir.name, image_path, tuple(p for _, p in indexed)))
    return cases, problems


def check_output_outside_dataset(output: Path, dataset_dir: Path) -> None:
    """Refuses an output file (links resolved) in ``dataset_dir``'s tree with an image name: it would
    replace an image or a mask, or be read as one by the next run. Other names there are fine.

    Raises:
      OutputError: naming the file and what to do.
    """
    real, source = Path(os.path.realpath(output)), Path(os.path.realpath(dataset_dir))
    if real.suffix.lower() in IMAGE_EXTENSIONS and source in real.parents:
        raise OutputError(f"{output}: an image name inside the dataset folder {dataset_dir}: writing it would "
                          "replace an image or mask, or add one; name a .csv or .json file")


def _layout_hint(dataset_dir: Path) -> str:
    """Why a folder gave no case, and the layout expected instead."""
    expected = (f"expected one sub-folder per class, e.g. {dataset_dir / 'benign' / 'NAME.png'} beside "
                "NAME_mask.png")
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in dataset_dir.iterdir()):
        return (f"{dataset_dir}: no class folders, only images ({expected}); "
                "is this one class folder? Give the folder that holds the class folders")
    return f"{dataset_dir}: no class folder with images ({expected})"


def read_mask(path: Path) -> np.ndarray:
    """Reads a mask file as a boolean array ``[H, W]``, whatever its encoding.

    Handles 0/255 and 0/1 grayscale, mode "1", palette, RGB and RGBA masks: a pixel
    is lesion when its brightest colour channel is above half the mask's maximum.

    Raises:
      ImageReadError: the file cannot be opened (a broken link, a named pipe, empty: see
        :func:`busdet.images.open_input`) or decoded.
    """
    try:
        with open_input(path) as stream, Image.open(stream) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            pixels = np.asarray(image)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageReadError(str(path), "mask is not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(str(path), f"cannot decode mask ({error})") from None
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        colour = pixels[..., : min(channels, 3)].max(axis=2)
        # An RGBA mask drawn only in the alpha channel carries no colour.
        if channels == 4 and colour.max() == 0:
            colour = pixels[..., 3]
        pixels = colour
    pixels = pixels.astype(np.float64)
    high = pixels.max() if pixels.size else 0.0
    return pixels > high / 2 if high > 0 else np.zeros(pixels.shape, dtype=bool)


def boxes_from_mask(mask: np.ndarray, label: str, min_area: int = DEFAULT_MIN_AREA) -> List[Box]:
    """One box per 8-connected component of ``mask`` with at least ``min_area`` pixels.

    Args:
      mask: boolean ``[H, W]``.
    Returns:
      Boxes in pixel corners, ordered top-to-bottom then left-to-right.
    """
    return [box for box, _ in lesion_regions(mask, label, min_area)]


def lesion_regions(mask: np.ndarray, label: str, min_area: int = DEFAULT_MIN_AREA) -> List[Tuple[Box, np.ndarray]]:
    """The lesions of :func:`boxes_from_mask`, each with its own region: ``(box, bool [h, w])``, the
    component's pixels inside its box (another component crossing the box is not in it)."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions = []
    for index in range(1, count):  # component 0 is the background
        x, y, width, height, area = stats[index]
        if area >= min_area:
            regions.append((box_from_xywh(x, y, width, height, label),
                            components[y:y + height, x:x + width] == index))
    return sorted(regions, key=lambda region: (region[0].ymin, region[0].xmin))


def annotate_case(case: Case, min_area: int = DEFAULT_MIN_AREA) -> AnnotatedImage:
    """Reads one case and turns its masks into boxes.

    Raises:
      ValueError: unreadable image or mask, no mask, or a mask of another size.
    """
    height, width = read_image(case.image_path).shape[:2]
    if not case.mask_paths:
        raise ValueError(f"{case.image_path}: {_no_mask_reason(case.image_path)}")
    boxes: List[Box] = []
    for mask_path in case.mask_paths:
        mask = read_mask(mask_path)
        if mask.shape != (height, width):
            raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} "
                             f"but its image is {width}x{height}")
        boxes.extend(boxes_from_mask(mask, case.label, min_area))
    return AnnotatedImage(case.image_path.name, case.image_path, case.label, width, height, boxes)


def _no_mask_reason(image_path: Path) -> str:
    """Why an image has no case: no mask file; for ``x_mask.png``, also that it may be ``x.png``'s mask."""
    reason = f"no mask file (expected {image_path.stem}_mask.png)"
    match = _MASK_STEM.fullmatch(image_path.stem)
    if match:
        reason += f"; or, if it is itself a mask, its image {match['name']}.png is not in the folder"
    return reason


def annotate_dataset(dataset_dir: Path, class_names: Sequence[str],
                     negative_class: str = DEFAULT_NEGATIVE_CLASS,
                     min_area: int = DEFAULT_MIN_AREA,
                     progress=lambda cases: cases) -> Tuple[List[AnnotatedImage], List[Problem]]:
    """Annotates every case of a dataset tree; bad cases become problems, never exceptions.

    Args:
      class_names: the lesion classes of the label map; folders named otherwise
        (except ``negative_class``) are reported as unknown.
      negative_class: the folder of images without lesions (BUSI's ``normal``).
      progress: wraps the case list (e.g. ``tqdm``) to show progress.
    """
    cases, problems = find_cases(Path(dataset_dir))
    known = set(class_names) | {negative_class}
    seen: Dict[str, Path] = {}
    annotated: List[AnnotatedImage] = []
    for case in progress(cases):
        name = case.image_path.name
        if case.label not in known:
            problems.append(Problem(case.image_path, f"class folder {case.label!r} is not in the label map "
                                                     f"({', '.join(sorted(known))})"))
            continue
        if name in seen:
            problems.append(Problem(case.image_path, f"duplicate file name, already taken by {seen[name]}"))
            continue
        seen[name] = case.image_path
        try:
            image = annotate_case(case, min_area)
        except (ValueError, OSError) as error:
            problems.append(Problem(case.image_path, str(error).removeprefix(f"{case.image_path}: ")))
            continue
        if image.boxes and image.label == negative_class:
            problems.append(Problem(case.image_path, f"lesion mask in the negative class {negative_class!r}"))
            continue
        if not image.boxes and image.label != negative_class:
            masks = ", ".join(p.name for p in case.mask_paths)
            problems.append(Problem(case.image_path, f"no lesion region of at least {min_area} pixels in {masks}: "
                                                     f"a {image.label} image needs one (check the mask, or "
                                                     "lower --min-area)"))
            continue
        annotated.append(image)
    return annotated, problems


def annotations_to_frame(images: Iterable[AnnotatedImage], include_negatives: bool = False) -> pd.DataFrame:
    """Annotated images -> the seed's CSV table, one row per box.

    With ``include_negatives`` an image without boxes gets one row with empty box fields.
    """
    rows = []
    for image in images:
        for box in image.boxes:
            rows.append([image.filename, *box_to_pixel_xywh(box), box.label])
        if not image.boxes and include_negatives:
            rows.append([image.filename, None, None, None, None, image.label])
    # Text stays ``object``: a file name need not be valid UTF-8 (see busdet.files).
    return pd.DataFrame(rows, columns=ANNOTATION_COLUMNS, dtype=object).astype(
        {column: "Int64" for column in ["xmin", "ymin", "width", "height"]})


def image_label(row_labels: Sequence[str]) -> str:
    """The image-level class: malignant if any lesion is malignant, else the first label."""
    return "malignant" if "malignant" in row_labels else row_labels[0]


def coco_dataset(truth: Mapping[str, Sequence[Box]], categories: Mapping[int, str],
                 image_fields: Optional[Mapping[str, dict]] = None) -> dict:
    """``{filename: [Box]}`` -> a COCO detection dict: the one COCO builder (files and evaluation).

    Every image is listed, negatives too (without annotations); image ids follow
    the order of ``truth`` from 1. ``categories`` is ``{id: name}`` (the label
    map's, so that ids match the model's); ``image_fields`` adds keys per image
    (``width``, ``height``, ``label``). ``bbox`` is ``[x, y, width, height]`` in
    pixels, whole numbers written as integers.
    """
    ids = {name: class_id for class_id, name in categories.items()}
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": "lesion"} for i, n in categories.items()]}
    for image_id, (filename, boxes) in enumerate(truth.items(), start=1):
        coco["images"].append({"id": image_id, "file_name": filename, **(image_fields or {}).get(filename, {})})
        for box in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": ids[box.label],
                                        "bbox": [_number(v) for v in box_to_xywh(box)],
                                        "area": _number(box.area), "iscrowd": 0})
    return coco


def _number(value: float):
    """A whole float as an int (``12.0`` -> ``12``), so that pixel boxes stay integers in JSON."""
    return int(value) if float(value).is_integer() else float(value)


def annotations_to_coco(images: Sequence[AnnotatedImage], classes: Dict[int, str]) -> dict:
    """Annotated images -> COCO, each image with its size and class folder (extra ``label`` key)."""
    return coco_dataset({image.filename: image.boxes for image in images}, classes,
                        {image.filename: {"width": image.width, "height": image.height, "label": image.label}
                         for image in images})


def index_images(dataset_dir: Path) -> Dict[str, Path]:
    """``{file name: path}`` of every image under ``dataset_dir`` (recursive), masks left out by
    :func:`separate_masks` folder by folder; of two images of one name, the first in path order."""
    by_folder: Dict[Path, List[Path]] = defaultdict(list)
    for path in Path(dataset_dir).rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            by_folder[path.parent].append(path)
    index = {}
    for path in sorted(image for paths in by_folder.values() for image in separate_masks(paths)[0]):
        index.setdefault(path.name, path)
    return index
