"""Synthetic B-mode breast ultrasound phantoms with lesion masks, for tests and demos.

    python tools/make_phantoms.py --output work/phantoms --per-class 20 --seed 0

BUSI images may never be committed, so the project makes its own: a seeded
generator of ultrasound-like frames in BUSI's layout. Each frame is a simple
physical model, not a picture of anyone:

- tissue layers under the probe (skin line, subcutaneous fat with Cooper's
  ligaments, fibroglandular layer, retromammary fat, pectoral muscle, chest wall),
  each a reflectivity with horizontal streaky texture;
- lesions with the textbook signs: *benign-like* oval, circumscribed, wider than
  tall, anechoic or hypoechoic, with posterior acoustic enhancement; *malignant-like*
  irregular and spiculated, taller than wide, heterogeneous with echogenic halo and
  micro-calcifications, with posterior shadowing;
- every ray (image column) attenuated by what it crossed (so lesions enhance or
  shadow what lies below them), partly compensated by time-gain control;
- Rayleigh speckle (complex Gaussian scatterers blurred by the beam), log compression,
  sometimes black margins and an on-screen text label.

Same seed, same pixels: everything is drawn from one ``numpy.random.Generator``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from busdet.annotations import AnnotatedImage
from busdet.boxes import Box
from busdet.files import atomic_write

log = logging.getLogger(__name__)

LESION_LABELS = ("benign", "malignant")
NEGATIVE_LABEL = "normal"
LABELS = LESION_LABELS + (NEGATIVE_LABEL,)
_LABEL_CODES = {label: code for code, label in enumerate(LABELS)}

MIN_WIDTH, MAX_WIDTH = 450, 1000  # BUSI's range of frame widths
_MAX_LESIONS = 3
_PLACEMENT_TRIES = 200
_SCREEN_LABELS = ("LEFT BREAST", "RIGHT BREAST", "LT BREAST", "RT BREAST", "L 2 o'clock", "R 10 o'clock")


@dataclass
class Phantom:
    """One synthetic frame with its ground truth.

    Attributes:
      image: RGB ``uint8 [H, W, 3]`` (gray replicated in the three channels).
      masks: one boolean ``[H, W]`` per lesion; a single connected region each,
        inside the frame, never overlapping another.
      boxes: the exact bounding box of each mask in pixel corners (max exclusive),
        labelled with the class.
      label: "benign", "malignant" or "normal" (no lesion).
    """

    image: np.ndarray
    masks: List[np.ndarray]
    boxes: List[Box]
    label: str


@dataclass(frozen=True)
class _Layers:
    """Depth (rows) of the tissue interfaces, one value per column: float ``[W]`` each."""

    skin: np.ndarray
    gland_top: np.ndarray
    gland_bottom: np.ndarray
    muscle_top: np.ndarray
    muscle_bottom: np.ndarray


@dataclass(frozen=True)
class _Field:
    """The imaged region inside the black margins: rows/columns ``[top, bottom)``, ``[left, right)``."""

    top: int
    bottom: int
    left: int
    right: int


def generate_phantom(seed: int, label: str, width: Optional[int] = None, height: Optional[int] = None,
                     lesions: Optional[int] = None) -> Phantom:
    """Generates one phantom frame; the same arguments always give the same pixels.

    Args:
      seed: any non-negative int.
      label: "benign", "malignant" or "normal".
      width, height: frame size in pixels; None draws BUSI-like sizes from the seed
        (width 450-1000, height 0.7-0.9 of the width).
      lesions: number of lesions (1-3 for a lesion class, 0 for normal); None draws
        1 (80 %) or 2 (20 %) for a lesion class.
    Raises:
      ValueError: unknown label, impossible lesion count or a frame too small.
    """
    if label not in _LABEL_CODES:
        raise ValueError(f"unknown phantom label {label!r} (expected one of {', '.join(LABELS)})")
    rng = np.random.default_rng([int(seed), _LABEL_CODES[label]])
    width, height = _draw_size(rng, width, height)
    count = _draw_lesion_count(rng, label, lesions)
    field = _draw_field(rng, width, height)
    layers = _draw_layers(rng, width, height)
    reflectivity = _tissue_reflectivity(rng, layers, height, width)
    base_attenuation = _base_attenuation(rng, height)
    attenuation = np.full((height, width), base_attenuation, dtype=np.float32)
    masks = _place_lesions(rng, label, count, (height, width), field, layers)
    for mask in masks:
        _draw_lesion(rng, label, mask, reflectivity, attenuation)
    gray = _render(rng, reflectivity, attenuation, base_attenuation)
    _draw_frame(rng, gray, field)
    image = np.repeat(gray[..., None], 3, axis=2)
    return Phantom(image, masks, [mask_box(mask, label) for mask in masks], label)


def mask_box(mask: np.ndarray, label: str) -> Box:
    """The bounding box of a boolean ``[H, W]`` mask in pixel corners (max exclusive)."""
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    return Box(float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1), label)


# --- size, frame and tissue -------------------------------------------------


def _draw_size(rng: np.random.Generator, width: Optional[int], height: Optional[int]) -> Tuple[int, int]:
    aspect = rng.uniform(0.7, 0.9)
    if width is None and height is None:
        width = int(rng.integers(MIN_WIDTH, MAX_WIDTH + 1))
    if width is None:
        width = int(round(height / aspect))
    if height is None:
        height = int(round(width * aspect))
    if width < 128 or height < 128:
        raise ValueError(f"phantom of {width}x{height} pixels is too small (at least 128x128)")
    return int(width), int(height)


def _draw_lesion_count(rng: np.random.Generator, label: str, lesions: Optional[int]) -> int:
    if label == NEGATIVE_LABEL:
        if lesions:
            raise ValueError(f"a {NEGATIVE_LABEL!r} phantom has no lesions (got lesions={lesions})")
        return 0
    if lesions is None:
        return 2 if rng.random() < 0.2 else 1
    if not 1 <= lesions <= _MAX_LESIONS:
        raise ValueError(f"a {label!r} phantom has 1 to {_MAX_LESIONS} lesions (got lesions={lesions})")
    return int(lesions)


def _draw_field(rng: np.random.Generator, width: int, height: int) -> _Field:
    """Black margins around the imaged region on some frames, as screen captures have."""
    left = right = bottom = 0
    if rng.random() < 0.35:
        left = int(rng.uniform(0.0, 0.05) * width)
        right = int(rng.uniform(0.0, 0.05) * width)
    if rng.random() < 0.25:
        bottom = int(rng.uniform(0.03, 0.1) * height)
    return _Field(0, height - bottom, left, width - right)


def _smooth_curve(rng: np.random.Generator, width: int, depth: float, amplitude: float) -> np.ndarray:
    """A gently wavy depth profile ``float [W]``: ``depth`` +- about ``amplitude`` (three sines)."""
    x = np.arange(width) / width
    curve = np.full(width, depth, dtype=np.float64)
    for cycles, weight in ((rng.uniform(0.3, 0.8), 0.6), (rng.uniform(0.8, 2.0), 0.3), (rng.uniform(2.0, 4.0), 0.1)):
        curve += amplitude * weight * np.sin(2 * np.pi * (cycles * x + rng.random()))
    return curve


def _draw_layers(rng: np.random.Generator, width: int, height: int) -> _Layers:
    skin = _smooth_curve(rng, width, rng.uniform(0.02, 0.04) * height, 0.004 * height)
    gland_top = skin + _smooth_curve(rng, width, rng.uniform(0.06, 0.15) * height, 0.03 * height)
    gland_bottom = gland_top + _smooth_curve(rng, width, rng.uniform(0.35, 0.5) * height, 0.06 * height)
    muscle_top = gland_bottom + _smooth_curve(rng, width, rng.uniform(0.03, 0.07) * height, 0.015 * height)
    muscle_bottom = muscle_top + _smooth_curve(rng, width, rng.uniform(0.1, 0.18) * height, 0.02 * height)
    return _Layers(skin, gland_top, gland_bottom, muscle_top, muscle_bottom)


def _streaks(rng: np.random.Generator, shape: Tuple[int, int], sigma_x: float, sigma_y: float) -> np.ndarray:
    """Gaussian noise blurred anisotropically: ``float32 [H, W]``, zero mean, unit std.

    Wide blurs are made at a lower resolution and resized up (same look, far cheaper).
    """
    step_x, step_y = max(1, int(sigma_x / 3)), max(1, int(sigma_y / 3))
    small_shape = (-(-shape[0] // step_y), -(-shape[1] // step_x))
    noise = rng.standard_normal(small_shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma_x / step_x, sigmaY=sigma_y / step_y,
                             borderType=cv2.BORDER_REFLECT)
    if small_shape != tuple(shape):
        noise = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    mean, std = cv2.meanStdDev(noise)
    return (noise - np.float32(mean[0, 0])) / np.float32(max(std[0, 0], 1e-6))


def _step(distance: np.ndarray, soft: float) -> np.ndarray:
    """Logistic step from 0 to 1 around ``distance == 0`` (tanh form: no overflow far away)."""
    return 0.5 + 0.5 * np.tanh(distance / (2.0 * soft))


def _tissue_reflectivity(rng: np.random.Generator, layers: _Layers, height: int, width: int) -> np.ndarray:
    """Mean echo amplitude ``float32 [H, W]`` (about 0.02 anechoic .. 1 bright) of the layered breast."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    shape = (height, width)
    soft = max(2.0, height * 0.006)

    def below(depth: np.ndarray) -> np.ndarray:  # soft indicator of the rows under an interface
        return _step(rows - depth.astype(np.float32)[None, :], soft)

    def interface(depth: np.ndarray, thickness: float) -> np.ndarray:  # a bright specular line
        return np.exp(-0.5 * ((rows - depth.astype(np.float32)[None, :]) / thickness) ** 2)

    fine = _streaks(rng, shape, sigma_x=rng.uniform(6, 14), sigma_y=rng.uniform(1.5, 3))
    coarse = _streaks(rng, shape, sigma_x=width * 0.04, sigma_y=height * 0.015)
    fat = rng.uniform(0.12, 0.2) * np.exp(0.35 * coarse)
    gland = rng.uniform(0.35, 0.55) * np.exp(0.45 * fine + 0.35 * coarse)
    muscle = 0.22 * np.exp(0.6 * _streaks(rng, shape, sigma_x=width * 0.03, sigma_y=1.2))
    deep = 0.025 * np.exp(0.3 * coarse)
    # Layers from the skin down: each interface switches from one tissue to the next.
    reflectivity = fat + below(layers.gland_top) * (gland - fat) + below(layers.gland_bottom) * (fat - gland)
    reflectivity += below(layers.muscle_top) * (muscle - fat) + below(layers.muscle_bottom) * (deep - muscle)
    reflectivity *= below(layers.skin)
    reflectivity += 0.9 * interface(layers.skin, 0.006 * height) + 0.7 * interface(layers.muscle_bottom, 2.5)
    reflectivity += 0.3 * interface(layers.gland_top, 2.0) + 0.25 * interface(layers.muscle_top, 2.0)
    reflectivity = np.maximum(reflectivity, 0.02).astype(np.float32)
    _draw_ligaments(rng, reflectivity, layers)
    _draw_fat_lobules(rng, reflectivity, layers)
    return reflectivity


