"""Does an image look like the breast ultrasound the model was trained on? (the in-distribution check)

    stats = load_ood_stats(model_dir, info)          # None for a model fitted without them
    check = check_image(image, features, stats)      # ImageCheck(score, reasons)
    check.in_distribution, check.warning

Every image and frame the model reads goes through :func:`check_image`, in
:func:`busdet.results.analyse_image`, so the page, ``predict.py`` and the Ray engine agree.
An image is flagged when any of three tests says so:

- **learned**: the Mahalanobis distance of the detector's own pooled backbone features
  (the exported ``image_features`` output, :mod:`busdet.training.export`) to the nearest
  training dataset's mean, under one covariance shared by the datasets (Lee et al., "A
  simple unified framework for detecting out-of-distribution samples and adversarial
  attacks", NeurIPS 2018, with datasets in place of classes), is above a threshold
  chosen on the validation splits (:mod:`busdet.ood_fit`, ``tools/fit_ood.py``);
- **colour**: more than :data:`MAX_COLOUR_FRACTION` of the pixels are clearly coloured
  (a Doppler or elastography overlay, a photograph): B-mode is grey;
- **flat**: more than :data:`MAX_FLAT_FRACTION` of the pixels lie in flat, non-black
  areas (a page of text, a screenshot, a slide): ultrasound is speckle on a black ground.

The statistics live beside the SavedModel (:data:`OOD_FILE`); ``model_info.json``
(``"ood"``) records them with the digest of the SavedModel they were fitted on, and
:func:`load_ood_stats` refuses a file that is missing, altered or stale. The int8 file
(``model_int8.onnx``) gives other features (the distance moved by up to 9.7 on model v2):
its own statistics, fitted on its features by ``tools/quantize_model.py --write``, are
:data:`INT8_OOD_FILE`, recorded in ``"onnx_int8"``'s ``"ood"`` with the int8 file's digest
(:func:`load_int8_ood_stats`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

OOD_FILE = "ood_stats.npz"
# The same, fitted on the int8 file's features (tools/quantize_model.py --write).
INT8_OOD_FILE = "ood_stats_int8.npz"
WARNING = "does not look like the breast ultrasound the model was trained on"
# A pixel is coloured when its channels differ by more than this (JPEG noise on grey stays well below).
COLOUR_SPREAD = 40
# Both cut-offs are far above any training, validation or test image of BUSI and BUS-BRA
# (the largest there are recorded in model_info.json's "ood" by tools/fit_ood.py).
MAX_COLOUR_FRACTION = 0.02
# Flat: a 3x3 neighbourhood whose values span at most FLAT_SPREAD grey levels, brighter than FLAT_DARKEST.
FLAT_SPREAD = 2
FLAT_DARKEST = 40
MAX_FLAT_FRACTION = 0.3
# Each test's reason, filled with str.format (the in-browser page fills the same texts: busdet.web).
LEARNED_REASON = "feature distance {:.1f} from the training images, above {:.1f}"
COLOUR_REASON = ("{:.0%} of it in colour, as a Doppler or elastography overlay or a photograph; "
                 "the model reads greyscale B-mode")
FLAT_REASON = "{:.0%} of it flat, as a page of text, a screenshot or a drawing"


class OodStatsError(RuntimeError):
    """The in-distribution statistics are missing, altered or fitted on another model."""


@dataclass(frozen=True)
class OodStats:
    """The learned test: one mean per training dataset, a shared precision, a threshold.

    ``means`` float64 ``[K, D]``; ``precision`` float64 ``[D, D]`` (inverse of the shared covariance).
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    datasets: Tuple[str, ...]


@dataclass(frozen=True)
class ImageCheck:
    """The outcome for one image or frame: its learned score (None without statistics or
    features) and the reasons it is flagged (none: in distribution)."""

    score: Optional[float] = None
    reasons: Tuple[str, ...] = ()

    @property
    def in_distribution(self) -> bool:
        return not self.reasons

    @property
    def warning(self) -> str:
        """``""`` for an image in distribution, else the sentence the user sees."""
        return "" if self.in_distribution else WARNING_TEMPLATE.format("; ".join(self.reasons))


