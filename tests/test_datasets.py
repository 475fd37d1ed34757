"""Datasets: every known training dataset is cited with its licence; tools/train.py's data checked
before TensorFlow loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from busdet.datasets import KNOWN_DATASETS, check_training_data, citation_line, read_split_csv
from busdet.phantoms import write_phantom_dataset


def test_known_datasets_are_cited_with_doi_and_licence():
    for name, source in KNOWN_DATASETS.items():
        line = citation_line(name)
        assert "doi:" in line and source.licence in line and source.title in line


def test_an_unknown_dataset_is_named_only():
    assert citation_line("my_clinic") == "my_clinic"


# --- tools/train.py's data, checked before TensorFlow loads (issue 20, third round) -----------------

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["benign", "malignant"]
IMAGES = ["phantom_benign (1).png", "phantom_malignant (1).png", "phantom_normal (1).png"]


@pytest.fixture
def dataset(tmp_path) -> Path:
    write_phantom_dataset(tmp_path / "ds", 1)
    (tmp_path / "splits").mkdir()
    return tmp_path / "ds"


def split_text(rows) -> str:
    return "filename,label,split\n" + "".join(f"{name},benign,{part}\n" for name, part in rows)


@pytest.mark.parametrize("text, reason", [
    ("", "file is empty (expected the header filename,label,split)"),
    ("filename,label,split\n", "no rows under the header"),
    ("filename,label\n" + "".join(f"{n},benign\n" for n in IMAGES), "missing column(s) split"),
    (split_text([(n, "training") for n in IMAGES]), "line 2: split 'training' of phantom_benign (1).png is not one of "
                                                    "train, val, test"),  # read as a fourth split before
    (split_text([(n, "train") for n in IMAGES] + [(IMAGES[0], "test")]),
     "line 5: phantom_benign (1).png is listed again (first on line 2)"),  # the last one won before
    (split_text([(IMAGES[0], "train")]).replace("train\n", "train,EXTRA\n"),
     "not a CSV table (line 2: 4 cells, but the header has 3)"),  # every column shifted by one before
    (split_text([(n, "train") for n in IMAGES] + [("ghost.png", "test")]),
     "1 image(s) not in a class folder of"),
], ids=["empty", "header only", "no split column", "unknown split", "listed twice", "cell too many", "absent image"])
def test_a_bad_split_csv_is_one_line_naming_it(tmp_path, dataset, text, reason):
    split = tmp_path / "splits" / "ph_split.csv"
    split.write_text(text)
    with pytest.raises(ValueError) as raised:
        check_training_data([f"ph={dataset}"], tmp_path / "splits", CLASSES)
    assert str(raised.value).startswith(f"{split}: {reason}") and "\n" not in str(raised.value)


@pytest.mark.parametrize("values, reason", [
    (["a={ds}", "a={ds}"], "--data a: given twice"),
    (["a={ds}", "b={ds}"], "--data a and b: the same folder"),
    (["a={ds}", "b={tmp}/link"], "--data a and b: the same folder"),
    (["a={tmp}/empty"], "{tmp}/empty: no class folder with images"),
    (["a={tmp}/other"], "--data a={tmp}/other: no images in a class folder named benign, malignant, normal"),
    (["a={tmp}/file.txt"], "--data a={tmp}/file.txt: {tmp}/file.txt is not a folder (a file, not a folder)"),
], ids=["name twice", "folder twice", "folder twice by a link", "no images", "other classes only", "a file"])
def test_bad_data_folders_are_refused_before_any_work(tmp_path, dataset, values, reason):
    (tmp_path / "empty").mkdir()
    write_phantom_dataset(tmp_path / "other", {"benign": 1})
    (tmp_path / "other" / "benign").rename(tmp_path / "other" / "cyst")
    (tmp_path / "file.txt").write_text("x")
    os.symlink(dataset, tmp_path / "link")
    values = [v.format(ds=dataset, tmp=tmp_path) for v in values]
    with pytest.raises(ValueError, match=f"^{reason.format(tmp=tmp_path)}".replace("(", r"\(").replace(")", r"\)")):
        check_training_data(values, tmp_path / "splits", CLASSES)
    assert os.listdir(tmp_path / "splits") == [], "nothing written"


def test_good_data_passes_with_or_without_a_split(tmp_path, dataset):
    assert [spec.name for spec in check_training_data([f"ph={dataset}"], tmp_path / "splits", CLASSES)] == ["ph"]
    (tmp_path / "splits" / "ph_split.csv").write_text(split_text([(n, "train") for n in IMAGES]))
    check_training_data([f"ph={dataset}"], tmp_path / "splits", CLASSES)
    assert read_split_csv(tmp_path / "splits" / "ph_split.csv") == {n: "train" for n in IMAGES}


def test_the_committed_splits_pass_on_the_shared_datasets(busi_dir):
    """The checks refuse nothing that training, measuring and quantizing model v3 read."""
    busbra = busi_dir.parents[1] / "busbra" / "BUS-BRA"
    values = [f"busi={busi_dir}"] + ([f"busbra={busbra}"] if busbra.is_dir() else [])
    assert len(check_training_data(values, ROOT / "data", CLASSES)) == len(values)


def test_train_cli_checks_label_map_data_and_splits_before_loading_tensorflow(tmp_path, dataset):
    (tmp_path / "splits" / "ph_split.csv").write_text(split_text([("ghost.png", "train")]))
    (tmp_path / "bad.pbtxt").write_text('item { id: 0 name: "benign" }')
    for extra, reason in ((["--data", f"ph={dataset}"], f"{tmp_path / 'splits' / 'ph_split.csv'}: 1 image(s)"),
                          (["--data", f"a={dataset}", "--data", f"a={dataset}"], "--data a: given twice"),
                          (["--data", f"a={dataset}", "--label", str(tmp_path / "bad.pbtxt")],
                           f"{tmp_path / 'bad.pbtxt'}: id 0 of 'benign' must be >= 1")):
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--config",
                               str(ROOT / "configs" / "smoke.yaml"), "--model-dir", str(tmp_path / "run"),
                               "--splits", str(tmp_path / "splits"), "--records", str(tmp_path / "records"), *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(f"error: {reason}") and done.stderr.count("\n") == 1
        assert "tensorflow" not in done.stderr.lower()
        assert not (tmp_path / "run").exists() and not (tmp_path / "records").exists()
