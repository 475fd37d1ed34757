"""tools/compare_models.py: two measurement summaries side by side, refused when their splits differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import compare_models

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "docs" / "measurements" / "model_v1_busi_busbra.json"
V2 = ROOT / "docs" / "measurements" / "model_v2_busi_busbra.json"


def _metrics(images=10, lesions=8, normals=2, **values):
    metrics = {"AP50_lesion": 0.8, "mAP50": 0.6, "AP50_malignant": 0.5, "AUC_malignant_image": 0.7,
               "lesion_recall": 0.9, "lesion_precision": 0.4, "normal_with_box_rate": 0.5,
               "images": images, "lesions": lesions, "lesions_benign": lesions - 3, "lesions_malignant": 3,
               "normal_images": normals}
    metrics.update(values)
    return metrics


def _summary(threshold=0.3, **test):
    """A summary of one dataset ``a`` (val and test) and its scanner ``S1``; ``test`` overrides a's test metrics."""
    return {"threshold_rule": "a rule", "score_threshold": threshold,
            "val": {"a": _metrics()}, "test": {"a": _metrics(**test)},
            "test_by_scanner": {"a": {"S1": {"images": 4, "AP50_lesion": 0.75, "lesion_recall": 0.5}}}}


def _with_digest(summary: dict, digest: str) -> dict:
    """``summary`` with dataset ``a``'s split CSV digest, as tools/measure_model.py records it."""
    return {**summary, "datasets": [{"name": "a", "citation": "a", "split_sha256": digest}]}


DIGEST_1, DIGEST_2 = "1" * 64, "2" * 64


def _write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _run(*argv):
    return compare_models.main(compare_models.get_args_parser().parse_args([str(a) for a in argv]))