WARNING_TEMPLATE = "this image " + WARNING + " ({}): its boxes are not to be trusted"


def reasons_from_warning(warning: str) -> Tuple[str, ...]:
    """The reasons an :attr:`ImageCheck.warning` gives, back from its text.

    Raises:
      ValueError: not a warning this module writes.
    """
    prefix, suffix = WARNING_TEMPLATE.split("{}")
    if not (warning.startswith(prefix) and warning.endswith(suffix) and len(warning) > len(prefix + suffix)):
        raise ValueError(f"warning {warning!r} is not one this tool writes")
    return tuple(warning[len(prefix):-len(suffix)].split("; "))


def mahalanobis_distances(features: np.ndarray, stats: OodStats) -> np.ndarray:
    """Distance of each feature row ``[N, D]`` to the nearest dataset mean: float64 ``[N]``."""
    features = np.atleast_2d(np.asarray(features, np.float64))
    nearest = np.full(len(features), np.inf)
    for mean in stats.means:
        centred = features - mean
        squared = np.einsum("nd,de,ne->n", centred, stats.precision, centred)
        nearest = np.minimum(nearest, np.sqrt(np.maximum(squared, 0.0)))
    return nearest


def colour_fraction(image: np.ndarray) -> float:
    """Fraction of the pixels of an RGB ``uint8 [H, W, 3]`` image whose channels differ by more
    than :data:`COLOUR_SPREAD`."""
    spread = image.max(axis=-1).astype(np.int16) - image.min(axis=-1)
    return float(np.mean(spread > COLOUR_SPREAD))


def flat_fraction(image: np.ndarray) -> float:
    """Fraction of the pixels of an RGB ``uint8 [H, W, 3]`` image lying in flat areas brighter than
    :data:`FLAT_DARKEST` (every channel's 3x3 neighbourhood within :data:`FLAT_SPREAD`)."""
    import cv2  # noqa: PLC0415 - the page and the CLI have it; keeps this module light to import

    kernel = np.ones((3, 3), np.uint8)
    spread = (cv2.dilate(image, kernel) - cv2.erode(image, kernel)).max(axis=-1)
    return float(np.mean((spread <= FLAT_SPREAD) & (image.max(axis=-1) > FLAT_DARKEST)))


def cheap_reasons(image: np.ndarray) -> Tuple[str, ...]:
    """The colour and flat-area tests' reasons to flag an RGB ``uint8 [H, W, 3]`` image."""
    reasons = []
    coloured = colour_fraction(image)
    if coloured > MAX_COLOUR_FRACTION:
        reasons.append(COLOUR_REASON.format(coloured))
    flat = flat_fraction(image)
    if flat > MAX_FLAT_FRACTION:
        reasons.append(FLAT_REASON.format(flat))
    return tuple(reasons)


def check_image(image: np.ndarray, features: Optional[np.ndarray], stats: Optional[OodStats]) -> ImageCheck:
    """All three tests on one RGB ``uint8 [H, W, 3]`` image, given the model's ``image_features``
    for it (``[D]`` or ``[1, D]``; None when the model has no such output)."""
    reasons = list(cheap_reasons(image))
    score = None
    if stats is not None and features is not None:
        score = float(mahalanobis_distances(features, stats)[0])
        if score > stats.threshold:
            reasons.insert(0, LEARNED_REASON.format(score, stats.threshold))
    return ImageCheck(score, tuple(reasons))


def stats_bytes(stats: OodStats) -> bytes:
    """The ``.npz`` bytes of :data:`OOD_FILE`."""
    buffer = io.BytesIO()
    np.savez(buffer, means=stats.means, precision=stats.precision, threshold=np.float64(stats.threshold),
             datasets=np.array(stats.datasets))
    return buffer.getvalue()