def _draw_ligaments(rng: np.random.Generator, reflectivity: np.ndarray, layers: _Layers) -> None:
    """Cooper's ligaments: thin bright arcs crossing the fat towards the skin."""
    height, width = reflectivity.shape
    overlay = np.zeros_like(reflectivity)
    for _ in range(int(rng.integers(3, 8))):
        x0 = int(rng.integers(0, width))
        x1 = int(np.clip(x0 + rng.uniform(-0.25, 0.25) * width, 0, width - 1))
        y0, y1 = int(layers.gland_top[x0]), int(layers.skin[x1] + 0.02 * height)
        xm = (x0 + x1) / 2 + rng.uniform(-0.05, 0.05) * width
        ym = (y0 + y1) / 2 + rng.uniform(-0.03, 0.03) * height
        points = np.array([[x0, y0], [xm, ym], [x1, y1]], dtype=np.int32)
        cv2.polylines(overlay, [points], False, float(rng.uniform(0.25, 0.5)), thickness=2)
    reflectivity += cv2.GaussianBlur(overlay, (0, 0), 1.2)


def _draw_fat_lobules(rng: np.random.Generator, reflectivity: np.ndarray, layers: _Layers) -> None:
    """Low-contrast dark ovals in the subcutaneous fat (the look-alikes of real scans)."""
    height, width = reflectivity.shape
    shade = np.ones_like(reflectivity)
    for _ in range(int(rng.integers(2, 6))):
        x = int(rng.integers(0, width))
        top, bottom = layers.skin[x], layers.gland_top[x]
        y = int((top + bottom) / 2)
        axes = (int(rng.uniform(0.03, 0.08) * width), max(3, int((bottom - top) * rng.uniform(0.2, 0.4))))
        cv2.ellipse(shade, (x, y), axes, float(rng.uniform(-10, 10)), 0, 360, float(rng.uniform(0.6, 0.8)), -1)
    reflectivity *= cv2.GaussianBlur(shade, (0, 0), 3.0)


