"""busdet.inference: model_info.json, the label-map check, one-line load errors, the two runtimes.

The fast tests fail (or pass) before a runtime is loaded, on a folder that only
looks like a SavedModel, or serve the shipped model through ONNX Runtime; the
damaged real model is tested through predict.py (tests/test_predict.py, slow), and
the parity of ONNX Runtime and TensorFlow on the smoke-trained model is slow.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from busdet.evaluation.measure import store_operating_point
from busdet.inference import (DEFAULT_SCORE_THRESHOLD, FEATURES_OUTPUT, MODEL_INFO_FILE, ONNX_FILE, ModelLoadError,
                              choose_runtime, compute_file_digest, compute_saved_model_digest, default_score_threshold,
                              find_onnx_problem, load_detector, read_model_info, write_model_info)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_model"
CLASSES = {"1": "benign", "2": "malignant"}


def fake_model(folder: Path, info: dict | None = None) -> Path:
    """A folder that passes the cheap checks: an (empty) saved_model.pb and, if given, model info."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(b"")
    if info is not None:
        write_model_info(folder, info)
    return folder


def label_map(path: Path, items) -> Path:
    path.write_text("".join(f'item {{ id: {i} name: "{name}" }}\n' for i, name in items), encoding="utf-8")
    return path


def test_model_info_round_trips_and_absent_is_empty(tmp_path):
    assert read_model_info(tmp_path) == {}
    write_model_info(tmp_path, {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None})
    assert read_model_info(tmp_path) == {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None}
    assert default_score_threshold(read_model_info(tmp_path)) == DEFAULT_SCORE_THRESHOLD
    assert default_score_threshold({"score_threshold": 0.2352}) == 0.2352


def test_storing_the_operating_point_keeps_the_rest_of_the_model_info(tmp_path):
    write_model_info(tmp_path, {"input_size": [640, 640], "classes": CLASSES, "score_threshold": None})
    measured_on = [{"name": "busi", "citation": "c"}]
    store_operating_point(tmp_path, {"score_threshold": 0.31, "threshold_rule": "rule", "datasets": measured_on,
                                     "val": {"busi": {"AP50_lesion": 0.8}}, "test": {"busi": {"AP50_lesion": 0.7}},
                                     "test_by_scanner": {}, "val_threshold_by_dataset": {"busi": 0.31}})
    assert read_model_info(tmp_path) == {"input_size": [640, 640], "classes": CLASSES, "score_threshold": 0.31,
                                         "threshold_rule": "rule", "measured_on": measured_on,
                                         "val_threshold_by_dataset": {"busi": 0.31},
                                         "test_metrics": {"busi": {"AP50_lesion": 0.7}},
                                         "val_metrics": {"busi": {"AP50_lesion": 0.8}}, "test_by_scanner": {}}
    assert [p.name for p in tmp_path.iterdir()] == [MODEL_INFO_FILE]


@pytest.mark.parametrize("content", ['{"input_size": [640, 6', "", "[1, 2]", "\xff\xfe"])
def test_damaged_model_info_is_one_error_naming_the_file(tmp_path, label_map_path, content):
    model = fake_model(tmp_path / "model")
    (model / MODEL_INFO_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(ModelLoadError, match=rf"^{model / MODEL_INFO_FILE}: damaged .*export the model again$"):
        load_detector(model, label_map_path)


@pytest.mark.parametrize("items", [[(1, "benign")],                                  # id 2 missing
                                   [(1, "malignant"), (2, "benign")],                # ids swapped
                                   [(1, "benign"), (2, "malignant"), (3, "cyst")]])  # a class the model lacks
def test_label_map_must_name_the_models_classes(tmp_path, items):
    model = fake_model(tmp_path / "model", {"classes": CLASSES})
    labels = label_map(tmp_path / "labels.pbtxt", items)
    with pytest.raises(ModelLoadError) as error:
        load_detector(model, labels)
    message = str(error.value)
    assert message.startswith(f"{labels}: classes ") and "\n" not in message
    assert "differ from the model's {1 benign, 2 malignant}" in message and str(model / MODEL_INFO_FILE) in message


def test_label_map_that_is_a_folder_is_one_error(tmp_path):
    model = fake_model(tmp_path / "model", {"classes": CLASSES})
    with pytest.raises(ModelLoadError, match="cannot read the label map"):
        load_detector(model, tmp_path)


# --- two runtimes: which one, and a stale ONNX file refused (issue 12) ----------------------------


def onnx_model(folder: Path) -> Path:
    """A fake SavedModel with a fake model.onnx whose digests model_info.json records, as the exporter does."""
    fake_model(folder, {"classes": CLASSES})
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / ONNX_FILE).write_bytes(b"onnx graph")
    write_model_info(folder, {"classes": CLASSES, "onnx": {"saved_model_sha256": compute_saved_model_digest(folder),
                                                           "sha256": compute_file_digest(folder / ONNX_FILE)}})
    return folder


