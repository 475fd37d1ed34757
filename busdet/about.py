"""What the page's About box says about the loaded model, read from its ``model_info.json``.

    model_markdown(detector.info)           # the network and what its backbone started from
    training_data_markdown(detector.info)   # the datasets it learned from, each cited
    recorded_test_metrics(detector.info)       # metric x dataset (or one column for older models)

The text comes from what export and measurement recorded (``backbone_init``, ``flip_tta``,
``trained_on``, ``test_metrics``), so the page can never describe another model than the one it runs.
"""

from __future__ import annotations

from typing import Mapping, Optional

import pandas as pd

MODEL_MARKDOWN = ("**Model.** RetinaNet with a MobileNetV2 backbone (TensorFlow Model Garden), trained in this "
                  "project {start} on the public datasets below.")
FLIP_TTA_MARKDOWN = (" Each image is read twice, as it is and mirrored left to right, and one non-maximum "
                     "suppression keeps the best boxes of both readings (horizontal-flip test-time augmentation, "
                     "about twice the network's time).")
# How the model card names the ImageNet weights file in ../shared/weights (see its README).
IMAGENET_WEIGHTS_NAME = "ImageNet MobileNetV2 weights (TF-slim raw checkpoint values, Sandler et al., CVPR 2018)"
LIMITS_MARKDOWN = """**Limits.** Trained on images from the few centres and scanners listed above: other machines,
presets and populations may do worse, unmeasured. A score is the model's confidence, not a probability of
cancer. An image that does not look like the breast ultrasound it was trained on (a photograph, a
document, a colour Doppler or elastography frame, a far-off scanner) gets a warning instead of a finding,
its boxes still drawn and not to be trusted; the check misses some such images and is measured in the
model card. A clinician must read every result; it is a research tool, not a medical device, and does not replace a
radiologist."""
# The model card's headline numbers, in its order.
HEADLINE_METRICS = ("AP50_lesion", "mAP50", "AP50_benign", "AP50_malignant", "AUC_malignant_image",
                    "lesion_recall", "lesion_precision", "normal_with_box_rate", "images")


def model_markdown(info: Mapping) -> str:
    """The model paragraph, saying what its backbone started from (``backbone_init``) and whether the
    graph reads each image mirrored too (``flip_tta``)."""
    start = info.get("backbone_init") or {}
    if start.get("weights") == "imagenet":
        text = (f"with its backbone started from {IMAGENET_WEIGHTS_NAME}: file `{start.get('file')}`, "
                f"sha256 `{start.get('sha256')}`,")
    elif start.get("weights") == "none":
        text = "from random initialisation"
    else:
        text = "(its starting weights were not recorded with this model: see its model card)"
    return MODEL_MARKDOWN.format(start=text) + (FLIP_TTA_MARKDOWN if info.get("flip_tta") else "")


def training_data_markdown(info: Mapping) -> str:
    """A Markdown paragraph naming and citing the training datasets (``trained_on``)."""
    trained_on = info.get("trained_on") or []
    if not trained_on:
        return "**Training data.** Not recorded with this model: see its model card."
    items = "\n".join(f"- {entry.get('citation') or entry.get('name')}" for entry in trained_on)
    return f"**Training data** (cite these when you use the model):\n{items}"


def recorded_test_metrics(info: Mapping) -> Optional[pd.DataFrame]:
    """The recorded test metrics as text, one row per metric, one column per dataset (and pooled).

    Older models recorded one flat dict: it becomes a single ``test`` column. None when
    nothing was recorded.
    """
    metrics = info.get("test_metrics")
    if not metrics:
        return None
    if not all(isinstance(value, Mapping) for value in metrics.values()):
        metrics = {"test": metrics}
    columns = {name: {key: _format(values[key]) for key in HEADLINE_METRICS if key in values}
               for name, values in metrics.items()}
    return pd.DataFrame(columns).fillna("n/a").rename_axis("metric")


def _format(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