def _base_attenuation(rng: np.random.Generator, height: int) -> float:
    """Per-row attenuation so that about 2/3 of the echo is lost over the frame's depth."""
    return float(rng.uniform(0.9, 1.4) / height)


# --- lesions ------------------------------------------------------------------


def _place_lesions(rng: np.random.Generator, label: str, count: int, shape: Tuple[int, int], field: _Field,
                   layers: _Layers) -> List[np.ndarray]:
    """Draws ``count`` lesion masks (bool ``shape = (H, W)``) inside the field, apart from each other."""
    masks: List[np.ndarray] = []
    taken: List[Box] = []
    scale = 1.0 if count == 1 else 0.75
    for _ in range(count):
        for attempt in range(_PLACEMENT_TRIES):
            shrink = scale * (1.0 - 0.5 * attempt / _PLACEMENT_TRIES)  # give up size before giving up
            outline = _lesion_outline(rng, label, field, shrink)
            offset = _place_outline(rng, outline, field, layers)
            if offset is None:
                continue
            mask = _rasterise(outline + np.array(offset), shape)
            if not _is_good_mask(mask, label):
                continue
            box = mask_box(mask, label)
            if not any(_near(box, other, margin=8) for other in taken):
                masks.append(mask)
                taken.append(box)
                break
        else:
            raise RuntimeError(f"could not place {count} {label} lesion(s) in a {shape[1]}x{shape[0]} frame")
    return masks