def read_stats(path: Path) -> OodStats:
    """An :data:`OOD_FILE` back (no pickles allowed)."""
    with np.load(path, allow_pickle=False) as data:
        return OodStats(data["means"], data["precision"], float(data["threshold"]),
                        tuple(str(name) for name in data["datasets"]))


def find_ood_problem(model_dir: Path, info: dict, saved_model_sha256: str) -> Optional[str]:
    """Why the statistics recorded in ``info["ood"]`` cannot be used with this SavedModel; None when they can."""
    return _find_stats_problem(Path(model_dir) / OOD_FILE, info.get("ood"), "saved_model_sha256",
                               saved_model_sha256, "SavedModel", "tools/fit_ood.py")


def find_int8_ood_problem(model_dir: Path, info: dict, int8_sha256: str) -> Optional[str]:
    """Why the statistics recorded in ``info["onnx_int8"]["ood"]`` cannot be used with the int8 file
    whose digest is ``int8_sha256``; None when they can."""
    return _find_stats_problem(Path(model_dir) / INT8_OOD_FILE, (info.get("onnx_int8") or {}).get("ood"),
                               "int8_sha256", int8_sha256, "int8 file", "tools/quantize_model.py")


def _find_stats_problem(path: Path, recorded, model_key: str, model_sha256: str, model: str,
                        tool: str) -> Optional[str]:
    from busdet.inference import compute_file_digest  # noqa: PLC0415 - inference imports this module

    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        return f"{path}: model_info.json's record of it is damaged"
    if not path.is_file():
        return f"{path}: missing (model_info.json records in-distribution statistics)"
    if recorded.get(model_key) != model_sha256:
        return f"{path}: stale, fitted on another {model} than the one beside it (digest differs)"
    if recorded["sha256"] != compute_file_digest(path):
        return f"{path}: not the file {tool} wrote (digest differs)"
    return None


def load_ood_stats(model_dir: Path, info: dict, saved_model_sha256: str) -> Optional[OodStats]:
    """The statistics beside the SavedModel, or None when its ``model_info.json`` records none.

    Raises:
      OodStatsError: recorded but missing, altered or fitted on another SavedModel (one line).
    """
    if "ood" not in info:
        return None
    problem = find_ood_problem(Path(model_dir), info, saved_model_sha256)
    if problem:
        raise OodStatsError(f"{problem}; fit them again: tools/fit_ood.py --model {model_dir} --data ...")
    return read_stats(Path(model_dir) / OOD_FILE)


def load_int8_ood_stats(model_dir: Path, info: dict, int8_sha256: str) -> Optional[OodStats]:
    """The statistics fitted on the int8 file's features, or None when ``model_info.json`` records none.

    Raises:
      OodStatsError: recorded but missing, altered or fitted on another int8 file (one line).
    """
    if "ood" not in (info.get("onnx_int8") or {}):
        return None
    problem = find_int8_ood_problem(Path(model_dir), info, int8_sha256)
    if problem:
        raise OodStatsError(f"{problem}; quantize again: tools/quantize_model.py --model {model_dir} --data ... "
                            "--write")
    return read_stats(Path(model_dir) / INT8_OOD_FILE)


def summarise_checks(checks: Sequence[Optional[ImageCheck]]) -> Optional[ImageCheck]:
    """One check for a loop's frames: the highest score, and the first flagged frame's reasons
    with how many frames were flagged. None when no frame was checked."""
    checks = [c for c in checks if c is not None]
    if not checks:
        return None
    scores = [c.score for c in checks if c.score is not None]
    flagged = [c for c in checks if not c.in_distribution]
    reasons = () if not flagged else (f"{len(flagged)} of {len(checks)} frames", *flagged[0].reasons)
    return ImageCheck(max(scores) if scores else None, reasons)
