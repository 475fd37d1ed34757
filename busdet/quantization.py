"""Int8 static quantization of ``model.onnx`` with ONNX Runtime's tools (issue 21, item 4).

    python tools/quantize_model.py --model saved_model --data busi=... --data busbra=... --write
    predict.py --runtime onnx-int8 ...        # then served by model_int8.onnx

QDQ format, weights int8 per channel, activations uint8, ranges calibrated (min-max)
on training images of every dataset, fed exactly as the model is served (uint8
``[1, H, W, 3]``, any size). Only the ``Conv`` nodes of the backbone and the FPN are
quantized: quantizing the RetinaNet head as well cost model v2 0.15 lesion AP50 on
BUSI test (0.845 -> 0.695; 0.706 with only its two output layers left float), while
backbone and FPN alone changed lesion AP50 by +0.005 (BUSI) and -0.005 (BUS-BRA).
Resize, box decoding and NMS stay float.

:func:`measure_int8` scores the float and the int8 file on each dataset's test split
with the one inference path and says whether the issue's rule holds: lesion AP50 and
mAP50 drop by at most :data:`MAX_DROP` on every split. :func:`install_int8` puts the
file beside ``model.onnx`` and records it in ``model_info.json`` (``onnx_int8``):
its digest, the float file it was made from, the calibration and the figures.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from busdet.annotations import annotate_dataset
from busdet.datasets import DatasetSpec, read_split_csv
from busdet.files import atomic_write
from busdet.images import read_image
from busdet.inference import (INT8_FILE, ONNX_FILE, Detector, compute_file_digest, load_onnx_predict,
                              read_model_info, write_model_info)
from busdet.ood import mahalanobis_distances

log = logging.getLogger(__name__)

MAX_DROP = 0.01
GATED = ("AP50_lesion", "mAP50")
REPORTED = GATED + ("AUC_malignant_image", "lesion_recall")
# Name scope of the RetinaNet head in the converted graph: left float (see the module doc).
FLOAT_SCOPES = ("retina_net_head",)


class CalibrationImages(CalibrationDataReader):
    """Feeds images one at a time as the model's ``inputs`` (uint8 ``[1, H, W, 3]``)."""

    def __init__(self, paths: Sequence[Path], input_name: str = "inputs"):
        self.input_name = input_name
        self.paths = list(paths)
        self.batches: Iterator = iter(())
        self.rewind()

    def rewind(self) -> None:
        self.batches = ({self.input_name: read_image(path)[None]} for path in self.paths)

    def get_next(self) -> Optional[dict]:
        return next(self.batches, None)


def float_nodes(float_path: Path, scopes: Sequence[str] = FLOAT_SCOPES) -> List[str]:
    """The ``Conv`` nodes of ``float_path`` under any of ``scopes``: kept float."""
    graph = onnx.load(str(float_path)).graph
    return [node.name for node in graph.node
            if node.op_type == "Conv" and any(f"/{scope}/" in node.name for scope in scopes)]


def quantize_onnx(float_path: Path, int8_path: Path, calibration_paths: Sequence[Path],
                  method: CalibrationMethod = CalibrationMethod.MinMax,
                  float_scopes: Sequence[str] = FLOAT_SCOPES) -> Path:
    """Writes the int8 (QDQ) version of ``float_path`` to ``int8_path``; returns ``int8_path``.

    ONNX Runtime's pre-processing (shape inference, graph optimisation) runs first, as
    its documentation advises, in a temporary folder.
    """
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".quantize.") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), CalibrationImages(calibration_paths),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=float_nodes(prepared, float_scopes))
        with atomic_write(int8_path) as stream:
            stream.write(quantized.read_bytes())
    log.info("wrote %s (%.1f MB)", int8_path, int8_path.stat().st_size / 1e6)
    return int8_path


def calibration_images(datasets: Sequence[DatasetSpec], classes: Sequence[str], per_dataset: int) -> List[Path]:
    """``per_dataset`` training images of each dataset, spread evenly over its sorted training split."""
    paths: List[Path] = []
    for spec in datasets:
        images, _ = annotate_dataset(spec.path, list(classes))
        split = read_split_csv(spec.split_path)
        train = sorted((i for i in images if split.get(i.filename) == "train"), key=lambda i: i.filename)
        if not train:
            raise ValueError(f"{spec.split_path}: no training images of {spec.path} to calibrate on")
        paths += [image.path for image in train[::max(1, len(train) // per_dataset)][:per_dataset]]
    return paths


def measure_int8(float_detector: Detector, int8_path: Path, datasets: Sequence[DatasetSpec]) -> dict:
    """Both files on every test image of each dataset, at the model's operating threshold:
    ``{dataset: {images, float: {...}, int8: {...}, drop: {...}, ood: {...}}, "passes": bool}``.

    ``ood`` (when the model has in-distribution statistics, fitted on the float file's
    features): how far the int8 features move the distance, and on how many images the
    flag changes; the statistics are not refitted for the int8 file."""
    from busdet.evaluation.measure import annotated_splits, evaluate, run_in_turn, split_truth  # pycocotools

    predict, session = load_onnx_predict(int8_path)
    detectors = {"float": float_detector,
                 "int8": dataclasses.replace(float_detector, predict=predict, owner=session, runtime="onnx-int8")}
    classes = list(float_detector.classes.values())
    figures: Dict[str, object] = {}
    for spec in datasets:
        members = annotated_splits(spec, classes, ["test"])["test"]
        runs = run_in_turn(detectors, members)
        row: Dict[str, object] = {"images": len(members)}
        for name in detectors:
            metrics = evaluate(split_truth(members, runs.predictions[name]), float_detector.score_threshold,
                               classes).metrics
            row[name] = {key: round(float(metrics[key]), 4) for key in REPORTED}
        row["drop"] = {key: round(row["float"][key] - row["int8"][key], 4) for key in GATED}
        if float_detector.ood is not None:
            distances = {name: mahalanobis_distances(np.stack(rows), float_detector.ood)
                         for name, rows in runs.features.items()}
            flagged = {name: d > float_detector.ood.threshold for name, d in distances.items()}
            row["ood"] = {"distance_change_max": round(float(np.abs(distances["int8"] - distances["float"]).max()), 3),
                          "distance_float_median": round(float(np.median(distances["float"])), 3),
                          "flag_changed": int((flagged["int8"] != flagged["float"]).sum())}
        figures[spec.name] = row
    figures["passes"] = all(drop <= MAX_DROP for spec in datasets for drop in figures[spec.name]["drop"].values())
    return figures


def install_int8(model_dir: Path, int8_path: Path, record: dict) -> Path:
    """Copies ``int8_path`` to ``model_dir/model_int8.onnx`` and records it in ``model_info.json``."""
    target = model_dir / INT8_FILE
    if int8_path.resolve() != target.resolve():
        with atomic_write(target) as stream, open(int8_path, "rb") as source:
            shutil.copyfileobj(source, stream)
    info = read_model_info(model_dir)
    info["onnx_int8"] = {**record, "sha256": compute_file_digest(target),
                         "onnx_sha256": compute_file_digest(model_dir / ONNX_FILE)}
    write_model_info(model_dir, info)
    return target
