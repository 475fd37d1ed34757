"""Scanner and clinic robustness augmentation for training: numpy + OpenCV, seeded.

    rng = np.random.default_rng(seed)
    image, boxes = augment_ultrasound(image, boxes, rng, UltrasoundAugmentation())
    image, boxes, classes = augment_example(image, boxes, classes, rng, params, bank)  # with copy-paste
    image, boxes, classes = augment_example_tf(image, boxes, classes, params, bank)  # inside a tf.data map

    python tools/plot_augmentations.py --output docs/augmentation_grid.png  # see it

The training images come from two centres (BUSI: wide frames with black margins
and burned-in text; BUS-BRA: tight gray crops from four scanners) and the model is
judged on a third, whose exports carry calipers, text and a body-marker pictogram.
So that the detector learns breast tissue rather than one hospital's look, this
module varies what differs between scanners and clinics:

- scanner settings: gray map (gain, contrast, gamma), depth gain (TGC), speckle,
  blur and resolution (other probe frequencies, small images upscaled);
- framing: zoom-out onto a larger black canvas (field of view, margins). Zoom-in,
  crop and the final resize are Model Garden's parser scale jitter, not done here;
- burned-in overlays: text, calipers (at lesion edges *and* anywhere, on
  lesion-free images too, so that calipers are no lesion cue), depth rulers and
  body-marker pictograms. Overlays change no boxes;
- copy-paste (off by default, ``copy_paste_probability``): lesions of the training
  split, cut from their masks (:mod:`busdet.training.copy_paste`), pasted into the
  image before everything else, each adding a box and its class. It is there for
  the benign-vs-malignant decision: a lesion seen on other tissue than its own.

Each function is pure (returns a new array) and draws its randomness from the
``numpy.random.Generator`` it is given: same seed, same pixels. Images are RGB
``uint8 [H, W, 3]``, gray replicated in the channels, so gray maps and noise act
identically on all three (colour noise would be a cue that does not exist); only
overlays may be coloured, as on some clinics' exports. Boxes are float32
``[N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``; N may be 0 (normal images);
classes int64 ``[N]``, label-map ids.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tensorflow as tf
from official.modeling import hyperparams

from busdet.boxes import boxes_to_normalized_yxyx
from busdet.training.copy_paste import LesionBank, paste_lesion, resize_lesion
from busdet.training.sampling import MALIGNANT_CLASS

Colour = Tuple[int, int, int]
Segment = Tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

FAMILIES = ("gray_map", "tgc", "speckle", "blur", "resolution", "zoom_out",
            "ruler", "body_marker", "calipers", "text")
# Colours of overlays on colour exports (RGB): yellow, green, cyan, amber.
OVERLAY_COLOURS = ((255, 255, 0), (0, 255, 0), (0, 255, 255), (255, 200, 0))
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)
_PASTE_TRIES = 20  # random places tried per pasted lesion before it is given up
_PASTE_MAX_FRACTION = 0.6  # of the image's height and width: the largest pasted crop
_PASTE_MIN_SIDE = 12  # pixels: smaller pasted crops are given up
_TISSUE_LEVEL = 8  # local mean gray above which a pixel is tissue, not black margin
_WORDS = ("BREAST", "LT BREAST", "RT BREAST", "L", "R", "RADIAL", "ANTI-RAD", "TRANS", "SAG", "L12-5",
          "ML6-15", "14L5", "LA523", "2D", "THI", "Res", "Gen", "CH1", "12 O'CLOCK", "3CM FN", "B")


@dataclasses.dataclass
class UltrasoundAugmentation(hyperparams.Config):
    """Probabilities and ranges of :func:`augment_ultrasound`; ranges are ``[low, high]``, drawn uniformly.

    ``probability`` gates the whole chain; each family in :data:`FAMILIES` then
    applies on its own with ``<family>_probability``. With the defaults about 16 %
    of the images pass untouched (15 % by the gate, the rest by drawing no family).

    ``copy_paste_*`` (:func:`augment_example`, outside the gate, off by default): with
    ``copy_paste_probability`` on a lesion-free image (normal, background crop), that
    times ``copy_paste_lesion_image_factor`` on an image with lesions, 1 to
    ``copy_paste_max`` lesions of the bank are pasted where the image is tissue (never
    on black margins, never over a box), at ``copy_paste_scale_range`` times their own
    size in pixels (capped at 0.6 of the image), mirrored with
    ``copy_paste_flip_probability``, gray levels matched to the tissue there and the
    edge feathered by ``copy_paste_feather`` pixels. ``copy_paste_malignant_fraction``
    of the pasted lesions are malignant (negative: as often as in the bank). Turn it
    on from a stage YAML, e.g. ``task.train_data.augmentation.copy_paste_probability:
    0.5``; ``copy_paste_banks`` (the bank files) is filled in by
    :func:`busdet.training.run.build_params` from the records folder.
    """

    probability: float = 0.85
    # Gray map: intensity x gain, contrast about the tissue mean, then gamma (scanner gain and gray map).
    gray_map_probability: float = 0.6
    gain_range: List[float] = dataclasses.field(default_factory=lambda: [0.75, 1.35])
    contrast_range: List[float] = dataclasses.field(default_factory=lambda: [0.75, 1.35])
    gamma_range: List[float] = dataclasses.field(default_factory=lambda: [0.75, 1.35])
    # Depth gain (TGC): a smooth curve through one random dB value per depth band, like the slider bank.
    tgc_probability: float = 0.4
    tgc_max_db: float = 5.0
    tgc_knots: int = 5
    # Multiplicative unit-mean noise; grain is the size in pixels of one independent noise sample.
    speckle_probability: float = 0.3
    speckle_sigma_range: List[float] = dataclasses.field(default_factory=lambda: [0.05, 0.25])
    speckle_grain_range: List[float] = dataclasses.field(default_factory=lambda: [1.5, 4.0])
    # Gaussian blur, sigma in pixels drawn separately per axis (lateral and axial resolution differ).
    blur_probability: float = 0.25
    blur_sigma_range: List[float] = dataclasses.field(default_factory=lambda: [0.5, 2.0])
    # Down-scale by this factor and back up: a low-resolution image upscaled for export.
    resolution_probability: float = 0.25
    resolution_scale_range: List[float] = dataclasses.field(default_factory=lambda: [0.3, 0.8])
    # Canvas size / image size, drawn per axis: wider field of view, BUSI-like black margins.
    zoom_out_probability: float = 0.3
    zoom_out_range: List[float] = dataclasses.field(default_factory=lambda: [1.0, 1.6])
    ruler_probability: float = 0.3
    body_marker_probability: float = 0.3
    calipers_probability: float = 0.35
    caliper_on_lesion_fraction: float = 0.5  # of the caliper pairs on an image with lesions
    text_probability: float = 0.5
    overlay_colour_probability: float = 0.25  # else light gray / white
    # Copy-paste of training lesions (issue 18); 0 = off, and then not one random number is drawn for it.
    copy_paste_probability: float = 0.0
    copy_paste_lesion_image_factor: float = 0.5
    copy_paste_max: int = 2
    copy_paste_malignant_fraction: float = 0.5
    copy_paste_scale_range: List[float] = dataclasses.field(default_factory=lambda: [0.8, 1.25])
    copy_paste_flip_probability: float = 0.5
    copy_paste_feather: float = 2.0
    copy_paste_banks: List[str] = dataclasses.field(default_factory=list)


def only_family(family: str, **overrides) -> UltrasoundAugmentation:
    """The default configuration with ``family`` always applied and every other family off (for
    tests and pictures of one family); ``overrides`` set further fields."""
    switches = {f"{name}_probability": float(name == family) for name in FAMILIES}
    return UltrasoundAugmentation().replace(probability=1.0, **switches, **overrides)


# --- the chain -------------------------------------------------------------------


def augment_ultrasound(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                       params: UltrasoundAugmentation) -> Tuple[np.ndarray, np.ndarray]:
    """Applies the augmentation families of :data:`FAMILIES` in order, each with its probability.

    The order follows the image's life: scanner settings on the tissue, then the
    field of view, then what the clinic burns into the export (drawn last, so
    overlays stay sharp and may land on the black margins as on real exports).

    Args:
      image: RGB ``uint8 [H, W, 3]``.
      boxes: float32 ``[N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``; N may be 0.
      rng: the only source of randomness.
    Returns:
      ``(image uint8 [H', W', 3], boxes float32 [N, 4])``, boxes normalized to the
      new image; ``H', W'`` differ from ``H, W`` only after a zoom-out.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if rng.random() >= params.probability:
        return image, boxes
    for family in FAMILIES:
        # Always draw, so that one family's probability does not shift the others' random streams.
        if rng.random() < getattr(params, f"{family}_probability"):
            image, boxes = _RANDOM_STEPS[family](image, boxes, rng, params)
    return image, boxes


def augment_example(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                    params: UltrasoundAugmentation,
                    bank: Optional[LesionBank] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy-paste (with ``params.copy_paste_probability``) then :func:`augment_ultrasound`.

    First, so that the pasted lesion then gets the same gray map, speckle, blur and
    framing as the tissue around it. With ``copy_paste_probability`` 0 nothing is
    drawn for it: the output is :func:`augment_ultrasound`'s for the same ``rng``.

    Args:
      classes: int64 ``[N]``, the label-map id of each box.
      bank: the lesions to paste; needed when ``copy_paste_probability`` > 0.
    Returns:
      ``(image, boxes float32 [N + k, 4], classes int64 [N + k])``, the k pasted lesions last.
    Raises:
      ValueError: copy-paste is on and ``bank`` is None or empty.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if params.copy_paste_probability > 0:
        if not bank:
            raise ValueError("augmentation.copy_paste_probability > 0 needs a lesion bank (copy_paste_banks)")
        chance = params.copy_paste_probability * (params.copy_paste_lesion_image_factor if len(boxes) else 1.0)
        if rng.random() < chance:
            image, boxes, classes = random_copy_paste(image, boxes, classes, rng, params, bank)
    image, boxes = augment_ultrasound(image, boxes, rng, params)
    return image, boxes, classes


def augment_example_tf(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, params: UltrasoundAugmentation,
                       bank: Optional[LesionBank] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """:func:`augment_example` as a TF op for a ``tf.data`` map; the seed comes from ``tf.random``.

    Args:
      image: ``uint8 [H, W, 3]``; boxes: ``float32 [N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``;
      classes: integer ``[N]``.
    Returns:
      ``(uint8 [None, None, 3], float32 [None, 4], int64 [None])``.
    """
    # Drawn by TF so that tf.random.set_seed makes a training run's augmentation reproducible.
    seed = tf.random.uniform([], maxval=tf.int64.max, dtype=tf.int64)
    return augment_example_seeded_tf(image, boxes, classes, seed, params, bank)


def augment_example_seeded_tf(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, seed: tf.Tensor,
                              params: UltrasoundAugmentation,
                              bank: Optional[LesionBank] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """:func:`augment_example_tf` with an explicit int64 ``seed``: the same pixels as
    ``augment_example(image, boxes, classes, np.random.default_rng(seed), params, bank)``."""
    def run(pixels, corners, labels, seed_value):
        return augment_example(pixels, corners, labels, np.random.default_rng(int(seed_value)), params, bank)

    new_image, new_boxes, new_classes = tf.numpy_function(
        run, [image, boxes, tf.cast(classes, tf.int64), seed], [tf.uint8, tf.float32, tf.int64],
        name="augment_ultrasound")
    new_image.set_shape([None, None, 3])
    new_boxes.set_shape([None, 4])
    new_classes.set_shape([None])
    return new_image, new_boxes, new_classes


def augment_ultrasound_tf(image: tf.Tensor, boxes: tf.Tensor,
                          params: UltrasoundAugmentation) -> Tuple[tf.Tensor, tf.Tensor]:
    """:func:`augment_ultrasound` as a TF op (no classes, so no copy-paste); the seed from ``tf.random``."""
    seed = tf.random.uniform([], maxval=tf.int64.max, dtype=tf.int64)
    return augment_ultrasound_seeded_tf(image, boxes, seed, params)


def augment_ultrasound_seeded_tf(image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                                 params: UltrasoundAugmentation) -> Tuple[tf.Tensor, tf.Tensor]:
    """:func:`augment_ultrasound_tf` with an explicit int64 ``seed``: the same pixels as
    ``augment_ultrasound(image, boxes, np.random.default_rng(seed), params)``."""
    no_classes = tf.zeros(tf.shape(boxes)[:1], tf.int64)
    new_image, new_boxes, _ = augment_example_seeded_tf(image, boxes, no_classes, seed,
                                                        params.replace(copy_paste_probability=0.0))
    return new_image, new_boxes


def lesion_bank_for(params: Optional[UltrasoundAugmentation]) -> Optional[LesionBank]:
    """The bank ``params`` paste from (its ``copy_paste_banks`` loaded), or None when copy-paste is off.

    Raises:
      ValueError: copy-paste is on but no bank file is named; FileNotFoundError: one is missing.
    """
    if params is None or params.copy_paste_probability <= 0:
        return None
    if not params.copy_paste_banks:
        raise ValueError(f"augmentation.copy_paste_probability is {params.copy_paste_probability} but "
                         "copy_paste_banks names no lesion bank (tools/train.py fills it in from --records)")
    bank = LesionBank.load(params.copy_paste_banks)
    if not bank:
        raise ValueError(f"{', '.join(params.copy_paste_banks)}: the lesion banks hold no lesion")
    return bank


# --- scanner settings ---------------------------------------------------------------


def apply_gray_map(image: np.ndarray, gain: float, contrast: float, gamma: float) -> np.ndarray:
    """``uint8 [H, W, 3]`` through ``((x * gain - m) * contrast + m) ** gamma``, one 256-entry LUT.

    ``m`` is the mean of the non-black pixels after the gain, so contrast pivots on
    the tissue, not on the margins; pure black stays black (margins are no tissue).
    """
    sample = image[::4, ::4, 0]
    tissue = sample[sample > 0]
    pivot = gain * (float(tissue.mean()) if tissue.size else 0.0)
    levels = np.arange(256, dtype=np.float64)
    mapped = np.clip(((levels * gain - pivot) * contrast + pivot) / 255.0, 0.0, 1.0) ** gamma
    table = np.round(mapped * 255.0).astype(np.uint8)
    table[0] = 0
    return cv2.LUT(image, table)


def draw_tgc_curve(rng: np.random.Generator, height: int, max_db: float, knots: int) -> np.ndarray:
    """A smooth depth-gain curve ``float32 [height]`` (linear factor, row 0 at the probe).

    ``knots`` random gains in ``[-max_db, max_db]`` dB at evenly spaced depths, joined by
    half-cosines: smooth, and monotonic between knots, like a bank of TGC sliders.
    """
    decibels = rng.uniform(-max_db, max_db, size=max(2, knots))
    position = np.linspace(0.0, len(decibels) - 1, height)
    lower = np.minimum(position.astype(int), len(decibels) - 2)
    weight = (1.0 - np.cos(np.pi * (position - lower))) / 2.0
    curve = decibels[lower] * (1.0 - weight) + decibels[lower + 1] * weight
    return (10.0 ** (curve / 20.0)).astype(np.float32)


def apply_depth_gain(image: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Multiplies row ``i`` of ``uint8 [H, W, 3]`` by ``curve[i]`` (``float32 [H]``)."""
    return _multiply(image, curve[:, None, None])


def apply_speckle(image: np.ndarray, rng: np.random.Generator, sigma: float, grain: float) -> np.ndarray:
    """Multiplies ``uint8 [H, W, 3]`` by unit-mean noise of std ``sigma``, one field for all channels.

    The noise is drawn on a grid ``grain`` times coarser and resized up: correlated
    like real speckle, and fewer random numbers to draw.
    """
    height, width = image.shape[:2]
    coarse = rng.standard_normal((max(2, round(height / grain)), max(2, round(width / grain))), dtype=np.float32)
    noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    # Interpolation shrinks the spread; rescale so that sigma means what it says.
    noise *= np.float32(sigma / max(float(noise[::3, ::3].std()), 1e-6))
    return _multiply(image, np.maximum(noise + 1.0, 0.0)[..., None])


def apply_blur(image: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    """Gaussian blur of ``uint8 [H, W, 3]``, sigmas in pixels (lateral x, axial y)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y)


def apply_resolution(image: np.ndarray, scale: float, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Down-scales ``uint8 [H, W, 3]`` by ``scale`` (area averaging) and back up to ``[H, W, 3]``."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=interpolation)


def _multiply(image: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` times a float factor broadcastable to it (``[H, 1, 1]``, ``[H, W, 1]``).

    The factor goes through 8-bit fixed point (steps of 1/64, factors up to 4) so
    that OpenCV's saturating multiply does the work: 20x faster than float numpy.
    """
    steps = np.clip(factor * np.float32(64) + np.float32(0.5), 0, 255).astype(np.uint8)
    return cv2.multiply(image, np.ascontiguousarray(np.broadcast_to(steps, image.shape)), scale=1 / 64)


# --- field of view ----------------------------------------------------------------------


def zoom_out(image: np.ndarray, boxes: np.ndarray, canvas_size: Tuple[int, int],
             offset: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Places ``image`` on a black canvas at ``offset`` (top, left); boxes follow.

    Args:
      image: ``uint8 [H, W, 3]``; boxes: float32 ``[N, 4]`` normalized ``[ymin, xmin, ymax, xmax]``.
      canvas_size: ``(H', W')`` with ``H' >= H + top`` and ``W' >= W + left``.
    Returns:
      ``(uint8 [H', W', 3], float32 [N, 4])``, boxes normalized to the canvas.
    """
    height, width = image.shape[:2]
    (canvas_height, canvas_width), (top, left) = canvas_size, offset
    canvas = np.zeros((canvas_height, canvas_width, 3), dtype=np.uint8)
    canvas[top:top + height, left:left + width] = image
    scale = np.array([height / canvas_height, width / canvas_width] * 2, dtype=np.float64)
    shift = np.array([top / canvas_height, left / canvas_width] * 2, dtype=np.float64)
    return canvas, (boxes * scale + shift).astype(np.float32)


# --- copy-paste ------------------------------------------------------------------------------


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]``, 1 where RGB ``image`` is tissue: the local mean gray is above black, eroded
    so that the black margins (and the tissue's last few pixels before them) are left out."""
    size = max(3, min(image.shape[:2]) // 40) | 1
    local_mean = cv2.blur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (size, size))
    return cv2.erode((local_mean > _TISSUE_LEVEL).astype(np.uint8), np.ones((size, size), np.uint8))


def random_copy_paste(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                      params: UltrasoundAugmentation, bank: LesionBank) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pastes 1 to ``copy_paste_max`` lesions of ``bank`` (see :class:`UltrasoundAugmentation`).

    A lesion's whole crop (lesion and margin) must lie on tissue and clear of every
    box, given and pasted; a lesion without such a place in :data:`_PASTE_TRIES` draws
    is left out, so fewer (or no) lesions may be pasted. Boxes and classes of the
    pasted lesions are appended.
    """
    height, width = image.shape[:2]
    tissue = cv2.integral(tissue_mask(image))
    taken = [tuple(box) for box in boxes * np.array([height, width, height, width])]
    new_boxes, new_classes = [], []
    for _ in range(int(rng.integers(1, params.copy_paste_max + 1))):
        lesion = bank.lesions[_draw_lesion_index(rng, bank, params.copy_paste_malignant_fraction)]
        size = np.array(lesion.mask.shape) * rng.uniform(*params.copy_paste_scale_range) / lesion.scale
        size = np.round(size * min(1.0, *(_PASTE_MAX_FRACTION * np.array([height, width]) / size))).astype(int)
        flip = rng.random() < params.copy_paste_flip_probability
        if size.min() < _PASTE_MIN_SIDE:
            continue
        lesion = resize_lesion(lesion, tuple(size), flip)
        top_left = _draw_place(rng, tissue, taken, tuple(size))
        if top_left is None or not lesion.mask.any():
            continue
        image, box = paste_lesion(image, lesion, top_left, params.copy_paste_feather)
        taken.append((top_left[0], top_left[1], top_left[0] + size[0], top_left[1] + size[1]))
        new_boxes.append(box)
        new_classes.append(lesion.class_id)
    if not new_boxes:
        return image, boxes, classes
    return (image, np.concatenate([boxes, boxes_to_normalized_yxyx(new_boxes, width, height)]),
            np.concatenate([classes, np.array(new_classes, dtype=np.int64)]))


def _draw_lesion_index(rng: np.random.Generator, bank: LesionBank, malignant_fraction: float) -> int:
    """A lesion of the bank: malignant with ``malignant_fraction`` (when the bank has both kinds),
    else uniformly; a negative fraction draws uniformly from the whole bank."""
    malignant = bank.indices(MALIGNANT_CLASS)
    others = np.setdiff1d(np.arange(len(bank)), malignant)
    if malignant_fraction < 0 or not len(malignant) or not len(others):
        return int(rng.integers(len(bank)))
    pool = malignant if rng.random() < malignant_fraction else others
    return int(pool[rng.integers(len(pool))])


def _draw_place(rng: np.random.Generator, tissue: np.ndarray, taken: List[Tuple[float, ...]],
                size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """A top-left (y, x) where a ``size`` crop lies wholly on tissue (``tissue``: its integral image)
    and overlaps no ``taken`` box (pixels, ``ymin, xmin, ymax, xmax``); None when none is found."""
    height, width = tissue.shape[0] - 1, tissue.shape[1] - 1
    crop_height, crop_width = size
    if crop_height > height or crop_width > width:
        return None
    for _ in range(_PASTE_TRIES):
        top, left = int(rng.integers(0, height - crop_height + 1)), int(rng.integers(0, width - crop_width + 1))
        bottom, right = top + crop_height, left + crop_width
        on_tissue = (tissue[bottom, right] - tissue[top, right] - tissue[bottom, left] + tissue[top, left]
                     == crop_height * crop_width)
        clear = all(bottom <= y0 or top >= y1 or right <= x0 or left >= x1 for y0, x0, y1, x1 in taken)
        if on_tissue and clear:
            return top, left
    return None


# --- burned-in overlays -------------------------------------------------------------------


def draw_text(image: np.ndarray, lines: Sequence[str], origin: Tuple[int, int], colour: Colour,
              scale: float, font: int = cv2.FONT_HERSHEY_SIMPLEX) -> np.ndarray:
    """Writes ``lines`` one under the other, the first line's baseline-left at ``origin`` (x, y)."""
    canvas = image.copy()
    (_, line_height), _ = cv2.getTextSize("Ag", font, scale, 1)
    for index, line in enumerate(lines):
        y = origin[1] + int(index * 1.6 * line_height)
        cv2.putText(canvas, line, (origin[0], y), font, scale, colour, 1, cv2.LINE_AA)
    return canvas


def draw_calipers(image: np.ndarray, segments: Sequence[Segment], colour: Colour, marker: int,
                  size: int, dotted: bool) -> np.ndarray:
    """Draws a caliper mark (``cv2.MARKER_CROSS`` "+" or ``MARKER_TILTED_CROSS`` "x") at both
    ends of each segment, optionally joined by a dotted line; ``segments`` in pixels."""
    canvas = image.copy()
    for x0, y0, x1, y1 in segments:
        for x, y in ((x0, y0), (x1, y1)):
            cv2.drawMarker(canvas, (int(round(x)), int(round(y))), colour, marker, size, 1, cv2.LINE_AA)
        if dotted:
            dots = np.linspace(0.0, 1.0, max(2, int(np.hypot(x1 - x0, y1 - y0) / (0.6 * size))))[1:-1]
            for t in dots:
                cv2.circle(canvas, (int(round(x0 + t * (x1 - x0))), int(round(y0 + t * (y1 - y0)))), 1, colour, -1)
    return canvas


def draw_ruler(image: np.ndarray, start: Tuple[int, int], length: int, spacing: float, tick: int,
               colour: Colour, vertical: bool = True, backbone: bool = True, numbers: bool = False,
               thickness: int = 1) -> np.ndarray:
    """A depth ruler (vertical) or scale bar (horizontal) from ``start`` (x, y), ``length`` px long.

    Ticks every ``spacing`` px, every fifth twice as long and, with ``numbers``,
    labelled 0, 1, 2 ...; ``tick`` is the signed tick length across the ruler
    (positive: towards +x for a vertical ruler, +y for a horizontal one).
    ``backbone=False`` leaves only the ticks, as on some scanners.
    """
    canvas = image.copy()
    along, across = (np.array([0, 1]), np.array([1, 0])) if vertical else (np.array([1, 0]), np.array([0, 1]))
    origin = np.array(start)
    if backbone:
        cv2.line(canvas, _point(origin), _point(origin + along * length), colour, thickness)
    for index in range(int(length // spacing) + 1):
        base = origin + along * round(index * spacing)
        major = index % 5 == 0
        cv2.line(canvas, _point(base), _point(base + across * tick * (2 if major else 1)), colour, thickness)
        if numbers and major:
            label_at = base + across * (3 * tick) + along * 4 - np.array([4, 0]) * (tick < 0)
            cv2.putText(canvas, str(index // 5), _point(label_at), cv2.FONT_HERSHEY_PLAIN, 0.9, colour, 1)
    return canvas


def _point(xy: np.ndarray) -> Tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))


def draw_body_marker(image: np.ndarray, centre: Tuple[int, int], size: int, probe_angle: float,
                     probe_offset: Tuple[float, float], colour: Colour, outline: bool) -> np.ndarray:
    """A body-marker pictogram: a breast (circle with nipple, or a side outline on the chest
    line) and the probe as a thick bar at ``probe_angle`` (radians), on a dark framed square.

    ``probe_offset`` moves the probe from the centre, in fractions of the radius.
    """
    canvas = image.copy()
    (cx, cy), radius = centre, size // 2
    cv2.rectangle(canvas, (cx - radius - 3, cy - radius - 3), (cx + radius + 3, cy + radius + 3), (0, 0, 0), -1)
    cv2.rectangle(canvas, (cx - radius - 3, cy - radius - 3), (cx + radius + 3, cy + radius + 3), colour, 1)
    if outline:  # side view: the breast's curve above the chest wall
        cv2.ellipse(canvas, (cx, cy + radius // 2), (radius - 2, radius - 2), 0, 180, 360, colour, 1, cv2.LINE_AA)
        cv2.line(canvas, (cx - radius + 2, cy + radius // 2), (cx + radius - 2, cy + radius // 2), colour, 1)
    else:  # front view: breast and nipple
        cv2.circle(canvas, (cx, cy), radius - 2, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, (cx, cy), max(1, radius // 8), colour, -1, cv2.LINE_AA)
    px, py = cx + probe_offset[0] * radius / 2, cy + probe_offset[1] * radius / 2
    dx, dy = 0.45 * radius * np.cos(probe_angle), 0.45 * radius * np.sin(probe_angle)
    cv2.line(canvas, (int(px - dx), int(py - dy)), (int(px + dx), int(py + dy)), colour, max(2, radius // 7))
    return canvas


# --- random draws: one per family, all with the signature of augment_ultrasound's steps -------


Step = Callable[[np.ndarray, np.ndarray, np.random.Generator, UltrasoundAugmentation],
                Tuple[np.ndarray, np.ndarray]]


def _random_gray_map(image, boxes, rng, params):
    gain, contrast, gamma = (rng.uniform(*r) for r in (params.gain_range, params.contrast_range,
                                                       params.gamma_range))
    return apply_gray_map(image, gain, contrast, gamma), boxes


def _random_tgc(image, boxes, rng, params):
    return apply_depth_gain(image, draw_tgc_curve(rng, image.shape[0], params.tgc_max_db, params.tgc_knots)), boxes


def _random_speckle(image, boxes, rng, params):
    sigma, grain = rng.uniform(*params.speckle_sigma_range), rng.uniform(*params.speckle_grain_range)
    return apply_speckle(image, rng, sigma, grain), boxes


def _random_blur(image, boxes, rng, params):
    return apply_blur(image, *rng.uniform(*params.blur_sigma_range, size=2)), boxes


def _random_resolution(image, boxes, rng, params):
    interpolation = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)[rng.choice(3, p=[0.5, 0.4, 0.1])]
    return apply_resolution(image, rng.uniform(*params.resolution_scale_range), interpolation), boxes


def _random_zoom_out(image, boxes, rng, params):
    size = np.array(image.shape[:2])
    canvas = np.maximum(size, np.round(size * rng.uniform(*params.zoom_out_range, size=2)).astype(int))
    offset = [int(rng.integers(0, extra + 1)) for extra in canvas - size]
    return zoom_out(image, boxes, tuple(canvas), tuple(offset))


def _random_ruler(image, boxes, rng, params):
    height, width = image.shape[:2]
    colour, unit = _overlay_colour(rng, params), _unit(image)
    spacing = rng.uniform(0.02, 0.06) * height  # 0.5 or 1 cm for a 3-8 cm deep image
    tick, thickness = int(max(3, rng.uniform(4, 9) * unit)), int(rng.integers(1, 3))
    if rng.random() < 0.7:  # depth ruler along the left or right edge, ticks pointing inwards
        right = rng.random() < 0.5
        x = int(width * (1 - rng.uniform(0.01, 0.08))) if right else int(width * rng.uniform(0.01, 0.08))
        top = int(rng.uniform(0.0, 0.15) * height)
        length = int((height - top) * rng.uniform(0.6, 0.95))
        canvas = draw_ruler(image, (x, top), length, spacing, -tick if right else tick, colour, vertical=True,
                            backbone=rng.random() < 0.5, numbers=rng.random() < 0.5, thickness=thickness)
    else:  # scale bar along the bottom
        left, y = int(rng.uniform(0.1, 0.6) * width), int(height * (1 - rng.uniform(0.02, 0.08)))
        canvas = draw_ruler(image, (left, y), int(rng.uniform(0.15, 0.35) * width), spacing, -tick, colour,
                            vertical=False, thickness=thickness)
    return canvas, boxes


def _random_body_marker(image, boxes, rng, params):
    height, width = image.shape[:2]
    size = int(rng.uniform(35, 70) * _unit(image))
    margin = int(rng.uniform(0.01, 0.05) * min(height, width)) + size // 2 + 3
    right, bottom = rng.random() < 0.5, rng.random() < 0.7  # mostly a bottom corner
    centre = (width - margin if right else margin, height - margin if bottom else margin)
    canvas = draw_body_marker(image, centre, size, rng.uniform(0, np.pi), tuple(rng.uniform(-1, 1, size=2)),
                              _overlay_colour(rng, params), outline=rng.random() < 0.4)
    return canvas, boxes


def _random_calipers(image, boxes, rng, params):
    height, width = image.shape[:2]
    segments = caliper_segments(rng, boxes, (height, width), params.caliper_on_lesion_fraction)
    colour, unit = _overlay_colour(rng, params), _unit(image)
    marker = cv2.MARKER_CROSS if rng.random() < 0.6 else cv2.MARKER_TILTED_CROSS
    canvas = draw_calipers(image, segments, colour, marker, int(rng.uniform(8, 16) * unit), rng.random() < 0.7)
    if rng.random() < 0.5:  # the measurement read-out, e.g. "1 D 1.23cm", in a corner
        lines = [f"{i + 1} D {rng.uniform(0.3, 3.0):.2f}cm" for i in range(len(segments))]
        canvas = _draw_text_panel(canvas, lines, colour, rng)
    return canvas, boxes


def caliper_segments(rng: np.random.Generator, boxes: np.ndarray, shape: Tuple[int, int],
                     on_lesion_fraction: float) -> List[Segment]:
    """One or two caliper measurements ``(x0, y0, x1, y1)`` in pixels for an image of ``shape`` (H, W).

    With probability ``on_lesion_fraction`` (when there are ``boxes``, normalized
    ``[ymin, xmin, ymax, xmax]``) a segment spans a lesion's box along its width or
    height, ends within 3 % of the box's edges, as a sonographer measures; otherwise
    it lies anywhere, so that calipers are seen on tissue and lesion-free images too.
    """
    height, width = shape
    segments = []
    for _ in range(int(rng.integers(1, 3))):
        if len(boxes) and rng.random() < on_lesion_fraction:
            ymin, xmin, ymax, xmax = boxes[rng.integers(len(boxes))] * np.array([height, width, height, width])
            jitter = rng.uniform(-0.03, 0.03, size=2) * max(xmax - xmin, ymax - ymin)
            if rng.random() < 0.6:  # the width, at a random height inside the box
                y = rng.uniform(ymin + 0.3 * (ymax - ymin), ymax - 0.3 * (ymax - ymin))
                segments.append((xmin + jitter[0], y, xmax + jitter[1], y))
            else:
                x = rng.uniform(xmin + 0.3 * (xmax - xmin), xmax - 0.3 * (xmax - xmin))
                segments.append((x, ymin + jitter[0], x, ymax + jitter[1]))
        else:
            x0, y0 = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
            length, angle = rng.uniform(0.05, 0.4) * min(height, width), rng.uniform(0, np.pi)
            segments.append((x0, y0, x0 + length * np.cos(angle), y0 + length * np.sin(angle)))
    return segments


def _random_text(image, boxes, rng, params):
    canvas = image
    for _ in range(int(rng.integers(1, 3))):  # e.g. scanner settings top left, date bottom right
        lines = [_random_label(rng) for _ in range(int(rng.integers(1, 5)))]
        canvas = _draw_text_panel(canvas, lines, _overlay_colour(rng, params), rng)
    return canvas, boxes


def _draw_text_panel(image: np.ndarray, lines: List[str], colour: Colour, rng: np.random.Generator) -> np.ndarray:
    """:func:`draw_text` in a random corner (80 %) or anywhere, in a random font and size."""
    height, width = image.shape[:2]
    font = _FONTS[rng.integers(len(_FONTS))]
    scale = rng.uniform(0.35, 0.7) * _unit(image) * (1.6 if font == cv2.FONT_HERSHEY_PLAIN else 1.0)
    (text_width, line_height), _ = cv2.getTextSize(max(lines, key=len), font, scale, 1)
    block_height = int(1.6 * line_height * len(lines))
    margin = int(rng.uniform(0.01, 0.04) * width)
    if rng.random() < 0.8:
        x = margin if rng.random() < 0.5 else width - margin - text_width
        y = margin + line_height if rng.random() < 0.5 else height - margin - block_height + line_height
    else:
        x, y = int(rng.uniform(0, 0.8) * width), int(rng.uniform(0.05, 0.9) * height)
    return draw_text(image, lines, (max(0, x), max(line_height, y)), colour, scale, font)


def _random_label(rng: np.random.Generator) -> str:
    """A short on-screen string: depth, frequency, gain, frame rate, a date, a time, a word."""
    day, month, year, hour, minute = (int(v) for v in rng.integers([1, 1, 2012, 0, 0], [29, 13, 2026, 24, 60]))
    labels = (f"{rng.uniform(2.0, 6.0):.1f}cm", f"{rng.integers(5, 18)}MHz", f"G{rng.integers(20, 90)}",
              f"DR{rng.integers(45, 85)}", f"FR {rng.integers(10, 60)}Hz", f"{day:02d}/{month:02d}/{year}",
              f"{hour:02d}:{minute:02d}", _WORDS[rng.integers(len(_WORDS))],
              f"MI {rng.uniform(0.2, 1.4):.1f} TIS {rng.uniform(0, 1):.1f}", f"ID {rng.integers(10 ** 5, 10 ** 8)}")
    return labels[rng.integers(len(labels))]


def _overlay_colour(rng: np.random.Generator, params: UltrasoundAugmentation) -> Colour:
    """Light gray to white, or with ``overlay_colour_probability`` a (dimmed) export colour, RGB."""
    if rng.random() < params.overlay_colour_probability:
        colour = np.array(OVERLAY_COLOURS[rng.integers(len(OVERLAY_COLOURS))]) * rng.uniform(0.75, 1.0)
        return tuple(int(c) for c in colour)
    gray = int(rng.uniform(170, 256))
    return gray, gray, gray


def _unit(image: np.ndarray) -> float:
    """Overlay size unit: 1 for a 600 px frame, so that marks keep their size relative to the image."""
    return max(image.shape[:2]) / 600.0


_RANDOM_STEPS: Dict[str, Step] = {
    "gray_map": _random_gray_map, "tgc": _random_tgc, "speckle": _random_speckle, "blur": _random_blur,
    "resolution": _random_resolution, "zoom_out": _random_zoom_out, "ruler": _random_ruler,
    "body_marker": _random_body_marker, "calipers": _random_calipers, "text": _random_text,
}