def test_auto_takes_onnx_only_when_it_is_current(tmp_path, caplog):
    model = onnx_model(tmp_path / "model")
    assert choose_runtime(model, read_model_info(model)) == "onnx"
    assert choose_runtime(model, read_model_info(model), "tensorflow") == "tensorflow"
    (model / "variables" / "variables.index").write_bytes(b"retrained")  # new weights, old ONNX file
    assert choose_runtime(model, read_model_info(model), "auto") == "tensorflow"
    assert f"{model / ONNX_FILE}: stale, made from another SavedModel" in caplog.text


@pytest.mark.parametrize("change, reason", [
    (lambda model: (model / "saved_model.pb").write_bytes(b"another graph"), "stale, made from another SavedModel"),
    (lambda model: (model / "variables" / "variables.data-00000-of-00001").write_bytes(b"w"), "stale"),
    (lambda model: (model / ONNX_FILE).write_bytes(b"another onnx"), "not the ONNX file the exporter wrote"),
    (lambda model: (model / ONNX_FILE).unlink(), "no ONNX file"),
    (lambda model: write_model_info(model, {"classes": CLASSES}), "does not record which SavedModel"),
], ids=["graph changed", "weights added", "onnx replaced", "onnx missing", "no digest"])
def test_runtime_onnx_refuses_an_onnx_file_that_does_not_match(tmp_path, label_map_path, change, reason):
    model = onnx_model(tmp_path / "model")
    change(model)
    with pytest.raises(ModelLoadError) as error:
        load_detector(model, label_map_path, runtime="onnx")
    message = str(error.value)
    assert message.startswith(f"{model / ONNX_FILE}: ") and reason in message and "\n" not in message
    assert "refused" in message and "--onnx-for" in message


def test_unknown_runtime_is_one_error(tmp_path, label_map_path):
    with pytest.raises(ModelLoadError, match="runtime 'openvino': expected one of auto, onnx, onnx-int8, tensorflow"):
        load_detector(onnx_model(tmp_path / "model"), label_map_path, runtime="openvino")


def test_shipped_onnx_file_matches_the_shipped_saved_model():
    """Fails when saved_model/ changes without `tools/export_model.py --onnx-for saved_model`."""
    assert find_onnx_problem(SHIPPED, read_model_info(SHIPPED)) is None
    assert (SHIPPED / ONNX_FILE).stat().st_size < 15e6, "keep the ONNX file small enough for git"


def test_shipped_model_records_both_training_centres_and_their_test_metrics():
    """The About box and the model card read these: the shipped model must say what it learned from."""
    info = read_model_info(SHIPPED)
    assert [source["name"] for source in info["trained_on"]] == ["busi", "busbra"]
    assert all(source["citation"] for source in info["trained_on"])
    assert set(info["test_metrics"]) >= {"busi", "busbra", "pooled"}
    assert 0 < info["score_threshold"] < 1


