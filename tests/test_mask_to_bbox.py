"""tools/mask_to_bbox.py end to end: phantom datasets, every bad-input case, BUSI's reference rows."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from busdet.boxes import box_to_pixel_xywh
from busdet.label_map import load_label_map
from busdet.phantoms import generate_phantom, write_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]
HEADER = "filename,xmin,ymin,width,height,label"
PHANTOM_SEED = 2  # its 3 images per class include two-lesion ones


def load_tool():
    spec = importlib.util.spec_from_file_location("mask_to_bbox", ROOT / "tools" / "mask_to_bbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mask_to_bbox = load_tool()


def run(capsys, *argv) -> tuple[int, list[str]]:
    """Runs the tool in-process; returns the exit status and stderr lines (progress bar dropped)."""
    status = mask_to_bbox.main(mask_to_bbox.get_args_parser().parse_args([str(a) for a in argv]))
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return status, [line for line in lines if line.strip() and not line.startswith("masks")]


def skipped_lines(lines):
    return [line for line in lines if line.startswith("skipped ")]


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))[1:]


def expected_rows(truth, include_negatives=False) -> list[list[str]]:
    rows = []
    for image in truth:
        for box in image.boxes:
            rows.append([image.filename, *map(str, box_to_pixel_xywh(box)), box.label])
        if include_negatives and not image.boxes:
            rows.append([image.filename, "", "", "", "", image.label])
    return sorted(rows)


def tree_snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    """A phantom tree (3 benign, 3 malignant, 2 normal) and the truth its generator drew."""
    folder = tmp_path_factory.mktemp("phantoms")
    truth = write_phantom_dataset(folder, {"benign": 3, "malignant": 3, "normal": 2}, seed=PHANTOM_SEED)
    assert any(len(image.boxes) == 2 for image in truth)
    return folder, truth


@pytest.fixture
def dataset_copy(phantom_dataset, tmp_path):
    """A private copy of the phantom tree that a test may spoil."""
    folder, truth = phantom_dataset
    copy = tmp_path / "dataset"
    shutil.copytree(folder, copy)
    return copy, truth


def save_case(class_dir: Path, name: str, image, masks) -> Path:
    """Writes ``name.png`` and its masks ``name_mask.png``, ``name_mask_1.png`` ... (PIL images)."""
    class_dir.mkdir(parents=True, exist_ok=True)
    image_path = class_dir / f"{name}.png"
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(image_path)
    for index, mask in enumerate(masks):
        mask.save(class_dir / (f"{name}_mask.png" if index == 0 else f"{name}_mask_{index}.png"))
    return image_path


# --- rows on phantoms ---------------------------------------------------------


def test_rows_equal_the_boxes_the_generator_drew(phantom_dataset, tmp_path, capsys):
    folder, truth = phantom_dataset
    output = tmp_path / "annotations.csv"
    status, lines = run(capsys, "--input", folder, "--output", output)
    assert status == 0 and skipped_lines(lines) == []
    assert output.read_text(encoding="utf-8").splitlines()[0] == HEADER
    assert sorted(rows_of(output)) == expected_rows(truth)
    lesions = sum(len(image.boxes) for image in truth)
    assert lines[-1] == (f"8 images, {lesions} boxes (benign {sum(len(i.boxes) for i in truth[:3])}, "
                         f"malignant {sum(len(i.boxes) for i in truth[3:6])}), 2 without lesion, "
                         f"0 skipped -> {output}")


def test_include_negatives_adds_one_empty_row_per_lesion_free_image(phantom_dataset, tmp_path, capsys):
    folder, truth = phantom_dataset
    output = tmp_path / "annotations.csv"
    status, _ = run(capsys, "--input", folder, "--output", output, "--include-negatives")
    assert status == 0
    rows = rows_of(output)
    assert sorted(rows) == expected_rows(truth, include_negatives=True)
    assert ["phantom_normal (1).png", "", "", "", "", "normal"] in rows


def test_coco_output_has_all_images_label_map_categories_and_the_boxes(phantom_dataset, tmp_path, capsys,
                                                                       label_map_path):
    folder, truth = phantom_dataset
    output = tmp_path / "annotations.json"
    status, _ = run(capsys, "--input", folder, "--output", output, "--format", "coco")
    assert status == 0
    coco = COCO()
    coco.dataset = json.loads(output.read_text(encoding="utf-8"))
    coco.createIndex()
    classes = load_label_map(label_map_path)
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == classes
    images = {image["file_name"]: image for image in coco.dataset["images"]}
    assert set(images) == {image.filename for image in truth}, "negatives included"
    ids = {name: class_id for class_id, name in classes.items()}
    for image in truth:
        entry = images[image.filename]
        assert (entry["width"], entry["height"]) == (image.width, image.height)
        found = sorted((a["bbox"], a["category_id"]) for a in coco.imgToAnns[entry["id"]])
        assert found == sorted((box_to_pixel_xywh(b), ids[b.label]) for b in image.boxes)


def test_min_area_drops_specks_and_can_be_lowered(dataset_copy, tmp_path, capsys):
    folder, truth = dataset_copy
    mask_path = folder / "benign" / "phantom_benign (1)_mask.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    speck_y, speck_x = 2, 2  # the lesions keep clear of the frame's edges
    assert not mask[:6, :6].any()
    mask[speck_y, speck_x] = mask[speck_y, speck_x + 1] = mask[speck_y + 1, speck_x] = 255  # a 3-px speck
    Image.fromarray(mask).save(mask_path)
    default, lowered = tmp_path / "default.csv", tmp_path / "lowered.csv"
    assert run(capsys, "--input", folder, "--output", default)[0] == 0
    assert sorted(rows_of(default)) == expected_rows(truth)
    assert run(capsys, "--input", folder, "--output", lowered, "--min-area", "3")[0] == 0
    speck_row = ["phantom_benign (1).png", str(speck_x), str(speck_y), "2", "2", "benign"]
    assert sorted(rows_of(lowered)) == sorted(expected_rows(truth) + [speck_row])


def test_inputs_are_left_byte_identical(phantom_dataset, tmp_path, capsys):
    folder, _ = phantom_dataset
    before = tree_snapshot(folder)
    run(capsys, "--input", folder, "--output", tmp_path / "a.csv", "--include-negatives")
    run(capsys, "--input", folder, "--output", tmp_path / "a.json", "--format", "coco")
    assert tree_snapshot(folder) == before


# --- mask and image encodings --------------------------------------------------


def mask_variants(mask: np.ndarray) -> dict:
    """The same boolean mask ``[H, W]`` in the encodings BUSI and users produce."""
    on = mask.astype(np.uint8)
    rgb = np.stack([on * 255] * 3, axis=-1)
    red = np.zeros_like(rgb)
    red[..., 0] = on * 200
    alpha_only = np.zeros(mask.shape + (4,), np.uint8)
    alpha_only[..., 3] = on * 255
    palette = Image.fromarray(on, mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255])
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    return {
        "gray_0_255": Image.fromarray(on * 255),
        "gray_0_1": Image.fromarray(on),
        "mode_1": Image.fromarray(on * 255).convert("1"),
        "rgb_white": Image.fromarray(rgb),
        "rgb_red": Image.fromarray(red),
        "rgba_white": Image.fromarray(np.dstack([rgb, np.full(mask.shape, 255, np.uint8)])),
        "rgba_alpha_only": Image.fromarray(alpha_only),
        "palette": palette,
        "palette_transparent": transparent_palette,
        "gray_16_bit": Image.fromarray(on.astype(np.uint16) * 65535),
    }


def test_every_mask_encoding_gives_the_same_box(tmp_path, capsys):
    phantom = generate_phantom(11, "benign", width=480, lesions=1)
    expected = box_to_pixel_xywh(phantom.boxes[0])
    variants = mask_variants(phantom.masks[0])
    for name, mask in variants.items():
        save_case(tmp_path / "in" / "benign", name, phantom.image, [mask])
    save_case(tmp_path / "in" / "benign", "gray_image", phantom.image[..., 0], [variants["gray_0_255"]])
    output = tmp_path / "out.csv"
    status, lines = run(capsys, "--input", tmp_path / "in", "--output", output)
    assert status == 0, lines
    found = {row[0]: [int(v) for v in row[1:5]] for row in rows_of(output)}
    assert found == {f"{name}.png": expected for name in [*variants, "gray_image"]}


# --- bad input: one line each, the good rows kept, exit 1 ------------------------


def spoil_mask_size(folder: Path) -> Path:
    mask_path = folder / "benign" / "phantom_benign (2)_mask.png"
    Image.open(mask_path).resize((100, 80)).save(mask_path)
    return mask_path


def spoil_missing_mask(folder: Path) -> Path:
    for mask_path in (folder / "malignant").glob("phantom_malignant (1)_mask*.png"):
        mask_path.unlink()
    return folder / "malignant" / "phantom_malignant (1).png"


def spoil_truncated_image(folder: Path) -> Path:
    image_path = folder / "benign" / "phantom_benign (3).png"
    image_path.write_bytes(image_path.read_bytes()[:2000])
    return image_path


def spoil_truncated_mask(folder: Path) -> Path:
    mask_path = folder / "malignant" / "phantom_malignant (2)_mask.png"
    mask_path.write_bytes(mask_path.read_bytes()[:60])
    return mask_path


def spoil_not_an_image(folder: Path) -> Path:
    image_path = folder / "benign" / "notes.png"
    image_path.write_text("not an image", encoding="utf-8")
    (folder / "benign" / "notes_mask.png").write_bytes((folder / "benign" / "phantom_benign (1)_mask.png")
                                                       .read_bytes())
    return image_path


def spoil_duplicate_name(folder: Path) -> Path:
    for suffix in ["", "_mask"]:  # a second "phantom_benign (1).png", now under malignant/
        shutil.copy(folder / "benign" / f"phantom_benign (1){suffix}.png",
                    folder / "malignant" / f"phantom_benign (1){suffix}.png")
    return folder / "malignant" / "phantom_benign (1).png"


def spoil_unknown_class(folder: Path) -> Path:
    (folder / "cyst").mkdir()
    for suffix in ["", "_mask"]:
        shutil.copy(folder / "benign" / f"phantom_benign (1){suffix}.png", folder / "cyst" / f"c{suffix}.png")
    return folder / "cyst" / "c.png"


def spoil_orphan_mask(folder: Path) -> Path:
    """A mask of a mask's name with neither image: ``lost_mask_mask.png`` alone (``lost_mask.png``
    alone could be an ultrasound of that name, see below)."""
    orphan = folder / "benign" / "lost_mask_mask.png"
    shutil.copy(folder / "benign" / "phantom_benign (1)_mask.png", orphan)
    return orphan


def spoil_image_named_like_a_mask(folder: Path) -> Path:
    image_path = folder / "benign" / "x_mask.png"  # no x.png: an image of that name, without its masks
    shutil.copy(folder / "benign" / "phantom_benign (1).png", image_path)
    return image_path


BAD_INPUTS = {
    "mask size differs from its image": (spoil_mask_size, "phantom_benign (2).png", "mask is 100x80"),
    "image without mask": (spoil_missing_mask, "phantom_malignant (1).png", "no mask"),
    "truncated image": (spoil_truncated_image, "phantom_benign (3).png", "cannot decode"),
    "truncated mask": (spoil_truncated_mask, "phantom_malignant (2).png", "cannot decode mask"),
    "not an image": (spoil_not_an_image, "notes.png", "not a recognised image"),
    "duplicate name across folders": (spoil_duplicate_name, None, "duplicate file name"),
    "unknown class folder": (spoil_unknown_class, "c.png", "not in the label map"),
    "mask without image": (spoil_orphan_mask, None, "without a matching image"),
    "image named like a mask, without masks": (spoil_image_named_like_a_mask, None,
                                               "no mask file (expected x_mask_mask.png); or, if it is itself a "
                                               "mask, its image x.png is not in the folder"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_each_bad_input_is_one_line_and_the_rest_is_written(case, dataset_copy, tmp_path, capsys):
    spoil, lost_image, reason = BAD_INPUTS[case]
    folder, truth = dataset_copy
    bad_file = spoil(folder)
    output = tmp_path / "annotations.csv"
    status, lines = run(capsys, "--input", folder, "--output", output, "--include-negatives")
    assert status == 1
    (line,) = skipped_lines(lines)
    assert str(bad_file) in line and reason in line
    kept = [image for image in truth if image.filename != lost_image]
    assert sorted(rows_of(output)) == expected_rows(kept, include_negatives=True)
    assert lines[-1].endswith(f"1 skipped -> {output}")


def test_a_mask_name_is_a_mask_only_beside_its_image(tmp_path, capsys):
    """BUSI's NAME_mask*.png is a mask when NAME.png is in the folder; without it, an image of that name."""
    from busdet.annotations import index_images

    phantom = generate_phantom(3, "malignant", width=160, height=128, lesions=1)
    mask = Image.fromarray(phantom.masks[0].astype(np.uint8) * 255)
    folder = tmp_path / "in" / "malignant"
    save_case(folder, "scan_mask", phantom.image, [mask])  # scan_mask.png and its own scan_mask_mask.png
    save_case(folder, "plain", phantom.image, [mask, mask])  # plain_mask.png and plain_mask_1.png: masks
    output = tmp_path / "out.csv"
    status, lines = run(capsys, "--input", tmp_path / "in", "--output", output)
    assert status == 0, lines
    box = [str(v) for v in box_to_pixel_xywh(phantom.boxes[0])]
    assert rows_of(output) == [["plain.png", *box, "malignant"], ["plain.png", *box, "malignant"],
                               ["scan_mask.png", *box, "malignant"]]
    assert sorted(index_images(tmp_path / "in")) == ["plain.png", "scan_mask.png"]  # the gallery's rule too


