#!/usr/bin/env python
"""Train the detector (RetinaNet + MobileNetV2, Model Garden) on one or more BUSI-layout datasets.

    python tools/train.py --data busi=../shared/busi/Dataset_BUSI_with_GT \\
        --data busbra=../shared/busbra/BUS-BRA --config configs/v3_stage1_256.yaml --model-dir runs/v3_256 \\
        --init imagenet=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5
    python tools/train.py --data mine=/path/to/my_dataset --config configs/v3_stage2_640.yaml \\
        --model-dir runs/mine --init runs/v3_640/best

Each --data is NAME=FOLDER (one sub-folder per class, NAME.png beside NAME_mask.png);
its split is data/NAME_split.csv, made (stratified by class, grouped by patient when
the folder has BUS-BRA's bus_data.csv) and written there the first time. The label map,
every --data (names and folders distinct, images in class folders) and each existing
split CSV (well formed, naming only images of its folder) are checked before TensorFlow loads.
How often each dataset and class is drawn is set in the config (task.train_data.sampling).
Run the same command again to resume from the latest checkpoint in --model-dir.
With --config configs/multi_worker.yaml (runtime.distribution_strategy: multi_worker_mirrored)
it trains on the workers named in TF_CONFIG (docs/scaling.md); otherwise on this machine.
TensorBoard logs go to --model-dir; the resolved config to --model-dir/params.yaml.
Exit status: 0 done (or stopped early), 1 training failed, 2 bad arguments or data,
130 interrupted, 143 stopped by SIGTERM (the latest checkpoint stays; the same command resumes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tqdm import tqdm  # noqa: E402

from busdet.cli import run_command, say  # noqa: E402
from busdet.datasets import check_training_data  # noqa: E402
from busdet.label_map import load_label_map  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, action="append", metavar="NAME=FOLDER",
                        help="a dataset: its name and folder, one sub-folder per class (repeatable)")
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="stage YAML overriding the registered experiment (repeatable)")
    parser.add_argument("--model-dir", required=True, type=Path, help="checkpoints and logs (resumed if present)")
    parser.add_argument("--init", default="none",
                        help="none (random); imagenet=PATH, a Keras MobileNetV2 (include_top=False) weights "
                             "file for the backbone, e.g. imagenet=../shared/weights/"
                             "mobilenet_v2_1.0_224_imagenet_no_top.h5 (never downloaded); or a checkpoint "
                             "file/folder of an earlier run (default: none)")
    parser.add_argument("--splits", type=Path, default=ROOT / "data",
                        help="folder of the NAME_split.csv files (filename,label,split); a missing one is "
                             "made with --seed (default: %(default)s)")
    parser.add_argument("--records", type=Path, default=ROOT / "work" / "records",
                        help="where TFRecords are written (default: %(default)s)")
    parser.add_argument("--label", type=Path, default=ROOT / "label_map.pbtxt", help="label map")
    parser.add_argument("--no-background-crops", dest="background_crops", action="store_false",
                        help="do not cut lesion-free crops beside training lesions as extra negatives")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    parser.add_argument("--params-override", default=None, help="extra YAML/JSON string of overrides")
    return parser


def build_strategy(runtime):
    """Model Garden's strategy for ``runtime.distribution_strategy: multi_worker_mirrored`` (workers
    from TF_CONFIG); else TensorFlow's default strategy, this machine's devices as always."""
    import tensorflow as tf

    if runtime.distribution_strategy != "multi_worker_mirrored":
        return tf.distribute.get_strategy()
    from official.common import distribute_utils

    return distribute_utils.get_distribution_strategy(distribution_strategy="multi_worker_mirrored",
                                                      all_reduce_alg=runtime.all_reduce_alg)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        classes = load_label_map(args.label)
        datasets = check_training_data(args.data, args.splits, list(classes.values()))
    except ValueError as error:  # a bad label map, --data value, dataset folder or split CSV
        say(f"error: {error}")
        return 2
    from busdet.training import run  # TensorFlow import is slow: after the arguments and data are checked

    try:
        counts = run.prepare_data(datasets, args.label, args.records, args.seed, args.background_crops,
                                  progress=lambda items: tqdm(items, desc="tfrecords", unit="image"))
        params = run.build_params(args.config, args.records, counts, args.init, args.params_override,
                                  args.model_dir, class_names=list(classes.values()))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.info("examples per split: %s", counts)
    with build_strategy(params.runtime).scope():  # run.train trains under the strategy in scope
        logs = run.train(params, args.model_dir)
    logging.info("final evaluation: %s", {k: float(v) for k, v in (logs or {}).items()
                                              if k.startswith(("AP", "AUC", "target"))})
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, get_args_parser()))
