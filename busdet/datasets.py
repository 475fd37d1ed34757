"""Datasets by name: where they are, their committed split, their patients and scanners, their citation.

    spec = parse_dataset_arg("busbra=../shared/busbra/BUS-BRA", Path("data"))  # split: data/busbra_split.csv
    split = read_split_csv(spec.split_path)      # {filename: "train" | "val" | "test"}
    check_training_data(["busi=..."], Path("data"), ["benign", "malignant"])  # tools/train.py, before TensorFlow
    read_image_table(spec.path)                  # BUS-BRA's bus_data.csv (patient, scanner), else None
    citation_line("busbra")   # -> 'BUS-BRA: W. Gomez-Flores, ... doi:10.1002/mp.16812 (MIT-style ...)'

Training (``tools/train.py``) and measuring (``tools/measure_model.py``) name their
datasets the same way, ``--data NAME=FOLDER``, and this module has no TensorFlow in it.

Both licences ask that the source be cited wherever the data or a model trained on it
is described: the README, the model card, ``model_info.json`` and the page's About box
take the text from here. A dataset trained on under another name (your own) has no
entry and is listed by name only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd

from busdet.annotations import DEFAULT_NEGATIVE_CLASS, find_cases
from busdet.files import folder_problem, name_some, read_table

# BUS-BRA's table: one row per image (ID = file stem) naming its patient (Case) and scanner (Device).
IMAGE_TABLE = "bus_data.csv"
# The key, in each dataset of a measurement summary (tools/measure_model.py), of the sha256 of the
# split CSV it was measured on: tools/compare_models.py refuses two summaries whose digests differ.
SPLIT_DIGEST = "split_sha256"
# The parts of a split, and the columns every split CSV has (``patient`` follows where images are grouped).
SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("filename", "label", "split")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name (``busi``), folder (BUSI layout) and committed split CSV."""

    name: str
    path: Path
    split_path: Path


def parse_dataset_arg(value: str, splits_dir: Path) -> DatasetSpec:
    """``NAME=FOLDER`` (a ``--data`` value) -> a DatasetSpec whose split is ``splits_dir/NAME_split.csv``.

    Raises:
      ValueError: not ``NAME=FOLDER``, or the folder does not exist.
    """
    name, sep, folder = value.partition("=")
    if not sep or not name.isidentifier() or not folder:
        raise ValueError(f"--data {value}: expected NAME=FOLDER, e.g. busi=../shared/busi/Dataset_BUSI_with_GT")
    problem = folder_problem(folder)
    if problem is not None:
        raise ValueError(f"--data {value}: {folder} is not a folder ({problem})")
    return DatasetSpec(name, Path(folder), Path(splits_dir) / f"{name}_split.csv")


def check_distinct(datasets: Sequence[DatasetSpec]) -> None:
    """Refuses two datasets of one name (one split file for both) or of one folder (two splits of the
    same images: one could be trained on as the other's test image).

    Raises:
      ValueError: naming both.
    """
    names: Dict[str, DatasetSpec] = {}
    folders: Dict[str, DatasetSpec] = {}
    for spec in datasets:
        if spec.name in names:
            raise ValueError(f"--data {spec.name}: given twice ({names[spec.name].path} and {spec.path}); "
                             "dataset names must differ")
        twin = folders.get(os.path.realpath(spec.path))
        if twin is not None:
            raise ValueError(f"--data {twin.name} and {spec.name}: the same folder {spec.path}; each would get "
                             "its own split, so an image trained on in one could be tested on in the other")
        names[spec.name] = folders[os.path.realpath(spec.path)] = spec


def check_training_data(values: Sequence[str], splits_dir: Path, class_names: Sequence[str],
                        negative_class: str = DEFAULT_NEGATIVE_CLASS) -> List[DatasetSpec]:
    """Every ``--data NAME=FOLDER`` of ``tools/train.py``, checked before TensorFlow loads, by listing
    files only: names and folders distinct (:func:`check_distinct`), each folder holding images in
    class folders of the label map (``class_names``) or ``negative_class``, and its split CSV, where
    one exists, well formed (:func:`read_split_csv`) and naming only images of that folder.

    Raises:
      ValueError: the first problem, naming the ``--data`` value or the file.
    """
    datasets = [parse_dataset_arg(value, splits_dir) for value in values]
    check_distinct(datasets)
    known = {*class_names, negative_class}
    for spec in datasets:
        cases, _ = find_cases(spec.path)  # ValueError: no class folder with images (the layout expected)
        images = {case.image_path.name for case in cases if case.label in known}
        if not images:
            found = ", ".join(sorted({case.label for case in cases}))
            raise ValueError(f"--data {spec.name}={spec.path}: no images in a class folder named "
                             f"{', '.join(sorted(known))} (the label map's classes and {negative_class}); "
                             f"found {found}")
        if spec.split_path.exists():
            absent = set(read_split_csv(spec.split_path)) - images
            if absent:
                raise ValueError(f"{spec.split_path}: {len(absent)} image(s) not in a class folder of "
                                 f"{spec.path}: {name_some(absent)} (is this the folder the split was made for?)")
    return datasets


