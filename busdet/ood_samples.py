"""Images that are not breast ultrasound, to test and measure the in-distribution check (:mod:`busdet.ood`).

    package_sample_images()        # [(name, RGB uint8 [H, W, 3])]: pictures installed packages ship
    photo_like(seed), document_like(seed), with_colour_overlay(image, seed)   # generated

Nothing is downloaded: the sample pictures are the files matplotlib
(``mpl-data/sample_data``) and scikit-learn (``load_sample_images``) install with
themselves: a portrait, a crisp packet, a logo, a temple, a flower, a brain MRI
slice and an elevation map. Each colour picture also comes in grey, so that the
colour test alone cannot pass the set.
"""

from __future__ import annotations

import gzip
from typing import List, Tuple

import numpy as np

from busdet.images import read_image


def _grey_rgb(values: np.ndarray) -> np.ndarray:
    """A 2-D array stretched to 0-255 and repeated in three channels: uint8 ``[H, W, 3]``."""
    values = np.asarray(values, np.float64)
    low, high = np.nanmin(values), np.nanmax(values)
    grey = np.nan_to_num((values - low) / max(high - low, 1e-12) * 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


def _as_grey(image: np.ndarray) -> np.ndarray:
    """An RGB ``uint8`` picture in grey (luma), still three channels."""
    return _grey_rgb(image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))


def package_sample_images() -> List[Tuple[str, np.ndarray]]:
    """The sample pictures of matplotlib and scikit-learn, each colour one also in grey."""
    from matplotlib import cbook  # noqa: PLC0415 - only to measure the check
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    colour = [(name, read_image(cbook.get_sample_data(name, asfileobj=False)))
              for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    sklearn_images = load_sample_images()
    colour += [(name, image) for name, image in zip(("china.jpg", "flower.jpg"), sklearn_images.images)]
    images = [(f"{name} (colour)", image) for name, image in colour]
    images += [(f"{name} (grey)", _as_grey(image)) for name, image in colour]
    with cbook.get_sample_data("s1045.ima.gz") as stream:  # a brain MRI slice, 16-bit big-endian
        data = stream.read()
    mri = np.frombuffer(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data, ">u2").reshape(256, 256)
    images.append(("s1045.ima.gz (MRI)", _grey_rgb(mri)))
    images.append(("jacksboro_fault_dem.npz (elevation)", _grey_rgb(cbook.get_sample_data("jacksboro_fault_dem.npz")
                                                                    ["elevation"])))
    return images


def photo_like(seed: int, size: Tuple[int, int] = (480, 640)) -> np.ndarray:
    """A colour 'photograph': smooth coloured background, soft coloured shapes and grain. RGB uint8."""
    import cv2  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[:height, :width] / max(size)
    image = np.stack([np.clip(rng.uniform(40, 200) + rng.uniform(-120, 120) * (yy * rng.uniform(-1, 1)
                                                                                 + xx * rng.uniform(-1, 1)), 0, 255)
                      for _ in range(3)], axis=-1)
    for _ in range(rng.integers(4, 9)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(20, width // 3)), int(rng.integers(20, height // 3)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), 3) + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def document_like(seed: int, size: Tuple[int, int] = (800, 620)) -> np.ndarray:
    """A scanned 'report': a white page with a heading and lines of dark text. RGB uint8."""
    import cv2  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    height, width = size
    page = np.full((height, width, 3), 250, np.uint8)
    words = ["patient", "report", "breast", "ultrasound", "findings", "BI-RADS", "lesion", "mm", "left", "right",
             "impression", "follow-up", "normal", "benign", "the", "of", "and", "with"]
    cv2.putText(page, "RADIOLOGY REPORT", (40, 60), cv2.FONT_HERSHEY_DUPLEX, 1.1, (20, 20, 20), 2, cv2.LINE_AA)
    for y in range(110, height - 40, 28):
        line = " ".join(rng.choice(words, size=int(rng.integers(4, 9))))
        cv2.putText(page, line, (40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (30, 30, 30), 1, cv2.LINE_AA)
    return page


def with_colour_overlay(image: np.ndarray, seed: int, area: float = 0.12) -> np.ndarray:
    """``image`` (a grey B-mode frame) with a colour-Doppler-like box: red and blue flow blobs
    filling about ``area`` of the frame. RGB uint8, a new array."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    box_h, box_w = int(height * np.sqrt(area) * 1.2), int(width * np.sqrt(area) * 1.2)
    top, left = int(rng.integers(height // 8, height - box_h)), int(rng.integers(0, width - box_w))
    yy, xx = np.mgrid[:box_h, :box_w]
    flow = np.zeros((box_h, box_w))
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8) * box_h, rng.uniform(0.2, 0.8) * box_w
        flow += rng.choice([-1, 1]) * np.exp(-(((yy - cy) / (0.25 * box_h)) ** 2 + ((xx - cx) / (0.2 * box_w)) ** 2))
    out = image.copy()
    region = out[top:top + box_h, left:left + box_w]
    coloured = np.abs(flow) > 0.3
    strength = np.clip(np.abs(flow), 0, 1) * 255
    red, blue = coloured & (flow > 0), coloured & (flow < 0)
    region[red] = np.stack([strength[red], 0.2 * strength[red], 0 * strength[red]], -1).astype(np.uint8)
    region[blue] = np.stack([0 * strength[blue], 0.3 * strength[blue], strength[blue]], -1).astype(np.uint8)
    return out
