"""Datasets by name: where they are, their committed split, their patients and scanners, their citation.

    spec = parse_dataset_arg("busbra=../shared/busbra/BUS-BRA", Path("data"))  # split: data/busbra_split.csv
    split = read_split_csv(spec.split_path)      # {filename: "train" | "val" | "test"}
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

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from busdet.files import read_csv

# BUS-BRA's table: one row per image (ID = file stem) naming its patient (Case) and scanner (Device).
IMAGE_TABLE = "bus_data.csv"
# The key, in each dataset of a measurement summary (tools/measure_model.py), of the sha256 of the
# split CSV it was measured on: tools/compare_models.py refuses two summaries whose digests differ.
SPLIT_DIGEST = "split_sha256"


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
    if not Path(folder).is_dir():
        raise ValueError(f"--data {value}: {folder} is not a folder")
    return DatasetSpec(name, Path(folder), Path(splits_dir) / f"{name}_split.csv")


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
    """A committed split ``filename,label,split[,patient]`` -> ``{filename: split}``."""
    frame = read_csv(path)  # written by busdet.files.write_csv: its inverse
    return dict(zip(frame["filename"], frame["split"]))


def read_image_table(dataset_dir: Path) -> Optional[pd.DataFrame]:
    """The dataset's per-image table (BUS-BRA's ``bus_data.csv``) indexed by file name, or None."""
    path = Path(dataset_dir) / IMAGE_TABLE
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str)
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
