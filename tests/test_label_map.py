"""label_map.pbtxt is read with a real text-proto parse: quotes, comments, order, errors."""

from __future__ import annotations

import pytest

from busdet.label_map import LabelMapError, load_label_map, name_to_id, parse_label_map


def test_the_project_label_map(label_map_path):
    assert load_label_map(label_map_path) == {1: "benign", 2: "malignant"}


@pytest.mark.parametrize("text", [
    'item { id: 1 name: "benign" } item { id: 2 name: "malignant" }',
    "item { id: 1 name: 'benign' }\nitem { id: 2 name: 'malignant' }",  # single quotes
    'item {\n  name: "benign"  # name before id\n  id: 1\n}\nitem { name: "malignant" id: 2 }',
    '# a comment line\nitem { id: 1 name: "benign" } # trailing comment\nitem { id: 2 name: "malignant" }',
    'item: { id: 1, name: "benign" }\nitem < id: 2; name: "malignant" >',  # other separators
    'item { id: 1 name: "benign" display_name: "Benign lesion" }\n'
    'item { id: 2 name: "malignant" display_name: "Malignant lesion" }',
    'item { id: 2 name: "malignant" }\nitem { id: 1 name: "benign" }',  # out of order
])
def test_proto_syntax_variants_parse_the_same(text):
    classes = parse_label_map(text)
    assert classes == {1: "benign", 2: "malignant"}
    assert list(classes) == [1, 2], "ordered by id"


def test_quoted_names_keep_spaces_and_escapes():
    assert parse_label_map('item { id: 1 name: "cyst # not a comment" } item { id: 3 name: "a\\"b" }') == {
        1: "cyst # not a comment", 3: 'a"b'}


@pytest.mark.parametrize("text,message", [
    ('item { name: "benign" }', "id and a name"),
    ("item { id: 1 }", "id and a name"),
    ('item { id: 1 name: "" }', "id and a name"),
    ('item { id: 1 name: "benign" } item { id: 1 name: "malignant" }', "duplicate"),
    ('item { id: 1 name: "benign" } item { id: 2 name: "benign" }', "duplicate"),
    ('item { id: 0 name: "background" }', "0 is background"),
    ('item { id: -1 name: "benign" }', ">= 1"),
    ("", "no items"),
    ("# only a comment\n", "no items"),
    ("benign,1\nmalignant,2\n", "not a valid label map"),
    ('item { id: 1 name: "benign" ', "not a valid label map"),
    ('item { id: "one" name: "benign" }', "not a valid label map"),
    ('item { id: 1 name: benign }', "not a valid label map"),
    ('item { id: 1 name: " benign" }', "spaces at an end or control characters"),
    ('item { id: 1 name: "benign\\n" }', "spaces at an end or control characters"),
    ('item { id: 1 name: "ben\\tign" }', "spaces at an end or control characters"),
])
def test_bad_label_maps_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_label_map(text, source="labels.pbtxt")


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "labels.pbtxt"
    path.write_text('item { id: 0 name: "x" }', encoding="utf-8")
    with pytest.raises(ValueError, match=str(path)):
        load_label_map(path)


def test_missing_file_is_one_label_map_error_naming_it(tmp_path):
    """Every caller (predict.py, the page, evaluate, train, mask_to_bbox) gets the same one line."""
    with pytest.raises(LabelMapError, match=f"^{tmp_path / 'absent.pbtxt'}: label map not found"):
        load_label_map(tmp_path / "absent.pbtxt")


def test_name_to_id_inverts():
    assert name_to_id({1: "benign", 2: "malignant"}) == {"benign": 1, "malignant": 2}


# --- hostile label maps (issue 20, third round) ----------------------------------------------------

LABELS = 'item { id: 1 name: "benign" }\nitem { id: 2 name: "malignant" }\n'


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf" + LABELS.encode(), LABELS.encode("utf-16"),
                                  LABELS.replace("\n", "\r\n").encode()], ids=["UTF-8 BOM", "UTF-16", "CRLF"])
def test_windows_saved_label_maps_read_as_the_plain_one(tmp_path, data):
    """Notepad's byte-order mark and PowerShell's UTF-16 used to be 'not a valid label map' at 1:1."""
    path = tmp_path / "labels.pbtxt"
    path.write_bytes(data)
    assert load_label_map(path) == {1: "benign", 2: "malignant"}


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes('item { id: 1 name: "b\xe9nin" }'.encode("latin-1")),
     "cannot read the label map (not UTF-8 text: byte 0xe9 at offset 21); save it as UTF-8"),
    (lambda p: p.mkdir(), "cannot read the label map (a folder, not a file)"),
    (lambda p: p.symlink_to(p.parent / "gone"), "cannot read the label map (broken link"),
], ids=["latin-1", "folder", "broken link"])
def test_unreadable_label_maps_are_one_error_naming_the_file(tmp_path, make, reason):
    """Before, tools/evaluate.py printed "'utf-8' codec can't decode byte 0xe9 ..." without the file."""
    path = tmp_path / "labels.pbtxt"
    make(path)
    with pytest.raises(LabelMapError) as raised:
        load_label_map(path)
    assert str(raised.value).startswith(f"{path}: {reason}") and "\n" not in str(raised.value)
