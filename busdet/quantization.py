"""Int8 static quantization of ``model.onnx`` with ONNX Runtime's tools (an experiment, issue 12).

    quantize_onnx(Path("saved_model/model.onnx"), Path("work/model_int8.onnx"), calibration_paths)

QDQ format, weights int8 per channel, activations uint8, ranges calibrated
(min-max) on training images fed exactly as the model is served (uint8
``[1, H, W, 3]``, any size). Only ``Conv`` nodes are quantized: the backbone, FPN
and head; resize, box decoding and NMS stay float. Whether the result is good
enough is measured by ``benchmarks/bench_int8.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from busdet.images import read_image

log = logging.getLogger(__name__)


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


def quantize_onnx(float_path: Path, int8_path: Path, calibration_paths: Sequence[Path],
                  method: CalibrationMethod = CalibrationMethod.MinMax) -> Path:
    """Writes the int8 (QDQ) version of ``float_path`` to ``int8_path``; returns ``int8_path``.

    ONNX Runtime's pre-processing (shape inference, graph optimisation) runs first,
    as its documentation advises; its output goes beside ``int8_path``.
    """
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = int8_path.with_name(f"{int8_path.stem}.prepared.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(int8_path), CalibrationImages(calibration_paths),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method)
    log.info("wrote %s (%.1f MB)", int8_path, int8_path.stat().st_size / 1e6)
    return int8_path