def _near(a: Box, b: Box, margin: float) -> bool:
    """True when two boxes overlap or come closer than ``margin`` pixels."""
    return (a.xmin < b.xmax + margin and b.xmin < a.xmax + margin
            and a.ymin < b.ymax + margin and b.ymin < a.ymax + margin)


def _lesion_outline(rng: np.random.Generator, label: str, field: _Field, scale: float) -> np.ndarray:
    """A closed outline ``float [N, 2]`` of ``(x, y)`` around the origin, star-shaped.

    Benign: a smooth, slightly lobulated oval 1.3-2.2 times wider than tall.
    Malignant: an angular, micro-lobulated shape 1.15-1.6 times taller than wide.
    """
    field_width, field_height = field.right - field.left, field.bottom - field.top
    angles = np.linspace(0.0, 2 * np.pi, 180, endpoint=False)
    if label == "benign":
        half_width = scale * rng.uniform(0.04, 0.17) * field_width
        half_height = half_width / rng.uniform(1.3, 2.2)
        radius = 1.0 + _radial_noise(rng, angles, harmonics=range(2, 4), amplitude=0.04)
        tilt = np.deg2rad(rng.uniform(-12, 12))
    else:
        half_width = scale * rng.uniform(0.04, 0.13) * field_width
        half_height = min(half_width * rng.uniform(1.15, 1.6), 0.28 * field_height)
        radius = 1.0 + _radial_noise(rng, angles, harmonics=range(3, 24), amplitude=0.4)
        radius = np.clip(radius, 0.6, 1.5)
        tilt = np.deg2rad(rng.uniform(-8, 8))
    x = half_width * radius * np.cos(angles)
    y = half_height * radius * np.sin(angles)
    rotated = np.stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)], axis=1)
    return rotated


def _radial_noise(rng: np.random.Generator, angles: np.ndarray, harmonics: Sequence[int],
                  amplitude: float) -> np.ndarray:
    """A periodic wobble ``float [N]`` of the radius; higher harmonics weigh less."""
    wobble = np.zeros_like(angles)
    for k in harmonics:
        wobble += rng.standard_normal() / np.sqrt(k) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    return amplitude * wobble / np.sqrt(len(harmonics))


