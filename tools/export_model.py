#!/usr/bin/env python
"""Export a training run's checkpoint as the product's SavedModel, with its ONNX copy.

    python tools/export_model.py --model-dir runs/stage2_640 --output saved_model [--score-threshold 0.4]
    python tools/export_model.py --onnx-for saved_model     # only (re)write saved_model/model.onnx
    python tools/export_model.py --model-dir runs/v2_640 --output /tmp/v2_tta --flip-tta   # flip TTA in the graph

Uses the run's own params.yaml (written by tools/train.py), Model Garden's
exporter, and writes saved_model/model_info.json (input size, label map,
operating threshold) and saved_model/model.onnx (tf2onnx; model_info.json records
the SavedModel it was made from). --flip-tta (off by default) builds horizontal-flip
test-time augmentation into the graph: the network also runs on the mirrored image
and one NMS selects among both passes' boxes (about twice the network time). The
previous export is replaced only when the new one is complete. --onnx-for converts an existing SavedModel and keeps its
weights and model_info.json. Exit status: 0 exported, 2 bad arguments or no
checkpoint or SavedModel, 130 interrupted (143 when stopped by SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from busdet.cli import run_command  # noqa: E402
from busdet.inference import DEFAULT_SCORE_THRESHOLD  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="training run folder (has params.yaml)")
    source.add_argument("--onnx-for", type=Path, metavar="SAVED_MODEL",
                        help="only convert this exported SavedModel to SAVED_MODEL/model.onnx")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file or folder (default: the run's best/ if present, else latest)")
    parser.add_argument("--output", type=Path, default=ROOT / "saved_model", help="SavedModel folder to write")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--score-threshold", "--threshold", dest="score_threshold", type=float, default=None,
                        help=f"operating score threshold to store (default: none, so {DEFAULT_SCORE_THRESHOLD} "
                             "until tools/measure_model.py --write-model-info chooses one on the validation split)")
    parser.add_argument("--params-override", default=None,
                        help="YAML/JSON overrides for the exported graph, e.g. "
                             "'task: {model: {detection_generator: {use_class_agnostic_nms: false}}}'")
    parser.add_argument("--flip-tta", action="store_true",
                        help="also run the network on the horizontally mirrored image and let one NMS select "
                             "among both passes' boxes (about twice the network time; recorded as flip_tta "
                             "in model_info.json)")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.onnx_for:
        if args.flip_tta:  # the ONNX file is the SavedModel's graph converted: the flip is chosen at export
            print("error: --flip-tta goes with --model-dir (it is built into the exported graph); --onnx-for "
                  "converts the SavedModel's graph as it is", file=sys.stderr)
            return 2
        return convert_only(args.onnx_for)
    from official.modeling import hyperparams

    from busdet.label_map import load_label_map
    from busdet.training.export import export_saved_model
    from busdet.training.run import load_run_params

    try:
        params = load_run_params(args.model_dir)
        if args.params_override:
            params = hyperparams.override_params_dict(params, args.params_override, is_strict=True)
        checkpoint = args.checkpoint
        if checkpoint is None:
            best = args.model_dir / "best"
            checkpoint = str(best if best.is_dir() else args.model_dir)
        output = export_saved_model(params, checkpoint, args.output, load_label_map(args.label),
                                    args.score_threshold, flip_tta=args.flip_tta)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {checkpoint} -> {output}")
    return 0


def convert_only(model_dir: Path) -> int:
    if not (model_dir / "saved_model.pb").is_file():
        print(f"error: {model_dir}: no SavedModel here (expected {model_dir / 'saved_model.pb'})", file=sys.stderr)
        return 2
    from busdet.training.export import export_onnx

    print(f"converted {model_dir} -> {export_onnx(model_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