def parse_split_datasets(values, splits_dir: Path) -> List[DatasetSpec]:
    """Every ``--data NAME=FOLDER`` of a tool that measures on the committed splits.

    Raises:
      ValueError: a value is not ``NAME=FOLDER``, a folder is missing, or a dataset has no committed split.
    """
    datasets = [parse_dataset_arg(value, splits_dir) for value in values]
    missing = [str(spec.split_path) for spec in datasets if not spec.split_path.is_file()]
    if missing:
        raise ValueError(f"no committed split {', '.join(missing)} (tools/train.py makes one)")
    return datasets


def read_split_csv(path: Path) -> Dict[str, str]:
    """A committed split ``filename,label,split[,patient]`` -> ``{filename: split}``.

    Raises:
      ValueError: one line naming the file: not a table with :data:`SPLIT_COLUMNS`, no rows, a
        split other than :data:`SPLITS`, or a file name listed twice (the line).
    """
    frame = read_table(path, SPLIT_COLUMNS)  # written by busdet.files.write_csv: read_csv is its inverse
    if frame.empty:
        raise ValueError(f"{path}: no rows under the header (a split lists every image of its dataset)")
    for line, name, split in zip(frame.index, frame["filename"], frame["split"]):
        if split not in SPLITS:
            raise ValueError(f"{path}: line {line}: split {split!r} of {name} is not one of {', '.join(SPLITS)}")
    again = frame["filename"].duplicated()
    if again.any():
        line, name = frame.index[again.argmax()], frame["filename"][again].iloc[0]
        first = frame.index[(frame["filename"] == name).argmax()]
        raise ValueError(f"{path}: line {line}: {name} is listed again (first on line {first})")
    return dict(zip(frame["filename"], frame["split"]))


def read_image_table(dataset_dir: Path) -> Optional[pd.DataFrame]:
    """The dataset's per-image table (BUS-BRA's ``bus_data.csv``) indexed by file name, or None."""
    path = Path(dataset_dir) / IMAGE_TABLE
    if not path.is_file():
        return None
    table = read_table(path, ("ID",))  # checked as every other table: a short or long row is refused
    return table.set_index(table["ID"] + ".png")


def read_patient_groups(dataset_dir: Path) -> Dict[str, str]:
    """``{filename: patient}`` (BUS-BRA's ``Case``); empty without a table: each image its own patient."""
    table = read_image_table(dataset_dir)
    return {} if table is None else table["Case"].to_dict()


def read_devices(dataset_dir: Path) -> Dict[str, str]:
    """``{filename: scanner}`` (BUS-BRA's ``Device``); empty when the dataset does not say."""
    table = read_image_table(dataset_dir)
    return {} if table is None or "Device" not in table else table["Device"].to_dict()


@dataclass(frozen=True)
class DatasetSource:
    """Where a training dataset comes from and on what terms."""

    title: str
    citation: str
    licence: str
    centre: str


KNOWN_DATASETS: Dict[str, DatasetSource] = {
    "busi": DatasetSource(
        title="BUSI (Breast Ultrasound Images Dataset)",
        citation='W. Al-Dhabyani, M. Gomaa, H. Khaled, A. Fahmy, "Dataset of breast ultrasound images", '
                 "Data in Brief 28 (2020) 104863, doi:10.1016/j.dib.2019.104863",
        licence="CC BY 4.0",
        centre="one hospital in Cairo, Egypt; 2018"),
    "busbra": DatasetSource(
        title="BUS-BRA",
        citation='W. Gomez-Flores, M. J. Gregorio-Calas, W. C. A. Pereira, "BUS-BRA: A breast ultrasound '
                 'dataset for assessing computer-aided diagnosis systems", Medical Physics 51 (2024) '
                 "3110-3123, doi:10.1002/mp.16812; data: doi:10.5281/zenodo.8231412",
        licence="MIT-style, on condition that the article is cited",
        centre="National Institute of Cancer, Rio de Janeiro, Brazil; four scanners"),
}


def citation_line(name: str) -> str:
    """One line naming a training dataset, with its citation and licence when known."""
    source = KNOWN_DATASETS.get(name)
    if source is None:
        return name
    return f"{source.title}: {source.citation} ({source.licence})"