def _place_outline(rng: np.random.Generator, outline: np.ndarray, field: _Field,
                   layers: _Layers) -> Optional[Tuple[float, float]]:
    """Picks an offset ``(x, y)`` that puts ``outline`` below the skin and above the muscle, or None."""
    margin = 6
    low, high = np.floor(outline.min(axis=0)), np.ceil(outline.max(axis=0))
    x_min, x_max = field.left + margin - low[0], field.right - margin - high[0]
    if x_max <= x_min:
        return None
    cx = rng.uniform(x_min, x_max)
    column = int(np.clip(cx, 0, layers.skin.shape[0] - 1))
    top = max(layers.skin[column] + 0.05 * field.bottom, field.top + margin) - low[1]
    # Above the pectoral muscle and clear of the screen label near the bottom.
    bottom = min(layers.muscle_top[column], field.bottom - margin, 0.82 * field.bottom) - high[1]
    if bottom <= top:
        return None
    return float(cx), float(rng.uniform(top, bottom))


def _rasterise(outline: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def _is_good_mask(mask: np.ndarray, label: str) -> bool:
    """One 8-connected region of at least 100 px with the class's orientation (by box)."""
    count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count != 2 or mask.sum() < 100:
        return False
    box = mask_box(mask, label)
    if label == "benign":
        return box.width >= 1.15 * box.height
    return box.height >= 1.1 * box.width


def _draw_lesion(rng: np.random.Generator, label: str, mask: np.ndarray, reflectivity: np.ndarray,
                 attenuation: np.ndarray) -> None:
    """Paints one lesion into the reflectivity and attenuation maps (in place).

    The work is done in a window around the lesion wide enough for its spicules,
    halo and blurred acoustic effects; outside it nothing changes.
    """
    box = mask_box(mask, label)
    pad = int(max(box.width, box.height)) + 8
    window = (slice(max(0, int(box.ymin) - pad), int(box.ymax) + pad),
              slice(max(0, int(box.xmin) - pad), int(box.xmax) + pad))
    local_reflectivity, local_attenuation = reflectivity[window].copy(), attenuation[window].copy()
    _paint_lesion(rng, label, np.ascontiguousarray(mask[window]), local_reflectivity, local_attenuation)
    reflectivity[window], attenuation[window] = local_reflectivity, local_attenuation


def _paint_lesion(rng: np.random.Generator, label: str, mask: np.ndarray, reflectivity: np.ndarray,
                  attenuation: np.ndarray) -> None:
    """:func:`_draw_lesion` on arrays cut to the lesion's window (in place)."""
    box = mask_box(mask, label)
    inside = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0 if label == "benign" else 1.6)
    if label == "benign":
        level = rng.uniform(0.02, 0.04) if rng.random() < 0.5 else rng.uniform(0.05, 0.09)  # cyst / solid
        texture = np.exp(0.25 * _streaks(rng, mask.shape, 3.0, 2.0))
        rim = _ring(mask, 2) * rng.uniform(0.2, 0.4)  # thin echogenic capsule
        gain = rng.uniform(1.6, 2.6)  # posterior enhancement
        attenuation += _lateral_edges(mask, box) * rng.uniform(0.02, 0.04)  # edge (refraction) shadows
    else:
        level = rng.uniform(0.03, 0.07)
        texture = np.exp(0.5 * _streaks(rng, mask.shape, 4.0, 4.0))
        rim = _ring(mask, max(4, int(0.08 * box.width))) * rng.uniform(0.15, 0.35)  # echogenic halo
        _draw_spicules(rng, mask, reflectivity)
        gain = rng.uniform(0.08, 0.25)  # posterior shadowing
    reflectivity *= 1.0 - inside
    reflectivity += inside * level * texture + rim
    if label == "malignant":
        _draw_calcifications(rng, mask, reflectivity)
    # Acoustic effect along each column: path through the lesion times the extra
    # attenuation that multiplies the echo below it by ``gain`` at the thickest point.
    extra = -np.log(gain) / box.height
    beam = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(2.0, 0.08 * box.width), sigmaY=1.0)
    attenuation += extra * beam


def _lateral_edges(mask: np.ndarray, box: Box) -> np.ndarray:
    """The capsule ``float32 [H, W]`` near the left and right ends of a lesion, where
    refraction casts the thin edge shadows of a circumscribed mass."""
    columns = np.arange(mask.shape[1], dtype=np.float32)
    centre, half = (box.xmin + box.xmax) / 2, box.width / 2
    edges = _ring(mask, 2) * (np.abs(columns - centre) > 0.85 * half)[None, :]
    return cv2.GaussianBlur(edges, (0, 0), sigmaX=2.0, sigmaY=1.0)


