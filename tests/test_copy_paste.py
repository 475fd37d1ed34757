"""Copy-paste of training lesions (busdet.training.copy_paste and augment's copy_paste_* settings):
a bank from the training split only, boxes and classes that follow the pasted pixels, off by default."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from busdet.annotations import annotate_case, annotate_dataset, find_cases
from busdet.boxes import boxes_to_normalized_yxyx
from busdet.datasets import DatasetSpec, read_split_csv
from busdet.label_map import load_label_map
from busdet.phantoms import generate_phantom, write_phantom_dataset
from busdet.training import run
from busdet.training.augment import (UltrasoundAugmentation, augment_example, augment_example_seeded_tf,
                                     augment_ultrasound, lesion_bank_for, zoom_out)
from busdet.training.copy_paste import (LESION_BANK_FILE, MAX_SIDE, Lesion, LesionBank, build_lesion_bank,
                                        paste_lesion, resize_lesion)

BENIGN, MALIGNANT = 1, 2  # label_map.pbtxt
NO_BOXES, NO_CLASSES = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
# Copy-paste alone: the chain's gate shut, every image pasted into.
PASTE_ONLY = UltrasoundAugmentation(probability=0.0, copy_paste_probability=1.0, copy_paste_lesion_image_factor=1.0)


def bright_lesion(label: str = "malignant", class_id: int = MALIGNANT, size=(40, 60), seed: int = 0) -> Lesion:
    """An elliptic lesion of gray 250 in a margin of tissue like :func:`tissue`'s, so that gray matching
    leaves it bright and every pixel above 200 after a paste is the lesion's."""
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = np.clip(rng.normal(90, 15, (height + 24, width + 24)), 1, 255).astype(np.uint8)
    mask = np.zeros(pixels.shape, np.uint8)
    cv2.ellipse(mask, (width // 2 + 12, height // 2 + 12), (width // 2, height // 2), 0, 0, 360, 1, -1)
    pixels[mask > 0] = 250
    return Lesion(pixels, mask > 0, label, class_id, "synthetic", f"{label}.png")


def tissue(height: int = 300, width: int = 400, seed: int = 1) -> np.ndarray:
    """RGB ``uint8`` speckle-like tissue, gray 90 +- 15: never above 200."""
    gray = np.clip(np.random.default_rng(seed).normal(90, 15, (height, width)), 1, 170).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


@functools.lru_cache(maxsize=None)
def bank_of(*labels: str) -> LesionBank:
    return LesionBank(tuple(bright_lesion(label, {"benign": BENIGN, "malignant": MALIGNANT}[label], seed=k)
                            for k, label in enumerate(labels)))


def pixel_boxes(boxes: np.ndarray, shape) -> np.ndarray:
    return boxes * np.array([shape[0], shape[1]] * 2)


# --- the bank ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory, label_map_path):
    """A phantom dataset, its annotations, a split with val and test images, and the label map."""
    folder = tmp_path_factory.mktemp("copy_paste") / "ds"
    write_phantom_dataset(folder, 4, seed=3)
    classes = load_label_map(label_map_path)
    images, problems = annotate_dataset(folder, list(classes.values()))
    assert not problems
    split = {i.filename: "val" if i.filename.endswith("(1).png") else "test" if i.filename.endswith("(2).png")
             else "train" for i in images}
    return folder, images, split, classes


def test_bank_holds_the_training_lesions_only_with_class_source_and_mask(phantom_dataset):
    folder, images, split, classes = phantom_dataset
    bank = build_lesion_bank(folder, images, split, classes, source="phantoms")
    training = [i for i in images if split[i.filename] == "train"]
    assert {lesion.filename for lesion in bank.lesions} == {i.filename for i in training if i.boxes}
    assert len(bank) == sum(len(i.boxes) for i in training)  # one lesion per box, as in the records
    by_name = {i.filename: i for i in images}
    for lesion in bank.lesions:
        assert lesion.label == by_name[lesion.filename].label and lesion.source == "phantoms"
        assert lesion.class_id == {"benign": BENIGN, "malignant": MALIGNANT}[lesion.label]
        assert lesion.pixels.dtype == np.uint8 and lesion.pixels.shape == lesion.mask.shape
        assert max(lesion.pixels.shape) <= MAX_SIDE and lesion.mask.any() and not lesion.mask.all()
        # The mask's box is one of the image's boxes (scaled when the crop was capped).
        rows, columns = np.flatnonzero(lesion.mask.any(1)), np.flatnonzero(lesion.mask.any(0))
        size = np.array([columns[-1] + 1 - columns[0], rows[-1] + 1 - rows[0]]) / lesion.scale
        assert min(np.abs(size - [b.width, b.height]).max() for b in by_name[lesion.filename].boxes) <= 2 / lesion.scale


def test_bank_round_trips_through_its_file_and_a_missing_one_is_named(phantom_dataset, tmp_path):
    folder, images, split, classes = phantom_dataset
    bank = build_lesion_bank(folder, images, split, classes, source="phantoms")
    bank.save(tmp_path / LESION_BANK_FILE)
    again = LesionBank.load([tmp_path / LESION_BANK_FILE, tmp_path / LESION_BANK_FILE])
    assert len(again) == 2 * len(bank)
    for stored, loaded in zip(bank.lesions, again.lesions):
        assert np.array_equal(stored.pixels, loaded.pixels) and np.array_equal(stored.mask, loaded.mask)
        assert (stored.label, stored.class_id, stored.source, stored.filename, stored.scale) == (
            loaded.label, loaded.class_id, loaded.source, loaded.filename, loaded.scale)
    with pytest.raises(FileNotFoundError, match="missing.npz: no lesion bank"):
        LesionBank.load([tmp_path / "missing.npz"])


def test_busi_bank_of_a_few_training_images(busi_dir, label_map_path):
    """On real BUSI masks: every box of a handful of training images gives one lesion, none from val/test."""
    split = read_split_csv(Path(__file__).resolve().parents[1] / "data" / "busi_split.csv")
    cases, _ = find_cases(busi_dir)
    picked = [case for case in cases if case.label != "normal" and split.get(case.image_path.name) == "train"][::60][:5]
    held_out = [case for case in cases if split.get(case.image_path.name) == "val"][:2]
    images = [annotate_case(case) for case in picked + held_out]
    bank = build_lesion_bank(busi_dir, images, split, load_label_map(label_map_path), source="busi")
    assert len(bank) == sum(len(image.boxes) for image in images[:len(picked)])
    assert {lesion.filename for lesion in bank.lesions} == {case.image_path.name for case in picked}
    assert all(max(lesion.pixels.shape) <= MAX_SIDE and lesion.mask.any() for lesion in bank.lesions)


# --- the paste -----------------------------------------------------------------------------


def test_paste_lesion_puts_the_box_around_the_pasted_pixels():
    image = tissue()
    for flip in (False, True):
        lesion = resize_lesion(bright_lesion(), (70, 90), flip=flip)
        pasted, box = paste_lesion(image, lesion, (100, 150), feather=2.0)
        rows, columns = np.nonzero(pasted[..., 0] > 200)
        assert abs(rows.min() - box.ymin) <= 2 and abs(rows.max() + 1 - box.ymax) <= 2
        assert abs(columns.min() - box.xmin) <= 2 and abs(columns.max() + 1 - box.xmax) <= 2
        assert not np.any(pasted[:100] != image[:100]) and not np.any(pasted[:, 240:] != image[:, 240:])
        assert box.label == "malignant"


@pytest.mark.parametrize("seed", range(8))
def test_pasted_boxes_and_classes_follow_the_pasted_pixels(seed):
    image = tissue(seed=seed)
    params = PASTE_ONLY.replace(copy_paste_max=1)
    new_image, boxes, classes = augment_example(image, NO_BOXES, NO_CLASSES, np.random.default_rng(seed), params,
                                                bank_of("benign", "malignant"))
    assert boxes.shape == (1, 4) and classes.tolist() in ([BENIGN], [MALIGNANT])
    ymin, xmin, ymax, xmax = pixel_boxes(boxes[0], image.shape)
    rows, columns = np.nonzero(new_image[..., 0] > 200)
    assert abs(rows.min() - ymin) <= 2 and abs(rows.max() + 1 - ymax) <= 2
    assert abs(columns.min() - xmin) <= 2 and abs(columns.max() + 1 - xmax) <= 2


def test_pasted_lesions_take_the_gray_level_of_the_tissue_they_land_on():
    lesion = bright_lesion()
    for level in (40, 160):
        target = np.clip(tissue().astype(int) - 90 + level, 1, 255).astype(np.uint8)
        pasted, box = paste_lesion(target, lesion, (100, 150))
        ring = np.zeros(target.shape[:2], bool)
        ring[100:100 + lesion.mask.shape[0], 150:150 + lesion.mask.shape[1]] = ~lesion.mask
        assert abs(pasted[..., 0][ring].mean() - level) < 4  # no gray step at the seam
        inside = pasted[int(box.ymin) + 10:int(box.ymax) - 10, int(box.xmin) + 10:int(box.xmax) - 10, 0]
        assert inside.mean() > min(250, 2.5 * level)  # the lesion keeps its contrast (250 on 90)


def test_probability_zero_is_the_chain_unchanged():
    generated = generate_phantom(4, "benign", width=300, height=240)
    boxes = boxes_to_normalized_yxyx(generated.boxes, 300, 240)
    classes = np.full(len(boxes), BENIGN, np.int64)
    assert UltrasoundAugmentation().copy_paste_probability == 0.0  # off by default
    for params in (UltrasoundAugmentation(), UltrasoundAugmentation(probability=1.0)):
        for seed in range(6):
            image, new_boxes, new_classes = augment_example(generated.image, boxes, classes,
                                                            np.random.default_rng(seed), params)
            expected_image, expected_boxes = augment_ultrasound(generated.image, boxes, np.random.default_rng(seed),
                                                                params)
            assert np.array_equal(image, expected_image) and np.array_equal(new_boxes, expected_boxes)
            assert np.array_equal(new_classes, classes)


def test_no_paste_lands_on_black_margins():
    framed, _ = zoom_out(tissue(), NO_BOXES, (420, 560), (70, 90))  # tissue rows 70-370, columns 90-490
    outside = np.ones(framed.shape[:2], bool)
    outside[70:370, 90:490] = False
    pasted_any = 0
    for seed in range(12):
        image, boxes, _ = augment_example(framed, NO_BOXES, NO_CLASSES, np.random.default_rng(seed), PASTE_ONLY,
                                          bank_of("malignant", "benign"))
        assert not np.any(image[outside]), seed
        for ymin, xmin, ymax, xmax in pixel_boxes(boxes, image.shape):
            assert ymin >= 70 and ymax <= 370 and xmin >= 90 and xmax <= 490
        pasted_any += len(boxes)
    assert pasted_any >= 12


def test_pastes_keep_clear_of_the_image_boxes_and_of_each_other():
    image = tissue(360, 480)
    given = np.array([[0.3, 0.3, 0.6, 0.6]], np.float32)
    params = PASTE_ONLY.replace(copy_paste_max=3, copy_paste_scale_range=[0.6, 0.8])
    for seed in range(10):
        _, boxes, classes = augment_example(image, given, np.array([BENIGN]), np.random.default_rng(seed), params,
                                            bank_of("malignant"))
        assert np.array_equal(boxes[:1], given) and classes[0] == BENIGN and len(boxes) >= 2
        assert set(classes[1:]) == {MALIGNANT}
        corners = pixel_boxes(boxes, image.shape)
        for i in range(len(corners)):
            for j in range(i + 1, len(corners)):
                (y0, x0, y1, x1), (v0, u0, v1, u1) = corners[i], corners[j]
                assert y1 <= v0 or v1 <= y0 or x1 <= u0 or u1 <= x0, (seed, i, j)


def test_copy_paste_is_deterministic_per_seed():
    image = tissue()
    params = UltrasoundAugmentation(probability=1.0, copy_paste_probability=1.0)
    bank = bank_of("benign", "malignant", "benign")
    first, again, other = (augment_example(image, NO_BOXES, NO_CLASSES, np.random.default_rng(seed), params, bank)
                           for seed in (5, 5, 6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not (first[0].shape == other[0].shape and np.array_equal(first[0], other[0]))


def test_malignant_fraction_and_lesion_image_factor_set_what_is_pasted_where():
    image, bank = tissue(), bank_of("malignant", "benign", "benign", "benign", "benign", "benign")

    def pasted_classes(params, boxes=NO_BOXES, classes=NO_CLASSES):
        return [c for seed in range(40) for c in augment_example(image, boxes, classes, np.random.default_rng(seed),
                                                                 params.replace(copy_paste_max=1), bank)[2][len(boxes):]]

    assert set(pasted_classes(PASTE_ONLY.replace(copy_paste_malignant_fraction=1.0))) == {MALIGNANT}
    assert set(pasted_classes(PASTE_ONLY.replace(copy_paste_malignant_fraction=0.0))) == {BENIGN}
    as_in_bank = pasted_classes(PASTE_ONLY.replace(copy_paste_malignant_fraction=-1.0))
    assert 0 < as_in_bank.count(MALIGNANT) < 0.4 * len(as_in_bank)  # about 1 in 6
    given = np.array([[0.05, 0.05, 0.2, 0.2]], np.float32)
    assert not pasted_classes(PASTE_ONLY.replace(copy_paste_lesion_image_factor=0.0), given, np.array([BENIGN]))


def test_copy_paste_without_a_bank_is_refused():
    with pytest.raises(ValueError, match="lesion bank"):
        augment_example(tissue(), NO_BOXES, NO_CLASSES, np.random.default_rng(0), PASTE_ONLY)
    with pytest.raises(ValueError, match="copy_paste_banks"):
        lesion_bank_for(PASTE_ONLY)
    assert lesion_bank_for(UltrasoundAugmentation()) is None and lesion_bank_for(None) is None


# --- TensorFlow and the training run ---------------------------------------------------------------


def test_tf_path_matches_the_numpy_path_with_the_extra_boxes_and_classes():
    image, bank = tissue(), bank_of("malignant")
    dataset = tf.data.Dataset.from_tensors((image, NO_BOXES, NO_CLASSES)).map(
        lambda pixels, corners, labels: augment_example_seeded_tf(pixels, corners, labels, tf.constant(3, tf.int64),
                                                                  PASTE_ONLY, bank))
    assert dataset.element_spec[2] == tf.TensorSpec([None], tf.int64)
    tf_image, tf_boxes, tf_classes = next(iter(dataset))
    np_image, np_boxes, np_classes = augment_example(image, NO_BOXES, NO_CLASSES, np.random.default_rng(3),
                                                     PASTE_ONLY, bank)
    assert np.array_equal(tf_image.numpy(), np_image) and np.array_equal(tf_boxes.numpy(), np_boxes)
    assert tf_classes.numpy().tolist() == np_classes.tolist() and len(np_classes) >= 1


def test_parser_hands_pasted_lesions_and_their_class_to_the_anchor_labeler(tmp_path):
    """A benign image with malignant lesions pasted: malignant anchors appear, so the pasted boxes got past
    Model Garden's crowd filter with their class."""
    from official.vision.dataloaders import tf_example_decoder

    from busdet.training import data
    from busdet.training.experiment import UltrasoundParser

    bank_of("malignant").save(tmp_path / LESION_BANK_FILE)
    augmentation = PASTE_ONLY.replace(copy_paste_banks=[str(tmp_path / LESION_BANK_FILE)])
    generated = generate_phantom(3, "benign", width=400, height=320, lesions=1)
    example = data.build_tf_example(generated.image, generated.boxes, 1, {"benign": BENIGN, "malignant": MALIGNANT})
    decoded = tf_example_decoder.TfExampleDecoder().decode(tf.constant(example.SerializeToString()))

    def anchor_classes(params):
        parser = UltrasoundParser(augmentation=params, output_size=[256, 256], min_level=3, max_level=7,
                                  num_scales=2, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0)
        tf.random.set_seed(0)
        _, labels = parser.parse_fn(is_training=True)(decoded)
        return set(np.concatenate([t.numpy().ravel() for t in labels["cls_targets"].values()]).tolist())

    assert MALIGNANT in anchor_classes(augmentation) and BENIGN in anchor_classes(augmentation)
    assert MALIGNANT not in anchor_classes(augmentation.replace(copy_paste_probability=0.0))


def test_prepare_data_writes_the_bank_and_build_params_names_it_only_when_on(tmp_path, label_map_path):
    from busdet.training.smoke import SMOKE_CONFIG

    write_phantom_dataset(tmp_path / "ds", 3, seed=5)
    spec = DatasetSpec("ph", tmp_path / "ds", tmp_path / "ph_split.csv")
    counts = run.prepare_data([spec], label_map_path, tmp_path / "records")
    bank_path = tmp_path / "records" / "ph" / LESION_BANK_FILE
    training = {name for name, part in read_split_csv(spec.split_path).items() if part == "train"}
    bank = LesionBank.load([bank_path])
    assert len(bank) and {lesion.filename for lesion in bank.lesions} <= training
    # A bank missing beside up-to-date records is made alone; the records stay as they are.
    records = tmp_path / "records" / "ph" / "train_benign.tfrecord"
    written = records.stat().st_mtime_ns
    bank_path.unlink()
    assert run.prepare_data([spec], label_map_path, tmp_path / "records") == counts
    assert bank_path.is_file() and records.stat().st_mtime_ns == written

    off = run.build_params([SMOKE_CONFIG], tmp_path / "records", counts)
    assert off.task.train_data.augmentation.copy_paste_banks == []
    on = run.build_params([SMOKE_CONFIG], tmp_path / "records", counts,
                          overrides="task: {train_data: {augmentation: {copy_paste_probability: 0.5}}}")
    assert on.task.train_data.augmentation.copy_paste_banks == [str(bank_path)]


def test_committed_runs_still_load_with_copy_paste_off_but_in_the_screen_arm_that_tried_it():
    runs = sorted((Path(__file__).resolve().parents[1] / "runs").glob("*/params.yaml"))
    assert runs
    for params_path in runs:
        augmentation = run.load_run_params(params_path.parent).task.train_data.augmentation
        if params_path.parent.name == "v3_screen_copy_paste":  # configs/v3_arm_copy_paste.yaml
            assert augmentation.copy_paste_probability == 0.5 and augmentation.copy_paste_banks
        else:
            assert augmentation is None or augmentation.copy_paste_probability == 0.0
