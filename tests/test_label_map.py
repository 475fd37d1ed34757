"""label_map.pbtxt is read with a real text-proto parse: quotes, comments, order, errors."""

from __future__ import annotations

import pytest

from busdet.label_map import load_label_map, name_to_id, parse_label_map


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
])
def test_bad_label_maps_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_label_map(text, source="labels.pbtxt")


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "labels.pbtxt"
    path.write_text('item { id: 0 name: "x" }', encoding="utf-8")
    with pytest.raises(ValueError, match=str(path)):
        load_label_map(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_label_map(tmp_path / "absent.pbtxt")


def test_name_to_id_inverts():
    assert name_to_id({1: "benign", 2: "malignant"}) == {"benign": 1, "malignant": 2}
