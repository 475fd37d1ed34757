"""Copy-paste of training lesions: the lesion bank cut from the masks, and the paste itself.

    bank = build_lesion_bank(dataset_dir, images, split, classes, source="busi")  # training split only
    bank.save(records_dir / "busi" / LESION_BANK_FILE)
    bank = LesionBank.load([path, ...])
    lesion = resize_lesion(bank.lesions[0], (80, 120), flip=True)
    image, box = paste_lesion(image, lesion, top_left=(40, 60), feather=2.0)

Benign or malignant is the decision the detector gets wrong most, and a training
lesion is only ever seen on its own patient's tissue. Pasted into other images
(normals, lesion-free crops, beside other lesions) it is seen on new surroundings,
so that the class must come from the lesion rather than from the image around it.
The random draws (whether, how many, which, where, how big) are
:mod:`busdet.training.augment`'s ``copy_paste_*`` settings; this module holds the
data and the deterministic paste.

A lesion of the bank is a gray crop of its image around the mask's box, with a
margin of the tissue around it (to match gray levels and to fade the edge in), its
mask in that crop, its class (name and label-map id), its dataset and file name.
Crops are capped at :data:`MAX_SIDE` pixels (down-scaled, the factor kept), so that
a bank of two datasets stays a few tens of MB; it is written beside the TFRecords
(``work/records/NAME/lesion_bank.npz``, never committed: it is cut from the data).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from busdet.annotations import DEFAULT_MIN_AREA, AnnotatedImage, find_cases, lesion_regions, read_mask
from busdet.boxes import Box
from busdet.files import atomic_write
from busdet.images import ImageReadError, read_image

log = logging.getLogger(__name__)

LESION_BANK_FILE = "lesion_bank.npz"
MAX_SIDE = 256  # pixels: the longest side of a stored crop
MARGIN_FRACTION, MIN_MARGIN = 0.15, 12  # tissue kept around the box: of its long side, at least (pixels)
_GAIN_LIMITS = (0.5, 2.0)  # how far gray matching may stretch a lesion's contrast


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One training lesion: ``pixels`` uint8 ``[h, w]`` (gray, its box plus a margin of tissue) and
    ``mask`` bool ``[h, w]``; ``scale`` is stored pixels per original pixel (below 1 when capped)."""

    pixels: np.ndarray
    mask: np.ndarray
    label: str
    class_id: int
    source: str  # the dataset's name (``--data NAME=``)
    filename: str
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class LesionBank:
    """The lesions copy-paste draws from; saved as one compressed ``.npz`` (no pickles)."""

    lesions: Tuple[Lesion, ...] = ()

    def __len__(self) -> int:
        return len(self.lesions)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        return np.array([lesion.label for lesion in self.lesions], dtype=str)

    def indices(self, label: str) -> np.ndarray:
        """Positions of the lesions of class ``label``."""
        return np.flatnonzero(self.labels == label)

    def save(self, path: Path) -> None:
        """Writes the bank atomically: crops and masks flattened end to end, one row each of metadata."""
        lesions = self.lesions
        arrays = {
            "shapes": np.array([lesion.pixels.shape for lesion in lesions], dtype=np.int32).reshape(-1, 2),
            "pixels": np.concatenate([lesion.pixels.ravel() for lesion in lesions] or [np.zeros(0, np.uint8)]),
            "masks": np.concatenate([lesion.mask.ravel() for lesion in lesions] or [np.zeros(0, bool)]),
            "labels": np.array([lesion.label for lesion in lesions], dtype=str),
            "class_ids": np.array([lesion.class_id for lesion in lesions], dtype=np.int64),
            "sources": np.array([lesion.source for lesion in lesions], dtype=str),
            "filenames": np.array([lesion.filename for lesion in lesions], dtype=str),
            "scales": np.array([lesion.scale for lesion in lesions], dtype=np.float64),
        }
        with atomic_write(path, "wb") as stream:
            np.savez_compressed(stream, **arrays)

    @classmethod
    def load(cls, paths: Sequence[Path]) -> "LesionBank":
        """The lesions of every bank file in ``paths``, in order.

        Raises:
          FileNotFoundError: a file is missing (one line naming it).
        """
        lesions: List[Lesion] = []
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no lesion bank (tools/train.py writes one beside the records)")
            with np.load(path, allow_pickle=False) as stored:
                ends = np.cumsum(np.prod(stored["shapes"], axis=1))
                pixels, masks = np.split(stored["pixels"], ends[:-1]), np.split(stored["masks"], ends[:-1])
                for k, shape in enumerate(stored["shapes"]):
                    lesions.append(Lesion(pixels[k].reshape(shape), masks[k].reshape(shape), str(stored["labels"][k]),
                                          int(stored["class_ids"][k]), str(stored["sources"][k]),
                                          str(stored["filenames"][k]), float(stored["scales"][k])))
        return cls(tuple(lesions))


