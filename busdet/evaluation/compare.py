"""Two models' measurements side by side: the before/after table of the model card.

    before = read_summary("docs/measurements/model_v2_busi_busbra.json")   # tools/measure_model.py's JSON
    after = read_summary("v3.json")
    check_same_splits(before, after, ("v2", "v3"))      # refuses another split CSV, or other images or lesions
    print(comparison_markdown(before, after, ("v2", "v3")))

One row per split, set (each dataset, ``pooled``, and with the test split each scanner
of ``test_by_scanner``; named with its image count) and metric that both summaries hold: before, after and the
change (after - before). Values are shown to 3 decimals and the change is the difference
of the values shown, so that every row adds up as written (the card's hand-made v1/v2
table was made so). Normal images boxed at the threshold are counted, "3 of 17", from
``normal_with_box_rate`` and ``normal_images``.

Two summaries compare only if they measured the same images: a dataset whose split CSV
digest both record (``split_sha256`` in ``datasets``, which tools/measure_model.py
writes) must have the same digest, and every set both hold must have the same image and
lesion counts (``images``, ``lesions`` and their per-class counts). Summaries made before
the digest was recorded (model v1's and v2's in docs/measurements) have the counts only:
necessary, not sufficient.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from busdet.datasets import SPLIT_DIGEST
from busdet.files import printable, read_text

SPLITS = ("test", "val")
SCANNERS = "test_by_scanner"
# (key in a set's metrics, row label): the card's labels, in the card's order.
METRICS = (("AP50_lesion", "lesion AP50"), ("mAP50", "mAP50"), ("AP50_malignant", "AP50 malignant"),
           ("mAP50_95", "mAP@[.5:.95]"), ("AUC_malignant_image", "malignancy AUC"),
           ("lesion_recall", "lesion recall at threshold"), ("lesion_precision", "lesion precision at threshold"))
NORMALS = ("normal_with_box_rate", "normal_images")
NORMALS_LABEL = "normal images boxed at threshold"
COUNT_PREFIXES = ("images", "lesions")  # images, images_benign, ..., lesions, lesions_malignant, ...


class SummaryError(ValueError):
    """A summary file that cannot be read or is not tools/measure_model.py's JSON; one line naming it."""


class SplitMismatchError(ValueError):
    """Two summaries measured on different images (a split CSV digest or a set's counts differ);
    one line saying where."""


Sets = Dict[Tuple[str, str], dict]  # {(split, set): metrics}; scanner sets are "dataset: scanner"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(key: str) -> bool:
    return key.split("_")[0] in COUNT_PREFIXES or key == "normal_images"


def summary_sets(summary: dict) -> Sets:
    """Every measured set of a summary: ``("test", "busi")``, ``("val", "pooled")``,
    ``("test_by_scanner", "busbra: GE Logiq 5 ...")``."""
    sets = {(split, name): metrics for split in SPLITS for name, metrics in summary.get(split, {}).items()}
    sets.update({(SCANNERS, f"{dataset}: {scanner}"): metrics
                 for dataset, scanners in summary.get(SCANNERS, {}).items() for scanner, metrics in scanners.items()})
    return sets


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def split_digests(summary: dict) -> Dict[str, str]:
    """``{dataset: sha256 of its split CSV}`` of the datasets whose digest the summary records."""
    return {d["name"]: d[SPLIT_DIGEST] for d in summary.get("datasets", []) if SPLIT_DIGEST in d}


def _datasets_problem(datasets) -> Optional[str]:
    """What makes a summary's ``datasets`` not a list of ``{"name", ..., "split_sha256"?}``, or None."""
    if not (isinstance(datasets, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                               for d in datasets)):
        return "'datasets' is not a list of named datasets"
    for dataset in datasets:
        if SPLIT_DIGEST in dataset and not _is_digest(dataset[SPLIT_DIGEST]):
            return f"datasets {dataset['name']}: {SPLIT_DIGEST} is not a sha256"
    return None


def summary_problem(summary) -> Optional[str]:
    """What makes ``summary`` not a measurement summary, or None."""
    if not isinstance(summary, dict):
        return "not a JSON object"
    if not any(split in summary for split in SPLITS):
        return f"no {' or '.join(repr(s) for s in SPLITS)} metrics"
    for split in SPLITS:
        if split in summary and not (isinstance(summary[split], dict)
                                     and all(isinstance(m, dict) for m in summary[split].values())):
            return f"{split!r} is not an object of per-dataset metrics"
    scanners = summary.get(SCANNERS, {})
    if not (isinstance(scanners, dict) and all(isinstance(d, dict) and all(isinstance(m, dict) for m in d.values())
                                               for d in scanners.values())):
        return f"{SCANNERS!r} is not an object of per-scanner metrics"
    if "score_threshold" in summary and not _is_number(summary["score_threshold"]):
        return "score_threshold is not a number"
    problem = _datasets_problem(summary.get("datasets", []))
    if problem is not None:
        return problem
    for (split, name), metrics in summary_sets(summary).items():
        for key, value in metrics.items():
            if _is_count(key) and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                return f"{split} {name}: {key} is not a count"
            if key in dict(METRICS) or key == NORMALS[0]:
                if value is not None and not _is_number(value):
                    return f"{split} {name}: {key} is neither a number nor null"
    return None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_summary(path: Path) -> dict:
    """tools/measure_model.py's summary JSON from ``path``.

    Raises:
      SummaryError: the file is missing, unreadable, not JSON or not such a summary (one line naming it).
    """
    try:
        summary = json.loads(read_text(path), parse_constant=_refuse_constant)
    except OSError as error:
        raise SummaryError(f"{printable(path)}: cannot read it ({error.strerror or error})") from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise SummaryError(f"{printable(path)}: not JSON ({printable(error)})") from None
    problem = summary_problem(summary)
    if problem is not None:
        raise SummaryError(f"{printable(path)}: not a summary of tools/measure_model.py ({printable(problem)})")
    return summary


