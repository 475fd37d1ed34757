"""Training data: a stratified split committed as file names, and TFRecords.

    split = build_split(images, seed=0)            # {filename: "train"|"val"|"test"}
    write_tfrecords(images, split, classes, out)   # out/train.tfrecord, val..., test...

Examples are Model Garden tf.Examples built with its ``TfExampleBuilder``
(``image/encoded`` PNG, ``image/object/bbox/*`` normalized, ``image/object/class/label``
from the label map). Negative images are written without boxes so that the
model learns to stay silent on them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from official.vision.data import tf_example_builder

from busdet.annotations import AnnotatedImage
from busdet.files import atomic_write
from busdet.images import read_image
from busdet.label_map import name_to_id

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def build_split(images: Sequence[AnnotatedImage], seed: int = 0,
                fractions: Dict[str, float] = DEFAULT_FRACTIONS) -> Dict[str, str]:
    """Assigns every image to train/val/test, stratified by its class folder.

    Deterministic for a given seed and set of file names (the input order does not matter).
    """
    rng = np.random.default_rng(seed)
    by_label: Dict[str, List[str]] = {}
    for image in sorted(images, key=lambda i: i.filename):
        by_label.setdefault(image.label, []).append(image.filename)
    split = {}
    for label in sorted(by_label):
        names = list(rng.permutation(by_label[label]))
        n_val = int(round(len(names) * fractions["val"]))
        n_test = int(round(len(names) * fractions["test"]))
        for i, name in enumerate(names):
            split[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return split


def write_split_csv(split: Dict[str, str], labels: Dict[str, str], path: Path) -> None:
    """Writes ``filename,label,split`` (file names only, never pixels)."""
    frame = pd.DataFrame({"filename": list(split), "label": [labels[n] for n in split],
                          "split": list(split.values())}).sort_values(["split", "label", "filename"])
    with atomic_write(path, "w") as stream:
        frame.to_csv(stream, index=False, lineterminator="\n")


def read_split_csv(path: Path) -> Dict[str, str]:
    """Reads ``{filename: split}`` back."""
    frame = pd.read_csv(path, dtype=str)
    return dict(zip(frame["filename"], frame["split"]))


def build_tf_example(image: AnnotatedImage, source_id: int, class_ids: Dict[str, int]) -> tf.train.Example:
    """One annotated image -> Model Garden detection tf.Example.

    ``source_id`` is numeric because the COCO evaluator uses it as the image id.
    """
    pixels = read_image(image.path)
    height, width = pixels.shape[:2]
    builder = tf_example_builder.TfExampleBuilder()
    builder.add_image_matrix_feature(pixels, "PNG", image_source_id=str(source_id).encode())
    builder.add_boxes_feature(
        xmins=[b.xmin / width for b in image.boxes], xmaxs=[b.xmax / width for b in image.boxes],
        ymins=[b.ymin / height for b in image.boxes], ymaxs=[b.ymax / height for b in image.boxes],
        labels=[class_ids[b.label] for b in image.boxes])
    builder.add_ints_feature("image/object/is_crowd", [0] * len(image.boxes))
    builder.add_floats_feature("image/object/area", [b.area for b in image.boxes])
    return builder.example


def write_tfrecords(images: Sequence[AnnotatedImage], split: Dict[str, str], classes: Dict[int, str],
                    output_dir: Path, oversample: Dict[str, int] | None = None,
                    progress=lambda items: items) -> Dict[str, int]:
    """Writes ``output_dir/{train,val,test}.tfrecord``; returns example counts per split.

    Args:
      oversample: ``{class folder: times}`` to repeat training images of a class
        (malignant lesions are a third of the boxes); val and test are never repeated.
    """
    oversample = oversample or {}
    class_ids = name_to_id(classes)
    output_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(images, key=lambda i: i.filename)
    source_ids = {image.filename: index + 1 for index, image in enumerate(ordered)}
    counts = {}
    for name in SPLITS:
        members = [i for i in ordered if split.get(i.filename) == name]
        if name == "train":
            members = [i for i in members for _ in range(oversample.get(i.label, 1))]
            members = [members[k] for k in np.random.default_rng(0).permutation(len(members))]
        path = output_dir / f"{name}.tfrecord"
        temp = path.with_suffix(".tfrecord.tmp")
        with tf.io.TFRecordWriter(str(temp)) as writer:
            for image in progress(members):
                writer.write(build_tf_example(image, source_ids[image.filename], class_ids).SerializeToString())
        temp.replace(path)
        counts[name] = len(members)
    return counts
