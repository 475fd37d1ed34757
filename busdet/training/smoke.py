"""Train-export-reload in minutes on generated phantoms (the CI smoke test and test fixture).

    model_dir = train_smoke_model(work_dir)   # -> work_dir/saved_model

Exercises exactly the production path (``prepare_data`` -> ``build_params`` ->
``train`` -> ``export_saved_model``) with ``configs/smoke.yaml``.
"""

from __future__ import annotations

from pathlib import Path

from busdet.datasets import DatasetSpec
from busdet.label_map import load_label_map
from busdet.phantoms import write_phantom_dataset
from busdet.training import run
from busdet.training.export import export_saved_model

ROOT = Path(__file__).resolve().parents[2]
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"


def train_smoke_model(work_dir: Path, per_class: int = 6, seed: int = 0,
                      label_map_path: Path = ROOT / "label_map.pbtxt", init: str = "none") -> Path:
    """Writes phantoms, trains a few steps, exports; returns the SavedModel folder.

    ``init`` is ``tools/train.py``'s ``--init`` (the tests pass ``imagenet=`` a random weights file).
    """
    # Two "centres" as in the shipped model's training: the second without normal images, like BUS-BRA.
    datasets = [DatasetSpec("centre_a", work_dir / "centre_a", work_dir / "centre_a_split.csv"),
                DatasetSpec("centre_b", work_dir / "centre_b", work_dir / "centre_b_split.csv")]
    write_phantom_dataset(datasets[0].path, per_class, seed=seed)
    write_phantom_dataset(datasets[1].path, {"benign": per_class, "malignant": per_class}, seed=seed + 1)
    records = work_dir / "records"
    counts = run.prepare_data(datasets, label_map_path, records, seed)
    params = run.build_params([SMOKE_CONFIG], records, counts, init=init, model_dir=work_dir / "run")
    run.train(params, work_dir / "run")
    return export_saved_model(params, str(work_dir / "run"), work_dir / "saved_model",
                              load_label_map(label_map_path), score_threshold=0.05)


def write_random_mobilenet_weights(path: Path) -> Path:
    """A Keras MobileNetV2 (include_top=False) weights file of random values, for ``--init imagenet=``:
    the tests take the path real ImageNet weights take without needing them."""
    import tf_keras

    tf_keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None).save_weights(
        str(path))
    return path