# --- building the bank ---------------------------------------------------------------------


def cut_lesion(gray: np.ndarray, box: Box, region: np.ndarray, class_id: int, source: str, filename: str,
               max_side: int = MAX_SIDE) -> Lesion:
    """The lesion of ``region`` (bool, its pixels inside ``box``) cut from ``gray`` (uint8 ``[H, W]``)
    with a margin of tissue, clipped at the image's edges, and down-scaled to ``max_side`` at most."""
    height, width = gray.shape
    margin = max(MIN_MARGIN, round(MARGIN_FRACTION * max(box.width, box.height)))
    x0, y0, x1, y1 = int(box.xmin), int(box.ymin), int(box.xmax), int(box.ymax)
    top, left = max(0, y0 - margin), max(0, x0 - margin)
    pixels = gray[top:min(height, y1 + margin), left:min(width, x1 + margin)]
    mask = np.zeros(pixels.shape, dtype=bool)
    mask[y0 - top:y1 - top, x0 - left:x1 - left] = region
    scale = min(1.0, max_side / max(pixels.shape))
    if scale < 1.0:
        size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    return Lesion(np.ascontiguousarray(pixels), mask, box.label, class_id, source, filename, scale)


def lesions_of_image(pixels: np.ndarray, masks: Sequence[np.ndarray], label: str, class_id: int, source: str,
                     filename: str, min_area: int = DEFAULT_MIN_AREA) -> List[Lesion]:
    """Every lesion of an RGB image ``uint8 [H, W, 3]``: one per mask component, as the boxes are made
    (:func:`busdet.annotations.lesion_regions`), so that the bank and the records agree."""
    gray = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return [cut_lesion(gray, box, region, class_id, source, filename)
            for mask in masks for box, region in lesion_regions(mask, label, min_area)]


def build_lesion_bank(dataset_dir: Path, images: Sequence[AnnotatedImage], split: Dict[str, str],
                      classes: Dict[int, str], source: str, min_area: int = DEFAULT_MIN_AREA,
                      progress=lambda items: items) -> LesionBank:
    """The lesions of a dataset's **training** images (``split[filename] == "train"``), never val or test.

    Args:
      dataset_dir: the BUSI-layout folder ``images`` were annotated from (its mask files are read again:
        the annotations keep boxes only).
      images: the annotated images (:func:`busdet.annotations.annotate_dataset`); others are ignored.
      classes: the label map ``{id: name}``.
      source: the dataset's name, recorded with each lesion.
    """
    class_ids = {name: class_id for class_id, name in classes.items()}
    training = {image.path for image in images if split.get(image.filename) == "train" and image.boxes}
    cases, _ = find_cases(Path(dataset_dir))
    lesions: List[Lesion] = []
    for case in progress([case for case in cases if case.image_path in training]):
        try:
            pixels = read_image(case.image_path)
            masks = [read_mask(path) for path in case.mask_paths]
        except (ImageReadError, OSError) as error:  # annotated a moment ago: only a file changed since
            log.warning("lesion bank: skipped %s: %s", case.image_path, error)
            continue
        lesions.extend(lesions_of_image(pixels, masks, case.label, class_ids[case.label], source,
                                        case.image_path.name, min_area))
    return LesionBank(tuple(lesions))