def test_two_images_of_one_name_are_both_refused_not_one_dropped(tmp_path, capsys):
    phantom = generate_phantom(4, "benign", width=160, height=128, lesions=1)
    image_path = save_case(tmp_path / "in" / "benign", "scan", phantom.image,
                           [Image.fromarray(phantom.masks[0].astype(np.uint8) * 255)])
    Image.fromarray(phantom.image).save(image_path.with_suffix(".jpg"))  # whose is scan_mask.png?
    save_case(tmp_path / "in" / "benign", "other", phantom.image,
              [Image.fromarray(phantom.masks[0].astype(np.uint8) * 255)])
    status, lines = run(capsys, "--input", tmp_path / "in", "--output", tmp_path / "out.csv")
    assert status == 1
    assert skipped_lines(lines) == [
        f"skipped {image_path.with_suffix('.jpg')}: scan.png has the same name but for the extension, so their "
        "masks cannot be told apart; rename one",
        f"skipped {image_path}: scan.jpg has the same name but for the extension, so their masks cannot be told "
        "apart; rename one"]
    assert [row[0] for row in rows_of(tmp_path / "out.csv")] == ["other.png"]


# --- failures of the run itself -------------------------------------------------


def test_missing_input_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "annotations.csv"
    status, lines = run(capsys, "--input", tmp_path / "absent", "--output", output)
    assert status == 2
    assert len(lines) == 1 and str(tmp_path / "absent") in lines[0]
    assert not output.exists()