def _ring(mask: np.ndarray, thickness: int) -> np.ndarray:
    """A soft band ``float32 [H, W]`` just outside the mask's edge."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * thickness + 1, 2 * thickness + 1))
    grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(np.float32) - mask
    return cv2.GaussianBlur(grown, (0, 0), max(1.0, thickness / 2))


def _draw_spicules(rng: np.random.Generator, mask: np.ndarray, reflectivity: np.ndarray) -> None:
    """Thin dark and bright lines radiating from the margin of a malignant lesion."""
    box = mask_box(mask, "")
    cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
    half = max(box.width, box.height) / 2
    overlay = np.zeros_like(reflectivity)
    for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 18))):
        start = 0.6 * half
        length = half * rng.uniform(0.4, 1.0)
        x0, y0 = cx + start * np.cos(angle), cy + start * np.sin(angle)
        x1, y1 = cx + (start + length) * np.cos(angle), cy + (start + length) * np.sin(angle)
        value = float(rng.choice([-0.9, 0.6], p=[0.7, 0.3]))
        cv2.line(overlay, (int(x0), int(y0)), (int(x1), int(y1)), value, thickness=int(rng.integers(2, 4)))
    overlay = cv2.GaussianBlur(overlay, (0, 0), 0.8)
    reflectivity *= np.clip(1.0 + overlay, 0.1, 2.0)


def _draw_calcifications(rng: np.random.Generator, mask: np.ndarray, reflectivity: np.ndarray) -> None:
    """A few bright micro-calcification dots inside the lesion."""
    rows, columns = np.nonzero(mask)
    for index in rng.choice(rows.size, size=int(rng.integers(0, 6)), replace=False):
        cv2.circle(reflectivity, (int(columns[index]), int(rows[index])), int(rng.integers(1, 3)),
                   float(rng.uniform(0.6, 1.0)), -1)


# --- rendering ---------------------------------------------------------------


def _render(rng: np.random.Generator, reflectivity: np.ndarray, attenuation: np.ndarray,
            base_attenuation: float) -> np.ndarray:
    """Reflectivity + attenuation -> log-compressed B-mode ``uint8 [H, W]`` with speckle."""
    height, width = reflectivity.shape
    loss = np.cumsum(attenuation, axis=0)
    # Time-gain control gives back part of the average loss with depth.
    compensation = rng.uniform(0.4, 0.75) * base_attenuation * np.arange(height, dtype=np.float32)[:, None]
    envelope = reflectivity * np.exp(compensation - loss) * _speckle(rng, (height, width))
    dynamic_range = rng.uniform(45.0, 55.0)
    decibels = 20.0 * np.log10(np.maximum(envelope, 1e-6))
    # Scanners smooth the log image a little; it softens the speckle's zero-crossings.
    decibels = cv2.GaussianBlur(decibels.astype(np.float32), (0, 0), 0.8)
    shown = (decibels + dynamic_range - rng.uniform(2.0, 6.0)) / dynamic_range
    return np.clip(shown * 255.0, 0, 255).astype(np.uint8)


def _speckle(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Fully developed speckle: Rayleigh amplitude ``float32 [H, W]`` of mean ~1.

    Complex Gaussian scatterers blurred by a beam wider laterally than axially.
    """
    sigma_x, sigma_y = rng.uniform(2.0, 3.0), rng.uniform(1.0, 1.5)
    real = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma_x, sigmaY=sigma_y)
    imaginary = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma_x, sigmaY=sigma_y)
    amplitude = cv2.magnitude(real, imaginary)
    return amplitude / np.float32(max(cv2.mean(amplitude)[0], 1e-6))


def _draw_frame(rng: np.random.Generator, gray: np.ndarray, field: _Field) -> None:
    """Blacks out the margins and sometimes writes a screen label near the bottom (in place)."""
    height, width = gray.shape
    gray[:, : field.left] = 0
    gray[:, field.right:] = 0
    gray[field.bottom:, :] = 0
    if rng.random() < 0.5:
        text = str(rng.choice(_SCREEN_LABELS))
        scale = width / 900
        x = int(rng.uniform(0.05, 0.5) * width)
        y = int(height - rng.uniform(0.03, 0.08) * height)
        cv2.putText(gray, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 235, max(1, int(2 * scale)),
                    cv2.LINE_AA)


# --- datasets on disk ----------------------------------------------------------


def phantom_filename(label: str, index: int, image_format: str = "png") -> str:
    """BUSI-style file name: ``phantom_benign (3).png`` (index from 1)."""
    return f"phantom_{label} ({index}).{image_format}"