# --- the paste -----------------------------------------------------------------------------


def resize_lesion(lesion: Lesion, size: Tuple[int, int], flip: bool = False) -> Lesion:
    """``lesion`` at ``size`` (h, w) pixels, mirrored left-right with ``flip``; ``scale`` is then 1."""
    height, width = size
    shrink = height * width < lesion.pixels.size
    pixels = cv2.resize(lesion.pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    mask = cv2.resize(lesion.mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    if flip:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    return dataclasses.replace(lesion, pixels=np.ascontiguousarray(pixels), mask=np.ascontiguousarray(mask),
                               scale=1.0)


def paste_lesion(image: np.ndarray, lesion: Lesion, top_left: Tuple[int, int],
                 feather: float = 2.0) -> Tuple[np.ndarray, Box]:
    """Pastes ``lesion`` (at its own size) into RGB ``image`` with its crop's top-left at ``top_left`` (y, x).

    The lesion's gray levels are mapped so that its margin of tissue takes the mean
    gray of the target's tissue under the crop (:func:`match_gray_levels`: the lesion
    keeps its contrast to its surroundings, a dark lesion stays darker); the mask,
    grown and blurred by ``feather`` pixels, is the blending weight, fading to zero at
    the crop's edges, so that neither a gray step nor a seam marks the paste.

    Returns:
      ``(new image, box)``: the box of the pasted mask in pixel corners, with the lesion's class.
    """
    top, left = top_left
    height, width = lesion.mask.shape
    window = image[top:top + height, left:left + width].astype(np.float32)
    target = cv2.cvtColor(image[top:top + height, left:left + width], cv2.COLOR_RGB2GRAY)
    matched = match_gray_levels(lesion.pixels, lesion.mask, target)
    alpha = feathered_alpha(lesion.mask, feather)[..., None]
    pasted = image.copy()
    blended = window * (1.0 - alpha) + matched[..., None] * alpha
    pasted[top:top + height, left:left + width] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    rows, columns = np.flatnonzero(lesion.mask.any(axis=1)), np.flatnonzero(lesion.mask.any(axis=0))
    box = Box(float(left + columns[0]), float(top + rows[0]), float(left + columns[-1] + 1),
              float(top + rows[-1] + 1), lesion.label)
    return pasted, box


def match_gray_levels(pixels: np.ndarray, mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``pixels`` (uint8 ``[h, w]``) as float32, so that their tissue outside ``mask`` has the mean
    gray of ``target``'s there (black pixels are no tissue).

    A gain about black, as a scanner's gain acts (an anechoic cyst stays black and the
    lesion keeps its contrast ratio to the tissue, speckle spread scaling with it);
    what :data:`_GAIN_LIMITS` leave of the difference is added as an offset.
    """
    source_tissue, target_tissue = pixels[~mask], target[~mask]
    source_tissue, target_tissue = source_tissue[source_tissue > 0], target_tissue[target_tissue > 0]
    values = pixels.astype(np.float32)
    if source_tissue.size < 10 or target_tissue.size < 10:
        return values
    source_mean, target_mean = max(float(source_tissue.mean()), 1.0), float(target_tissue.mean())
    gain = float(np.clip(target_mean / source_mean, *_GAIN_LIMITS))
    return values * np.float32(gain) + np.float32(target_mean - gain * source_mean)


def feathered_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """Blending weight float32 ``[h, w]``: ``mask`` grown by ``feather`` pixels and Gaussian-blurred
    by it, times a ramp from 0 at the crop's border (a lesion cut at its image's edge fades out)."""
    if feather <= 0:
        return mask.astype(np.float32)
    radius = max(1, round(feather))
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), feather, borderType=cv2.BORDER_CONSTANT)
    rows, columns = (np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32) for n in mask.shape)
    ramp = np.clip(np.minimum(rows[:, None], columns[None, :]) / (2 * feather), 0.0, 1.0)
    return alpha * ramp
