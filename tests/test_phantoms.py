"""The synthetic phantoms: deterministic, BUSI-like sizes, truthful masks and boxes."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from busdet import phantoms
from busdet.annotations import read_mask
from busdet.images import read_image
from busdet.phantoms import generate_phantom, write_demo_images, write_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(8)


@functools.lru_cache(maxsize=None)
def cached_phantom(seed, label, lesions=None, width=None):
    """Phantoms are pure functions of their arguments; several tests look at the same ones."""
    return generate_phantom(seed, label, lesions=lesions, width=width)


def phantoms_of(label, seeds=SEEDS, **kwargs):
    return [cached_phantom(seed, label, **kwargs) for seed in seeds]


def tree_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_pixels_and_other_seeds_differ():
    first, again = generate_phantom(7, "malignant"), generate_phantom(7, "malignant")
    assert np.array_equal(first.image, again.image)
    assert first.boxes == again.boxes
    assert all(np.array_equal(a, b) for a, b in zip(first.masks, again.masks))
    other = generate_phantom(8, "malignant", width=first.image.shape[1], height=first.image.shape[0])
    assert not np.array_equal(first.image, other.image)


def test_dataset_is_byte_identical_for_the_same_seed(tmp_path):
    write_phantom_dataset(tmp_path / "a", 2, seed=3)
    write_phantom_dataset(tmp_path / "b", 2, seed=3)
    write_phantom_dataset(tmp_path / "c", 2, seed=4)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert tree_bytes(tmp_path / "a") != tree_bytes(tmp_path / "c")


@pytest.mark.parametrize("label", phantoms.LABELS)
def test_drawn_sizes_are_busi_like(label):
    for phantom in phantoms_of(label):
        height, width, channels = phantom.image.shape
        assert phantom.image.dtype == np.uint8 and channels == 3
        assert phantoms.MIN_WIDTH <= width <= phantoms.MAX_WIDTH
        assert 0.69 <= height / width <= 0.91
        assert np.array_equal(phantom.image[..., 0], phantom.image[..., 2]), "gray replicated in RGB"
        assert phantom.label == label


def test_requested_size_is_kept():
    assert generate_phantom(1, "benign", width=640, height=480).image.shape == (480, 640, 3)
    height, width, _ = generate_phantom(1, "benign", width=500).image.shape
    assert width == 500 and 0.69 <= height / width <= 0.91
    assert generate_phantom(1, "normal", height=400).image.shape[0] == 400


def test_benign_lesions_are_wider_than_tall():
    for phantom in phantoms_of("benign"):
        assert phantom.boxes and all(box.width > box.height for box in phantom.boxes)


def test_malignant_lesions_are_taller_than_wide():
    for phantom in phantoms_of("malignant"):
        assert phantom.boxes and all(box.height > box.width for box in phantom.boxes)


@pytest.mark.parametrize("label,lesions", [("benign", None), ("malignant", None), ("benign", 2),
                                           ("malignant", 2), ("benign", 3), ("malignant", 3)])
def test_masks_are_single_regions_inside_apart_and_match_the_boxes(label, lesions):
    for phantom in phantoms_of(label, lesions=lesions):
        height, width = phantom.image.shape[:2]
        assert len(phantom.masks) == len(phantom.boxes) == (lesions or len(phantom.masks))
        for mask, box in zip(phantom.masks, phantom.boxes):
            assert mask.shape == (height, width) and mask.dtype == bool
            count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            assert count == 2, "one connected region"
            assert mask.sum() > 50, "larger than the converter's default min area"
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            rows, columns = np.nonzero(mask)
            assert (box.xmin, box.ymin, box.xmax, box.ymax) == (
                columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
            assert box.label == label and box.score is None
        for a, b in itertools.combinations(phantom.masks, 2):
            assert not (a & b).any()


def test_lesion_count_drawn_from_the_seed_is_one_or_two():
    counts = {len(p.masks) for label in phantoms.LESION_LABELS for p in phantoms_of(label, range(20), width=450)}
    assert counts == {1, 2}


def test_normal_phantoms_have_no_lesion():
    for phantom in phantoms_of("normal"):
        assert phantom.masks == [] and phantom.boxes == []


def test_lesions_are_darker_than_their_surroundings():
    for label in phantoms.LESION_LABELS:
        for phantom in phantoms_of(label, range(6)):
            gray = phantom.image[..., 0].astype(np.float64)
            for mask in phantom.masks:
                ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
                assert gray[mask].mean() < 0.9 * gray[ring].mean()


def posterior_ratio(phantom) -> float | None:
    """Mean brightness under the lesion over the same rows 1.5 lesion-widths aside (None: no room)."""
    gray = phantom.image[..., 0].astype(np.float64)
    box = phantom.boxes[0]
    rows = slice(int(box.ymax) + 3, int(min(gray.shape[0], box.ymax + box.height)))
    centre, quarter, shift = int(box.xmin + box.xmax) // 2, max(2, int(box.width) // 4), int(1.5 * box.width)
    aside = [gray[rows, c - quarter: c + quarter].mean() for c in (centre - shift, centre + shift)
             if c - quarter >= 0 and c + quarter <= gray.shape[1]]
    return gray[rows, centre - quarter: centre + quarter].mean() / np.mean(aside) if aside else None


def test_benign_enhances_and_malignant_shadows_what_lies_behind():
    def ratios(label):
        found = [posterior_ratio(p) for p in phantoms_of(label, range(10), lesions=1, width=1000)]
        return [r for r in found if r is not None]

    benign, malignant = ratios("benign"), ratios("malignant")
    assert len(benign) >= 5 and len(malignant) >= 5
    assert np.median(benign) > 1.05
    assert np.median(malignant) < 0.8


@pytest.mark.parametrize("label,lesions", [("normal", 1), ("benign", 0), ("malignant", 4), ("cyst", None)])
def test_impossible_requests_are_refused(label, lesions):
    with pytest.raises(ValueError):
        generate_phantom(0, label, lesions=lesions)


def test_dataset_layout_and_returned_truth(tmp_path):
    written = write_phantom_dataset(tmp_path, {"benign": 2, "malignant": 1, "normal": 1}, seed=5)
    assert [(w.label, w.filename) for w in written] == [
        ("benign", "phantom_benign (1).png"), ("benign", "phantom_benign (2).png"),
        ("malignant", "phantom_malignant (1).png"), ("normal", "phantom_normal (1).png")]
    for image in written:
        assert image.path == tmp_path / image.label / image.filename
        assert read_image(image.path).shape == (image.height, image.width, 3)
        stem = image.path.with_suffix("")
        mask_files = sorted(image.path.parent.glob(f"{stem.name}_mask*.png"))
        assert len(mask_files) == max(1, len(image.boxes))
        union = np.zeros((image.height, image.width), dtype=bool)
        for mask_file in mask_files:
            union |= read_mask(mask_file)
        assert union.any() == bool(image.boxes)
    assert written[-1].boxes == []


def test_dataset_images_can_be_jpeg(tmp_path):
    written = write_phantom_dataset(tmp_path, {"benign": 1}, image_format="jpg")
    assert written[0].path.suffix == ".jpg" and written[0].path.is_file()
    assert (tmp_path / "benign" / "phantom_benign (1)_mask.png").is_file()


def test_demo_images_match_the_shipped_ones(tmp_path):
    written = write_demo_images(tmp_path)
    assert sorted(w.filename for w in written) == sorted(phantoms.DEMO_CASES)
    for image in written:
        assert image.path.stat().st_size < 400_000
        assert all(box.ymin > phantoms.DEMO_STAMP_HEIGHT for box in image.boxes), "stamp clear of lesions"
        shipped = ROOT / "input" / image.filename
        # Pixels, not bytes: another CPU may round a blur differently by one grey level.
        difference = np.abs(read_image(shipped).astype(int) - read_image(image.path).astype(int))
        assert difference.mean() < 0.5, f"{shipped} is out of date: python tools/make_phantoms.py --demo --output input"
    assert {len(w.boxes) for w in written} == {0, 1, 2}
