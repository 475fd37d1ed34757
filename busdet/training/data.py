"""Training data: a committed split per dataset (file names only), and TFRecords per source.

    split = build_split(images, seed=0, groups=read_patient_groups(dataset_dir))  # busdet.datasets
    counts = write_tfrecords(images, split, classes, out, dataset_index=0)
    # out/train_benign.tfrecord, train_malignant..., train_normal..., train_background...,
    # out/val.tfrecord, out/test.tfrecord

Training examples are written once per *source* (a class of one dataset, or the
lesion-free crops cut beside its lesions) so that Model Garden's weighted sampling
(``input_path`` and ``weights`` as dicts) sets every ratio with one number, instead
of copying records (see :mod:`busdet.training.sampling`).

Examples are Model Garden tf.Examples built with its ``TfExampleBuilder``
(``image/encoded`` PNG, ``image/object/bbox/*`` normalized, ``image/object/class/label``
from the label map). Negative images are written without boxes so that the
model learns to stay silent on them. ``image/source_id`` is
``dataset_index * SOURCE_ID_STRIDE + k``: validation tells the datasets apart by it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from official.vision.data import tf_example_builder

from busdet.annotations import AnnotatedImage
from busdet.boxes import Box
from busdet.datasets import SPLITS
from busdet.files import atomic_path, write_csv
from busdet.images import read_image
from busdet.label_map import name_to_id

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SOURCE_ID_STRIDE = 1_000_000
BACKGROUND_SOURCE = "background"  # lesion-free crops cut beside the lesions of training images


def build_split(images: Sequence[AnnotatedImage], seed: int = 0,
                fractions: Dict[str, float] = DEFAULT_FRACTIONS,
                groups: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Assigns every image to train/val/test, stratified by class and grouped by patient.

    All images of one group (``groups[filename]``, e.g. a patient's views of one lesion)
    land in the same split, so a test score never measures memory of a patient; images
    without a group are their own. A group's class is its first image's (by name).
    Deterministic for a given seed and set of file names (the input order does not matter).
    """
    groups = groups or {}
    members: Dict[str, List[str]] = {}
    group_label: Dict[str, str] = {}
    for image in sorted(images, key=lambda i: i.filename):
        key = groups.get(image.filename, image.filename)
        members.setdefault(key, []).append(image.filename)
        group_label.setdefault(key, image.label)
    rng = np.random.default_rng(seed)
    split = {}
    for label in sorted(set(group_label.values())):
        keys = list(rng.permutation(sorted(k for k, v in group_label.items() if v == label)))
        n_val = int(round(len(keys) * fractions["val"]))
        n_test = int(round(len(keys) * fractions["test"]))
        for i, key in enumerate(keys):
            for name in members[key]:
                split[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return split


def write_split_csv(split: Dict[str, str], labels: Dict[str, str], path: Path,
                    groups: Optional[Mapping[str, str]] = None) -> None:
    """Writes ``filename,label,split`` (file names only, never pixels), plus ``patient`` when grouped."""
    frame = pd.DataFrame({"filename": list(split), "label": [labels[n] for n in split],
                          "split": list(split.values())})
    if groups:
        frame["patient"] = [groups.get(name, "") for name in split]
    write_csv(frame.sort_values(["split", "label", "filename"]), path)


def build_tf_example(pixels: np.ndarray, boxes: Sequence[Box], source_id: int,
                     class_ids: Dict[str, int]) -> tf.train.Example:
    """An RGB image ``[H, W, 3]`` uint8 and its pixel-corner boxes -> Model Garden detection tf.Example.

    ``source_id`` is numeric because the COCO evaluator uses it as the image id.
    """
    height, width = pixels.shape[:2]
    builder = tf_example_builder.TfExampleBuilder()
    builder.add_image_matrix_feature(pixels, "PNG", image_source_id=str(source_id).encode())
    builder.add_boxes_feature(
        xmins=[b.xmin / width for b in boxes], xmaxs=[b.xmax / width for b in boxes],
        ymins=[b.ymin / height for b in boxes], ymaxs=[b.ymax / height for b in boxes],
        labels=[class_ids[b.label] for b in boxes])
    builder.add_ints_feature("image/object/is_crowd", [0] * len(boxes))
    builder.add_floats_feature("image/object/area", [b.area for b in boxes])
    return builder.example


def lesion_free_crop(pixels: np.ndarray, boxes: Sequence[Box], margin: int = 8,
                     min_fraction: float = 0.35) -> Optional[np.ndarray]:
    """The largest strip of the image beside all its lesions (left, right, above or below), or None.

    The strip keeps ``margin`` pixels away from every box and must span at least
    ``min_fraction`` of the image on its short side, so it still looks like a scan
    rather than a sliver. A crop of ``[H, W, 3]``, or None when no strip is big enough.
    """
    height, width = pixels.shape[:2]
    left = int(min(b.xmin for b in boxes)) - margin
    right = int(np.ceil(max(b.xmax for b in boxes))) + margin
    top = int(min(b.ymin for b in boxes)) - margin
    bottom = int(np.ceil(max(b.ymax for b in boxes))) + margin
    strips = {"left": (0, height, 0, left), "right": (0, height, right, width),
              "above": (0, top, 0, width), "below": (bottom, height, 0, width)}
    best, best_area = None, 0
    for y0, y1, x0, x1 in strips.values():
        h, w = y1 - y0, x1 - x0
        if h >= min_fraction * height and w >= min_fraction * width and h * w > best_area:
            best, best_area = (y0, y1, x0, x1), h * w
    if best is None:
        return None
    y0, y1, x0, x1 = best
    return pixels[y0:y1, x0:x1]


def write_tfrecords(images: Sequence[AnnotatedImage], split: Dict[str, str], classes: Dict[int, str],
                    output_dir: Path, dataset_index: int = 0, background_crops: bool = True,
                    progress=lambda items: items) -> Dict[str, int]:
    """Writes one dataset's records; returns the example count per record file stem.

    Files: ``train_<source>.tfrecord`` for every class folder with training images and,
    with ``background_crops``, ``train_background.tfrecord`` (:func:`lesion_free_crop`
    of each training image with lesions); ``val.tfrecord`` and ``test.tfrecord``.
    Counts are keyed by file stem, e.g. ``{"train_benign": 260, "val": 100, ...}``.
    """
    class_ids = name_to_id(classes)
    output_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(images, key=lambda i: i.filename)
    source_ids = {image.filename: dataset_index * SOURCE_ID_STRIDE + k + 1 for k, image in enumerate(ordered)}
    writers: Dict[str, tf.io.TFRecordWriter] = {}
    counts: Dict[str, int] = {}
    # Each file is written under a temporary name of its own and moved into place at the end
    # (removed on failure), so two trainings building one dataset at once never share a file.
    with contextlib.ExitStack() as outputs:

        def write(stem: str, example: tf.train.Example) -> None:
            if stem not in writers:
                temp = outputs.enter_context(atomic_path(output_dir / f"{stem}.tfrecord"))
                writers[stem] = outputs.enter_context(tf.io.TFRecordWriter(str(temp)))
                counts[stem] = 0
            writers[stem].write(example.SerializeToString())
            counts[stem] += 1

        # Shuffled once so that a source read in file order is not sorted by name.
        order = np.random.default_rng(0).permutation(len(ordered))
        for image in progress([ordered[k] for k in order if split.get(ordered[k].filename) in SPLITS]):
            name = split[image.filename]
            pixels = read_image(image.path)
            stem = f"train_{image.label}" if name == "train" else name  # a training source per class folder
            write(stem, build_tf_example(pixels, image.boxes, source_ids[image.filename], class_ids))
            if name == "train" and background_crops and image.boxes:
                crop = lesion_free_crop(pixels, image.boxes)
                if crop is not None:
                    write(f"train_{BACKGROUND_SOURCE}", build_tf_example(crop, [], 0, class_ids))
    return counts