def phantom_seed(seed: int, label: str, index: int) -> int:
    """The seed of image ``index`` of ``label`` in a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), _LABEL_CODES[label], int(index)]).generate_state(1)[0])


def write_phantom_dataset(out_dir: Union[str, Path], n_per_class: Union[int, Dict[str, int]], seed: int = 0,
                          image_format: str = "png") -> List[AnnotatedImage]:
    """Writes phantoms in BUSI's layout and returns their expected annotations.

    Layout: ``out_dir/CLASS/phantom_CLASS (i).png`` beside ``..._mask.png``,
    ``..._mask_1.png`` (one 0/255 mask per lesion; a normal image gets one empty
    mask), ``i`` from 1. Images are single-channel, masks mode "L". Files are
    written atomically; the same seed gives byte-identical files.

    Args:
      n_per_class: images per class, one int for all of benign/malignant/normal or
        a ``{label: count}`` dict.
      image_format: extension of the images ("png", "jpg", "bmp", "tif"); masks are PNG.
    Returns:
      One :class:`AnnotatedImage` per image (the rows ``tools/mask_to_bbox.py``
      should produce), in class then index order.
    """
    out_dir = Path(out_dir)
    counts = n_per_class if isinstance(n_per_class, dict) else {label: int(n_per_class) for label in LABELS}
    written = []
    for label, count in counts.items():
        for index in range(1, count + 1):
            phantom = generate_phantom(phantom_seed(seed, label, index), label)
            written.append(_write_case(out_dir / label, phantom_filename(label, index, image_format), phantom))
    log.info("wrote %d phantom images to %s", len(written), out_dir)
    return written


def _write_case(class_dir: Path, filename: str, phantom: Phantom) -> AnnotatedImage:
    """Writes one image and its mask files; returns its expected annotation."""
    image_path = class_dir / filename
    stem = image_path.stem
    _save(image_path, phantom.image[..., 0])
    masks = phantom.masks or [np.zeros(phantom.image.shape[:2], dtype=bool)]
    for index, mask in enumerate(masks):
        suffix = "_mask" if index == 0 else f"_mask_{index}"
        _save(class_dir / f"{stem}{suffix}.png", mask.astype(np.uint8) * 255)
    height, width = phantom.image.shape[:2]
    return AnnotatedImage(filename, image_path, phantom.label, width, height, list(phantom.boxes))


def _save(path: Path, gray: np.ndarray) -> None:
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), "PNG")
    with atomic_write(path, "wb") as stream:
        Image.fromarray(gray).save(stream, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


# --- demo images -----------------------------------------------------------------

# file name: (label, lesions, seed); seeds picked by eye for a clear, typical frame.
DEMO_CASES = {
    "phantom_benign_demo.png": ("benign", 1, 0),
    "phantom_malignant_demo.png": ("malignant", 1, 9),
    "phantom_two_lesions_demo.png": ("benign", 2, 0),
    "phantom_normal_demo.png": ("normal", 0, 0),
}
DEMO_WIDTH = 720
DEMO_STAMP = "SYNTHETIC PHANTOM"
DEMO_STAMP_HEIGHT = 26  # rows of the top-left stamp; lesions start well below it


def _stamp(gray: np.ndarray, text: str) -> np.ndarray:
    """Writes ``text`` in white on a black box in the top-left corner of ``uint8 [H, W]`` (in place)."""
    (text_width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    gray[:DEMO_STAMP_HEIGHT, : text_width + 12] = 0
    cv2.putText(gray, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
    return gray


def write_demo_images(out_dir: Union[str, Path], overwrite: bool = True) -> List[AnnotatedImage]:
    """Writes the demo frames of :data:`DEMO_CASES` (no masks), stamped "SYNTHETIC PHANTOM".

    Returns their expected annotations, like :func:`write_phantom_dataset`.
    """
    out_dir = Path(out_dir)
    written = []
    for filename, (label, lesions, seed) in DEMO_CASES.items():
        phantom = generate_phantom(seed, label, width=DEMO_WIDTH, lesions=lesions)
        gray = _stamp(phantom.image[..., 0].copy(), DEMO_STAMP)
        with atomic_write(out_dir / filename, "wb", overwrite=overwrite) as stream:
            Image.fromarray(gray).save(stream, format="PNG")
        height, width = gray.shape
        written.append(AnnotatedImage(filename, out_dir / filename, label, width, height, list(phantom.boxes)))
    return written