def test_onnx_path_never_imports_tensorflow(tmp_path, label_map_path):
    """predict.py served by ONNX Runtime, run in a fresh interpreter: TensorFlow is never loaded."""
    import subprocess
    import sys

    from busdet.images import write_image
    from busdet.phantoms import generate_phantom

    write_image(tmp_path / "in" / "scan.png", generate_phantom(0, "malignant").image)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import predict; "
              "status = predict.main(predict.get_args_parser().parse_args(sys.argv[2:])); "
              "print('tensorflow' in sys.modules, status)")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT), "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), "--model", str(SHIPPED), "--label",
                           str(label_map_path), "--runtime", "onnx"], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.split() == ["False", "0"], done.stderr
    assert f"runtime: ONNX Runtime {version('onnxruntime')} ({SHIPPED / ONNX_FILE})" in done.stderr
    assert (tmp_path / "out" / "scan.png").is_file()


def run_both_runtimes(model: Path, label_map_path: Path):
    """``[(onnx outputs, tensorflow outputs)]`` on phantoms of several sizes: numpy dicts of the signature's outputs."""
    from busdet.phantoms import generate_phantom

    onnx = load_detector(model, label_map_path)  # auto: takes the exporter's current ONNX file
    tensorflow = load_detector(model, label_map_path, runtime="tensorflow")
    assert (onnx.runtime, tensorflow.runtime) == ("onnx", "tensorflow")
    pairs = []
    for seed, (label, width) in enumerate([("benign", 300), ("malignant", 640), ("normal", 900), ("benign", 1000)]):
        batch = generate_phantom(seed, label, width=width).image[np.newaxis]
        pairs.append(tuple({name: np.asarray(value)[0] for name, value in d.predict(batch).items()}
                           for d in (onnx, tensorflow)))
    return pairs


def unmatched(mine: list, theirs: list, agree) -> list:
    """Items of ``theirs`` with no partner in ``mine`` for which ``agree(partner, item)``, matched one to one."""
    free, missing = list(mine), []
    for item in theirs:
        partner = next((candidate for candidate in free if agree(candidate, item)), None)
        if partner is None:
            missing.append(item)
        else:
            free.remove(partner)
    return missing


def unmatched_detections(mine: dict, theirs: dict, tolerance: float = 1e-4) -> list:
    """Rows of ``theirs`` with no partner in ``mine`` (same class, score and normalised box within
    ``tolerance``), matched one to one, not by position."""
    def agree(j: int, row: int) -> bool:
        return (mine["detection_classes"][j] == theirs["detection_classes"][row]
                and abs(mine["detection_scores"][j] - theirs["detection_scores"][row]) <= tolerance
                and np.abs(mine["detection_boxes"][j] - theirs["detection_boxes"][row]).max() <= tolerance)

    return unmatched(range(int(mine["num_detections"])), range(int(theirs["num_detections"])), agree)


@pytest.mark.slow
def test_shipped_model_gives_the_same_detections_on_both_runtimes(label_map_path):
    """Parity on phantoms: same count; every box (normalised) and score within 1e-4, same class;
    the pooled features of the in-distribution check within 1e-3."""
    for mine, theirs in run_both_runtimes(SHIPPED, label_map_path):
        assert int(mine["num_detections"]) == int(theirs["num_detections"]) > 0
        assert unmatched_detections(mine, theirs) == []
        np.testing.assert_allclose(mine[FEATURES_OUTPUT], theirs[FEATURES_OUTPUT], rtol=1e-3, atol=1e-3)