def _split_label(part: str) -> str:
    """The split a part of the summary measured: the scanners' is the test split."""
    return "test" if part == SCANNERS else part


def check_same_splits(before: dict, after: dict, names: Sequence[str]) -> None:
    """Raises :class:`SplitMismatchError` when a dataset's split CSV digest differs (where both summaries
    record it), or else when a set both hold has other image or lesion counts."""
    digests_before, digests_after = split_digests(before), split_digests(after)
    for dataset in [d for d in digests_before if d in digests_after]:
        if digests_before[dataset] != digests_after[dataset]:
            raise SplitMismatchError(
                f"{names[0]} and {names[1]} were measured on different splits: {dataset}'s split CSV has sha256 "
                f"{digests_before[dataset][:12]}... in {names[0]} and {digests_after[dataset][:12]}... in {names[1]}")
    sets_before, sets_after = summary_sets(before), summary_sets(after)
    for key in [k for k in sets_before if k in sets_after]:
        counts_before, counts_after = sets_before[key], sets_after[key]
        for count in [c for c in counts_before if _is_count(c) and c in counts_after]:
            if counts_before[count] != counts_after[count]:
                raise SplitMismatchError(
                    f"{names[0]} and {names[1]} were measured on different splits: {_split_label(key[0])} {key[1]} has "
                    f"{counts_before[count]} {count} in {names[0]} and {counts_after[count]} in {names[1]}")


@dataclass
class Row:
    """One line of the table, as shown."""

    split: str
    name: str
    metric: str
    before: str
    after: str
    change: str


def _shown(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _change(before: str, after: str) -> str:
    """``after - before`` of two values as shown (exact: no float rounding), empty when one is n/a."""
    if "n/a" in (before, after):
        return ""
    difference = Decimal(after) - Decimal(before)
    return f"{difference:+.3f}" if difference else "0.000"


def _normals_boxed(metrics: dict) -> Optional[int]:
    rate, normals = (metrics.get(key) for key in NORMALS)
    return None if rate is None or not normals else round(rate * normals)


def set_rows(split: str, name: str, before: dict, after: dict) -> List[Row]:
    """The rows of one set: each metric of :data:`METRICS` both hold (not null in both), then normals boxed."""
    rows = []
    for key, label in METRICS:
        if key in before and key in after and (before[key], after[key]) != (None, None):
            shown = _shown(before[key]), _shown(after[key])
            rows.append(Row(split, name, label, *shown, _change(*shown)))
    boxed = _normals_boxed(before), _normals_boxed(after)
    if None not in boxed:
        normals = before[NORMALS[1]]
        rows.append(Row(split, name, NORMALS_LABEL, f"{boxed[0]} of {normals}", f"{boxed[1]} of {normals}",
                        f"{boxed[1] - boxed[0]:+d}" if boxed[1] != boxed[0] else "0"))
    return rows


def comparison_rows(before: dict, after: dict, splits: Sequence[str] = ("test",),
                    scanners: bool = True) -> Tuple[List[Row], List[str]]:
    """The rows of the sets both summaries hold, in ``splits`` (then, with ``"test"`` and ``scanners``,
    the test split per scanner), in the order of ``before``; and the sets only one of them holds."""
    parts = [part for split in splits for part in ([split, SCANNERS] if split == "test" and scanners else [split])]
    sets_before, sets_after = summary_sets(before), summary_sets(after)
    rows, alone = [], []
    for part in parts:
        keys = [k for k in sets_before if k[0] == part]
        keys += [k for k in sets_after if k[0] == part and k not in sets_before]
        split = _split_label(part)
        for key in keys:
            if key in sets_before and key in sets_after:
                images = sets_before[key].get("images")
                name = key[1] if images is None else f"{key[1]} ({images} images)"
                rows += set_rows(split, name, sets_before[key], sets_after[key])
            else:
                alone.append(f"{split} {key[1]}")
    return rows, alone


def _cell(text: str) -> str:
    """A table cell: printable, a ``|`` escaped."""
    return printable(text).replace("|", "\\|")


def comparison_markdown(before: dict, after: dict, names: Sequence[str], splits: Sequence[str] = ("test",),
                        scanners: bool = True) -> str:
    """The before/after table in Markdown, after a line per model's operating threshold.

    Raises:
      SplitMismatchError: see :func:`check_same_splits`.
      ValueError: the two summaries have no set in common in ``splits``.
    """
    check_same_splits(before, after, names)
    rows, alone = comparison_rows(before, after, splits, scanners)
    if not rows:
        raise ValueError(f"{names[0]} and {names[1]} have no {' or '.join(splits)} metrics in common")
    lines = [f"Operating score threshold, where the metrics \"at threshold\" are counted "
             f"(change: {_cell(names[1])} - {_cell(names[0])} of the values shown):", ""]
    for name, summary in zip(names, (before, after)):
        rule = summary.get("threshold_rule")
        lines += [f"- {_cell(name)}: {summary.get('score_threshold', 'not recorded')}"
                  + (f" ({_cell(str(rule))})" if rule else "")]
    lines += ["", f"| split | set | metric | {_cell(names[0])} | {_cell(names[1])} | change |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {' | '.join(_cell(c) for c in (r.split, r.name, r.metric, r.before, r.after, r.change))} |"
              for r in rows]
    if alone:
        lines += ["", f"Measured in one of the two only (left out): {_cell(', '.join(alone))}."]
    return "\n".join(lines) + "\n"
