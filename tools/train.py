#!/usr/bin/env python
"""Train the detector (RetinaNet + MobileNetV2, Model Garden) on a BUSI-layout dataset.

    python tools/train.py --data ../shared/busi/Dataset_BUSI_with_GT \\
        --config configs/stage1_384.yaml --model-dir runs/stage1_384
    python tools/train.py --data ../shared/busi/Dataset_BUSI_with_GT \\
        --config configs/stage2_640.yaml --model-dir runs/stage2_640 --init runs/stage1_384

Run the same command again to resume from the latest checkpoint in --model-dir.
TensorBoard logs go to --model-dir; the resolved config to --model-dir/params.yaml.
Exit status: 0 done, 1 training failed, 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tqdm import tqdm  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="dataset folder, one sub-folder per class")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="stage YAML overriding the registered experiment (repeatable)")
    parser.add_argument("--model-dir", required=True, type=Path, help="checkpoints and logs (resumed if present)")
    parser.add_argument("--init", default="none",
                        help="none (random), imagenet (Keras MobileNetV2 weights; needs them cached "
                             "or a network), or a checkpoint file/folder (default: none)")
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "busi_split.csv",
                        help="filename,label,split CSV; made with --seed if missing (default: %(default)s)")
    parser.add_argument("--records", type=Path, default=ROOT / "work" / "records",
                        help="where TFRecords are written (default: %(default)s)")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--oversample-malignant", type=int, default=2,
                        help="repeat malignant training images this many times (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    parser.add_argument("--params-override", default=None, help="extra YAML/JSON string of overrides")
    return parser


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from busdet.label_map import load_label_map
    from busdet.training import run  # TensorFlow import is slow: after argument parsing

    if not args.data.is_dir():
        print(f"error: --data {args.data}: not a folder", file=sys.stderr)
        return 2
    try:
        counts = run.prepare_data(args.data, args.label, args.split, args.records,
                                  {"malignant": args.oversample_malignant}, args.seed,
                                  progress=lambda items: tqdm(items, desc="tfrecords", unit="image"))
        params = run.build_params(args.config, args.records, counts, args.init, args.params_override,
                                  args.model_dir, class_names=list(load_label_map(args.label).values()))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.info("examples per split: %s", counts)
    logs = run.train(params, args.model_dir)
    logging.info("final evaluation: %s", {k: float(v) for k, v in (logs or {}).items()
                                              if k.startswith(("AP", "AUC", "target"))})
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