def test_a_crash_while_writing_leaves_the_old_output_untouched(phantom_dataset, tmp_path, capsys, monkeypatch):
    folder, _ = phantom_dataset
    output = tmp_path / "annotations.csv"
    output.write_text("previous run\n", encoding="utf-8")

    def crash(self, stream, **kwargs):
        stream.write("filename,xmin")  # half a file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError):
        run(capsys, "--input", folder, "--output", output)
    assert output.read_text(encoding="utf-8") == "previous run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["annotations.csv"], "no temporary file left behind"


def test_coco_crash_leaves_no_file(phantom_dataset, tmp_path, capsys, monkeypatch):
    folder, _ = phantom_dataset
    output = tmp_path / "annotations.json"

    def crash(obj, stream, **kwargs):
        stream.write('{"images": [')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        run(capsys, "--input", folder, "--output", output, "--format", "coco")
    assert list(tmp_path.iterdir()) == []


def test_runs_as_a_script(phantom_dataset, tmp_path):
    """The shebang path: a subprocess with the project's interpreter, exit status and CSV."""
    import subprocess
    import sys

    folder, truth = phantom_dataset
    output = tmp_path / "annotations.csv"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "mask_to_bbox.py"), "--input", str(folder),
                           "--output", str(output)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(rows_of(output)) == expected_rows(truth)