def _rows(text: str) -> dict:
    """``{(split, set, metric): (before, after, change)}`` of a printed table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] in ("test", "val"):
            rows[tuple(cells[:3])] = tuple(cells[3:])
    return rows


def test_reproduces_the_model_cards_v1_to_v2_table(capsys):
    assert _run("--before", V1, "--after", V2, "--names", "v1", "v2") == 0
    rows = _rows(capsys.readouterr().out)
    sets = {"BUSI": "busi (100 images)", "BUS-BRA": "busbra (237 images)", "pooled": "pooled (337 images)"}
    card = [  # MODEL_CARD.md, "Before and after: model v1 (BUSI only) against v2", test split
        ("BUSI", "lesion AP50", "0.846", "0.845", "-0.001"), ("BUSI", "mAP50", "0.692", "0.743", "+0.051"),
        ("BUSI", "AP50 malignant", "0.563", "0.711", "+0.148"), ("BUSI", "mAP@[.5:.95]", "0.418", "0.481", "+0.063"),
        ("BUSI", "malignancy AUC", "0.909", "0.875", "-0.034"),
        ("BUS-BRA", "lesion AP50", "0.605", "0.915", "+0.310"), ("BUS-BRA", "mAP50", "0.339", "0.678", "+0.339"),
        ("BUS-BRA", "malignancy AUC", "0.651", "0.854", "+0.203"),
        ("pooled", "lesion AP50", "0.670", "0.895", "+0.225"), ("pooled", "mAP50", "0.439", "0.689", "+0.250"),
        ("pooled", "malignancy AUC", "0.717", "0.854", "+0.137")]
    for dataset, metric, *values in card:
        assert rows[("test", sets[dataset], metric)] == tuple(values), (dataset, metric)
    # The card's text: pooled recall 0.880 -> 0.836, precision 0.142 -> 0.894, 3 of 17 normals boxed by v2 ...
    assert rows[("test", sets["pooled"], "lesion recall at threshold")][:2] == ("0.880", "0.836")
    assert rows[("test", sets["pooled"], "lesion precision at threshold")][:2] == ("0.142", "0.894")
    assert rows[("test", sets["BUSI"], "normal images boxed at threshold")] == ("17 of 17", "3 of 17", "-14")
    assert rows[("test", sets["BUSI"], "lesion recall at threshold")][1] == "0.793"
    # ... and per scanner, lesion AP50
    for scanner, images, values in [("GE Logiq 5 @10-12MHz", 94, ("0.628", "0.953")),
                                    ("GE Logiq 7 @10-14MHz", 119, ("0.658", "0.935")),
                                    ("Toshiba Aplio 300 @12-14 MHz", 21, ("0.289", "0.553"))]:
        assert rows[("test", f"busbra: {scanner} ({images} images)", "lesion AP50")][:2] == values
    assert not any(key[0] == "val" for key in rows)  # the test split only, unless asked


def test_change_is_the_difference_of_the_values_shown(tmp_path, capsys):
    before = _write(tmp_path / "before.json", _summary(AP50_lesion=0.8464, mAP50=0.6))
    after = _write(tmp_path / "after.json", _summary(threshold=0.5, AP50_lesion=0.8446, mAP50=0.6004,
                                                     normal_with_box_rate=0.0))
    assert _run("--before", before, "--after", after, "--names", "v2", "v3") == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # 0.846 and 0.845 shown: -0.001, though the values differ by 0.0018
    assert rows[("test", "a (10 images)", "lesion AP50")] == ("0.846", "0.845", "-0.001")
    assert rows[("test", "a (10 images)", "mAP50")] == ("0.600", "0.600", "0.000")
    assert rows[("test", "a (10 images)", "normal images boxed at threshold")] == ("1 of 2", "0 of 2", "-1")
    assert rows[("test", "a: S1 (4 images)", "lesion recall at threshold")] == ("0.500", "0.500", "0.000")
    assert "| split | set | metric | v2 | v3 | change |" in out
    assert "- v2: 0.3 (a rule)" in out and "- v3: 0.5 (a rule)" in out


def test_only_what_both_hold_is_shown_and_null_is_na(tmp_path, capsys):
    old = _summary(AUC_malignant_image=None, normal_with_box_rate=None, normal_images=0)
    del old["test"]["a"]["AP50_malignant"]
    old["test"]["gone"] = _metrics()
    new = _summary(AUC_malignant_image=0.9, normal_with_box_rate=None, normal_images=0)
    new["test"]["new"] = _metrics()
    assert _run("--before", _write(tmp_path / "o.json", old), "--after", _write(tmp_path / "n.json", new)) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    metrics = [key[2] for key in rows if key[1] == "a (10 images)"]
    assert "AP50 malignant" not in metrics and "normal images boxed at threshold" not in metrics
    assert rows[("test", "a (10 images)", "malignancy AUC")] == ("n/a", "0.900", "")
    assert not any(key[1].startswith(("gone", "new")) for key in rows)
    assert "Measured in one of the two only (left out): test gone, test new." in out


def test_splits_in_the_order_asked_and_scanners_can_be_left_out(tmp_path, capsys):
    path = _write(tmp_path / "s.json", _summary())
    assert _run("--before", path, "--after", path, "--splits", "val", "test", "--no-scanners") == 0
    keys = list(_rows(capsys.readouterr().out))
    assert keys[0][0] == "val" and keys[-1][0] == "test" and not any(":" in key[1] for key in keys)


@pytest.mark.parametrize("change", [{"images": 11}, {"lesions_malignant": 4}])
def test_summaries_of_different_splits_are_refused(tmp_path, capsys, change):
    before = _write(tmp_path / "before.json", _summary())
    after = _write(tmp_path / "after.json", _summary(**change))
    assert _run("--before", before, "--after", after, "--names", "v2", "v3") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "v2 and v3 were measured on different splits: test a has" in captured.err


def test_a_scanner_with_other_images_is_refused_too(tmp_path, capsys):
    after = _summary()
    after["test_by_scanner"]["a"]["S1"]["images"] = 5
    assert _run("--before", _write(tmp_path / "b.json", _summary()), "--after", _write(tmp_path / "a.json", after)) == 2
    assert "different splits: test a: S1 has 4 images" in capsys.readouterr().err


def test_summaries_of_split_csvs_with_other_digests_are_refused_though_counts_agree(tmp_path, capsys):
    before = _write(tmp_path / "before.json", _with_digest(_summary(), DIGEST_1))
    after = _write(tmp_path / "after.json", _with_digest(_summary(), DIGEST_2))
    assert _run("--before", before, "--after", after, "--names", "v2", "v3") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert ("v2 and v3 were measured on different splits: a's split CSV has sha256 111111111111... in v2 and "
            "222222222222... in v3") in captured.err
    same = _write(tmp_path / "same.json", _with_digest(_summary(), DIGEST_1))
    assert _run("--before", before, "--after", same) == 0


def test_the_digest_is_checked_first_and_the_counts_still(tmp_path, capsys):
    before = _write(tmp_path / "before.json", _with_digest(_summary(), DIGEST_1))
    other_split = _write(tmp_path / "a.json", _with_digest(_summary(images=11), DIGEST_2))
    assert _run("--before", before, "--after", other_split) == 2
    assert "a's split CSV has sha256" in capsys.readouterr().err
    other_images = _write(tmp_path / "b.json", _with_digest(_summary(images=11), DIGEST_1))
    assert _run("--before", before, "--after", other_images) == 2
    assert "different splits: test a has 10 images" in capsys.readouterr().err  # same split CSV, other images


def test_a_summary_without_digests_falls_back_to_the_counts(tmp_path, capsys):
    old = _write(tmp_path / "old.json", _summary())  # as model v1's and v2's, measured before digests were kept
    assert _run("--before", old, "--after", _write(tmp_path / "new.json", _with_digest(_summary(), DIGEST_2))) == 0
    capsys.readouterr()
    other = _write(tmp_path / "other.json", _with_digest(_summary(lesions_malignant=4), DIGEST_2))
    assert _run("--before", old, "--after", other) == 2
    assert "different splits: test a has 3 lesions_malignant" in capsys.readouterr().err
    # a dataset that only one of the two summaries records a digest of is checked by counts only
    elsewhere = {**_with_digest(_summary(), DIGEST_1), "datasets": [{"name": "b", "split_sha256": DIGEST_1}]}
    assert _run("--before", _write(tmp_path / "b.json", elsewhere),
                "--after", _write(tmp_path / "n.json", _with_digest(_summary(), DIGEST_2))) == 0


def test_model_v2s_summary_compares_with_one_that_records_digests(tmp_path, capsys):
    v2 = json.loads(V2.read_text())
    recorded = {**v2, "datasets": [{**d, "split_sha256": DIGEST_1} for d in v2["datasets"]]}
    assert _run("--before", V2, "--after", _write(tmp_path / "v3.json", recorded), "--names", "v2", "v3") == 0
    assert "| test | busi (100 images) | lesion AP50 | 0.845 | 0.845 | 0.000 |" in capsys.readouterr().out


def test_nothing_in_common_is_refused(tmp_path, capsys):
    other = {"test": {"b": _metrics()}}
    assert _run("--before", _write(tmp_path / "b.json", _summary()), "--after", _write(tmp_path / "a.json", other)) == 2
    assert capsys.readouterr().err == "error: before and after have no test metrics in common\n"


@pytest.mark.parametrize("content, reason", [
    (None, "cannot read it"),
    ('{"test": {"a": {"images": 1', "not JSON"),
    ("\xff", "not JSON"),
    ('{"test": {"a": {"AP50_lesion": NaN}}}', "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"threshold_rule": "x"}', "no 'test' or 'val' metrics"),
    ('{"test": [1]}', "'test' is not an object of per-dataset metrics"),
    ('{"test": {"a": {"images": "100"}}}', "test a: images is not a count"),
    ('{"test": {"a": {"AP50_lesion": "0.8"}}}', "test a: AP50_lesion is neither a number nor null"),
    ('{"test": {}, "test_by_scanner": {"a": 1}}', "'test_by_scanner' is not an object of per-scanner metrics"),
    ('{"test": {}, "datasets": {"a": {}}}', "'datasets' is not a list of named datasets"),
    ('{"test": {}, "datasets": [{"citation": "c"}]}', "'datasets' is not a list of named datasets"),
    ('{"test": {}, "datasets": [{"name": "a", "split_sha256": "abc"}]}', "datasets a: split_sha256 is not a sha256"),
])
def test_a_bad_summary_file_is_one_line_naming_it(tmp_path, capsys, content, reason):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_bytes(content.encode("latin-1"))
    good = _write(tmp_path / "good.json", _summary())
    assert _run("--before", good, "--after", bad) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"error: {bad}: ") and reason in captured.err


def test_a_folder_is_not_a_summary(tmp_path, capsys):
    assert _run("--before", tmp_path, "--after", _write(tmp_path / "good.json", _summary())) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: cannot read it")


def test_output_is_written_as_printed(tmp_path, capsys):
    path = _write(tmp_path / "s.json", _summary())
    output = tmp_path / "card" / "table.md"
    assert _run("--before", path, "--after", path, "--output", output) == 0
    assert output.read_text() == capsys.readouterr().out
    original = output.read_text()
    assert _run("--before", path, "--after", tmp_path / "missing.json", "--output", output) == 2
    assert output.read_text() == original  # a refused run leaves the old table


def test_output_that_is_a_folder_is_refused_before_reading(tmp_path, capsys):
    path = _write(tmp_path / "s.json", _summary())
    assert _run("--before", path, "--after", path, "--output", tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "is a folder" in captured.err