def test_shipped_onnx_file_gives_the_features_as_their_own_output():
    """The in-distribution check's features are a separate graph output, beside the detections."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(SHIPPED / ONNX_FILE), providers=["CPUExecutionProvider"])
    outputs = {output.name: output.shape for output in session.get_outputs()}
    assert {"detection_boxes", "detection_scores", "detection_classes", "num_detections"} <= set(outputs)
    assert outputs[FEATURES_OUTPUT] == [1, 448]


@pytest.mark.slow
def test_smoke_model_export_writes_a_current_onnx_file_that_agrees(smoke_model, label_map_path):
    """The exporter's ONNX file on the smoke-trained model: current, same count and scores within 1e-4.

    Its boxes are not compared one by one: a few training steps leave every anchor's
    score within 1e-7 of 0.01005, so which of these tied candidates NMS keeps follows
    float rounding, in either runtime. The shipped model's scores are apart, and there
    every box is compared (above).
    """
    assert_current_onnx_file_agrees_on_scores(smoke_model, label_map_path)


def assert_current_onnx_file_agrees_on_scores(model: Path, label_map_path: Path) -> None:
    """``model``'s ONNX file is current and, on phantoms, gives the SavedModel's detection count and its
    scores within 1e-4 (sorted: see above why not box by box)."""
    assert find_onnx_problem(model, read_model_info(model)) is None
    for mine, theirs in run_both_runtimes(model, label_map_path):
        count = int(theirs["num_detections"])
        assert int(mine["num_detections"]) == count > 0
        np.testing.assert_allclose(np.sort(mine["detection_scores"][:count]),
                                   np.sort(theirs["detection_scores"][:count]), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_exported_onnx_graph_has_no_loop_at_all(smoke_model):
    """Neither the NMS nor the preprocessing is a ``Loop`` (the batch-1 signature preprocesses its
    image without ``tf.map_fn``, issue 21): ONNX Runtime runs every op natively."""
    import onnx

    graph = onnx.load(str(smoke_model / ONNX_FILE)).graph
    assert [node.name for node in graph.node if node.op_type in ("Loop", "Scan", "If")] == []


# --- the session tuned for the machine (issue 21) --------------------------------------------------


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
], ids=["v2 quota", "v2 unlimited", "v1 quota", "v1 unlimited", "no cgroup"])
def test_cgroup_cpu_quota_reads_v1_and_v2(tmp_path, files, expected):
    from busdet.inference import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == expected


def test_available_cores_follow_the_affinity_and_the_quota(monkeypatch):
    import busdet.inference as inference

    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(inference, "cgroup_cpu_quota", lambda: None)
    assert inference.available_cores() == 4
    monkeypatch.setattr(inference, "cgroup_cpu_quota", lambda: 2.5)
    assert inference.available_cores() == 2
    monkeypatch.setattr(inference, "cgroup_cpu_quota", lambda: 0.5)
    assert inference.available_cores() == 1


def test_optimised_graph_is_cached_beside_the_model_and_serves_the_same_outputs(tmp_path):
    """The first load writes the optimised graph (named by the digest); the second loads it; both agree."""
    import shutil

    from busdet.inference import load_onnx_predict, optimized_model_path
    from busdet.phantoms import generate_phantom

    onnx_path = tmp_path / ONNX_FILE
    shutil.copy(SHIPPED / ONNX_FILE, onnx_path)
    digest = read_model_info(SHIPPED)["onnx"]["sha256"]
    (tmp_path / f".model.{'0' * 16}.ort0.old.onnx").write_bytes(b"an earlier model's cache")
    first, _ = load_onnx_predict(onnx_path, digest)
    cached = optimized_model_path(onnx_path, digest, version("onnxruntime"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cached.name, ONNX_FILE])
    second, _ = load_onnx_predict(onnx_path, digest)
    image = generate_phantom(3, "malignant").image[np.newaxis]
    for name, value in first(image).items():
        np.testing.assert_allclose(second(image)[name], value, rtol=0, atol=1e-6)
    cached.write_bytes(b"damaged")
    third, _ = load_onnx_predict(onnx_path, digest)  # a damaged cache is rebuilt
    assert int(third(image)["num_detections"][0]) == int(first(image)["num_detections"][0])
    assert cached.stat().st_size > 1000


def test_shipped_onnx_graph_has_native_nms_and_records_its_settings():
    """The NMS is ONNX's NonMaxSuppression (no tf2onnx Loop of Model Garden's), with the generator's settings."""
    import onnx

    graph = onnx.load(str(SHIPPED / ONNX_FILE)).graph
    loops = [node.name for node in graph.node if node.op_type == "Loop"]
    assert [node.op_type for node in graph.node].count("NonMaxSuppression") == 1
    assert not any("nms" in name for name in loops), loops
    nms = read_model_info(SHIPPED)["onnx"]["nms"]
    assert nms == {"op": "NonMaxSuppression", "class_agnostic": True, "pre_nms_top_k": 5000,
                   "score_threshold": 0.01, "iou_threshold": 0.6, "max_detections": 60}
    assert [o.name for o in graph.output][:4] == ["detection_boxes", "detection_scores", "detection_classes",
                                                  "num_detections"]