# --- the real data, where present --------------------------------------------------


@pytest.fixture(scope="module")
def busi_rows(busi_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("busi") / "annotations.csv"
    status = mask_to_bbox.main(mask_to_bbox.get_args_parser().parse_args(
        ["--input", str(busi_dir), "--output", str(output)]))
    return status, output.read_text(encoding="utf-8")


def test_busi_counts_and_reference_rows(busi_rows):
    status, text = busi_rows
    assert status == 0
    frame = pd.read_csv(io.StringIO(text))
    assert frame["label"].value_counts().to_dict() == {"benign": 388, "malignant": 179}
    lines = text.splitlines()
    assert lines[0] == HEADER
    assert "benign (1).png,288,134,51,26,benign" in lines
    assert "benign (10).png,24,67,209,197,benign" in lines
    rows_98 = sorted(line for line in lines if line.startswith("benign (98).png,"))
    assert rows_98 == ["benign (98).png,0,156,551,263,benign", "benign (98).png,492,88,203,144,benign"]


def test_numbered_masks_without_the_first_are_converted_with_a_warning(tmp_path, capsys):
    image = np.full((40, 60), 90, np.uint8)
    second = np.zeros((40, 60), np.uint8)
    second[5:15, 30:50] = 255
    image_path = save_case(tmp_path / "in" / "benign", "case", image, [Image.fromarray(second)] * 2)
    (image_path.parent / "case_mask.png").unlink()  # leaves case_mask_1.png alone
    output = tmp_path / "boxes.csv"

    status, lines = run(capsys, "--input", tmp_path / "in", "--output", output)

    assert status == 0 and not skipped_lines(lines)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "case.png" in warnings[0] and "no case_mask.png" in warnings[0]
    assert rows_of(output) == [["case.png", "30", "5", "20", "10", "benign"]]


# --- hostile input (issue 11, case 3) ---------------------------------------------


@pytest.mark.parametrize("negatives", [[], ["--include-negatives"]], ids=["plain", "include-negatives"])
def test_an_empty_mask_of_a_lesion_image_is_skipped_not_called_negative(dataset_copy, tmp_path, capsys, negatives):
    folder, truth = dataset_copy
    mask_path = folder / "benign" / "phantom_benign (2)_mask.png"
    Image.fromarray(np.zeros_like(np.asarray(Image.open(mask_path)))).save(mask_path)
    output = tmp_path / "annotations.csv"
    status, lines = run(capsys, "--input", folder, "--output", output, *negatives)
    assert status == 1
    (line,) = skipped_lines(lines)
    assert line == (f"skipped {folder / 'benign' / 'phantom_benign (2).png'}: no lesion region of at least 50 "
                    "pixels in phantom_benign (2)_mask.png: a benign image needs one (check the mask, or lower "
                    "--min-area)")
    kept = [image for image in truth if image.filename != "phantom_benign (2).png"]
    assert sorted(rows_of(output)) == expected_rows(kept, include_negatives=bool(negatives))


def test_one_class_folder_as_input_is_refused_with_the_layout(phantom_dataset, tmp_path, capsys):
    folder, _ = phantom_dataset
    output = tmp_path / "annotations.csv"
    status, lines = run(capsys, "--input", folder / "benign", "--output", output)
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {folder / 'benign'}: no class folders, only images (expected one "
                               "sub-folder per class")
    assert "is this one class folder? Give the folder that holds the class folders" in lines[0]
    assert not output.exists()
    (tmp_path / "empty").mkdir()
    status, lines = run(capsys, "--input", tmp_path / "empty", "--output", output)
    assert status == 2 and lines == [f"error: {tmp_path / 'empty'}: no class folder with images (expected one "
                                     f"sub-folder per class, e.g. {tmp_path / 'empty' / 'benign' / 'NAME.png'} "
                                     "beside NAME_mask.png)"]


def test_an_output_that_is_a_folder_is_refused_before_any_work(phantom_dataset, tmp_path, capsys, monkeypatch):
    folder, _ = phantom_dataset
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(mask_to_bbox.annotations, "annotate_dataset",
                        lambda *args, **kwargs: pytest.fail("converted before checking --output"))
    status, lines = run(capsys, "--input", folder, "--output", tmp_path / "out")
    assert status == 2
    assert lines == [f"error: {tmp_path / 'out'}: is a folder; name the file to write, e.g. "
                     f"{tmp_path / 'out' / 'annotations.csv'}"]
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name", ["benign/phantom_benign (1).png", "benign/phantom_benign (1)_mask.png",
                                  "boxes.png"])
def test_an_output_named_as_an_image_inside_the_dataset_is_refused(dataset_copy, tmp_path, capsys, name):
    folder, _ = dataset_copy
    before = tree_snapshot(folder)
    (tmp_path / "link.csv").symlink_to(folder / name)  # through a link too
    for output in (folder / name, tmp_path / "link.csv"):
        status, lines = run(capsys, "--input", folder, "--output", output)
        assert status == 2
        assert lines == [f"error: {output}: an image name inside the dataset folder {folder}: writing it would "
                         "replace an image or mask, or add one; name a .csv or .json file"]
    assert tree_snapshot(folder) == before


def test_an_output_in_a_read_only_folder_is_refused_before_any_work(phantom_dataset, capsys, unwritable_folder):
    folder, _ = phantom_dataset
    status, lines = run(capsys, "--input", folder, "--output", unwritable_folder / "annotations.csv")
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {unwritable_folder}: cannot write there (")