def unmatched_boxes(mine, theirs, pixels: float = 1.0, score: float = 1e-3) -> list:
    """Boxes of ``theirs`` with no partner in ``mine`` (same label, corners within ``pixels``, score
    within ``score``), matched one to one."""
    def agree(box, other) -> bool:
        return (box.label == other.label and abs(box.score - other.score) <= score
                and max(abs(box.xmin - other.xmin), abs(box.ymin - other.ymin), abs(box.xmax - other.xmax),
                        abs(box.ymax - other.ymax)) <= pixels)

    return unmatched(mine, theirs, agree)


@pytest.mark.slow
def test_onnx_boxes_match_the_saved_model_on_the_busi_test_images(busi_dir, label_map_path):
    """The SavedModel is the reference: on every BUSI test image (data/busi_split.csv) ONNX Runtime
    returns the same detections, boxes within 1 px and scores within 1e-3, and the metrics
    tools/measure_model.py computes from them agree to 0.002 (issue 21)."""
    from busdet.datasets import DatasetSpec
    from busdet.evaluation.measure import annotated_splits, evaluate, run_in_turn, split_truth

    detectors = {runtime: load_detector(SHIPPED, label_map_path, runtime) for runtime in ("onnx", "tensorflow")}
    classes = list(detectors["onnx"].classes.values())
    members = annotated_splits(DatasetSpec("busi", busi_dir, ROOT / "data" / "busi_split.csv"), classes,
                               ["test"])["test"]
    assert len(members) == 100
    runs = run_in_turn(detectors, members)
    for image in members:
        mine, theirs = (runs.predictions[runtime][image.filename] for runtime in ("onnx", "tensorflow"))
        assert len(mine) == len(theirs) > 0, image.filename
        assert unmatched_boxes(mine, theirs) == [], image.filename
    metrics = {runtime: evaluate(split_truth(members, found), detectors["onnx"].score_threshold, classes).metrics
               for runtime, found in runs.predictions.items()}
    for key in ("AP50_lesion", "mAP50", "AP50_benign", "AP50_malignant", "AUC_malignant_image", "lesion_recall"):
        assert abs(metrics["onnx"][key] - metrics["tensorflow"][key]) <= 0.002, key


def test_a_folder_where_the_cache_cannot_be_written_still_loads(tmp_path, monkeypatch):
    """Saving the optimised graph failing (a read-only folder, a full disk) costs only the cache."""
    import shutil

    import busdet.inference as inference

    shutil.copy(SHIPPED / ONNX_FILE, tmp_path / ONNX_FILE)
    digest = read_model_info(SHIPPED)["onnx"]["sha256"]
    monkeypatch.setattr(inference.os, "access", lambda path, mode: False)
    predict, _ = inference.load_onnx_predict(tmp_path / ONNX_FILE, digest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILE]
    monkeypatch.undo()
    unsaveable = tmp_path / "cache-is-a-folder"
    monkeypatch.setattr(inference, "optimized_model_path", lambda *args: unsaveable / "sub" / "x.onnx")
    predict, _ = inference.load_onnx_predict(tmp_path / ONNX_FILE, digest)
    assert int(predict(np.zeros((1, 200, 300, 3), np.uint8))["num_detections"][0]) >= 0
