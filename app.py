"""Breast ultrasound lesion finder: upload images, see benign/malignant boxes, take the results away.

    streamlit run app.py

Uses ``saved_model/``, ``label_map.pbtxt`` and demo PNGs in ``input/`` beside this file, or
``BUSDET_MODEL_DIR``, ``BUSDET_LABEL_MAP``, ``BUSDET_DEMO_DIR``. Images stay in memory only.
Takes images and DICOM files (single frames and cine loops, which get a frame slider).
``BUSDET_RUNTIME`` picks what runs the model: ``auto`` (default: ONNX Runtime when the
model's current ``model.onnx`` is there, else TensorFlow), ``onnx`` or ``tensorflow``.
"""

import hashlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from busdet import inference, scans
from busdet.about import LIMITS_MARKDOWN, model_markdown, recorded_test_metrics, training_data_markdown
from busdet.dicom import has_dicom_preamble
from busdet.dicom_out import DicomOutError
from busdet.downloads import dicom_downloads, image_downloads, results_zip
from busdet.drawing import draw_boxes
from busdet.files import is_regular_file, printable
from busdet.images import IMAGE_EXTENSIONS
from busdet.results import ImageResult, analyse_image, finding_line, result_finding_line, untrusted_caption
from busdet.tables import boxes_table, summary_table

HERE = Path(__file__).resolve().parent
MODEL_DIR = Path(os.environ.get("BUSDET_MODEL_DIR", HERE / "saved_model"))
LABEL_MAP = Path(os.environ.get("BUSDET_LABEL_MAP", HERE / "label_map.pbtxt"))
DEMO_DIR = Path(os.environ.get("BUSDET_DEMO_DIR", HERE / "input"))
RUNTIME = os.environ.get("BUSDET_RUNTIME", "auto")
NOTICE = ("Research tool, not a medical device: it does not diagnose and does not replace a radiologist. "
          "Images stay in this server's memory: never stored, never logged, no usage statistics sent.")


@st.cache_resource(show_spinner="Loading the detection model...")
def load_model(model_dir: str, label_map: str, runtime: str) -> inference.Detector:
    """One detector per process, shared by every session."""
    return inference.load_detector(model_dir, label_map, runtime)


@st.cache_data(max_entries=512, show_spinner="Detecting lesions...")
def analyse_upload(_detector, model_dir: str, content_sha256: str, name: str, _data: bytes) -> ImageResult:
    """The record of one upload with every box (predict.py's function), keyed by the file's content
    hash, so that the threshold slider re-filters cached boxes instead of rerunning the model."""
    return analyse_image(_detector, name, lambda: decode_upload(content_sha256, name, _data),
                         _detector.score_threshold)[0]


@st.cache_data(max_entries=32, show_spinner=False)
def decode_upload(content_sha256: str, name: str, _data: bytes):
    """The decoded pixels (a Scan), keyed by content hash: a slider move redraws without decoding
    again. Few entries: a decoded frame weighs far more than its file."""
    return scans.decode_scan(_data, name)


def inputs_ui():
    """Sidebar: uploaded files, or one demo image when nothing is uploaded -> [(name, bytes)]."""
    # No type filter: DICOM files often have no extension; each file is recognised by its content.
    uploads = st.sidebar.file_uploader("Ultrasound images or DICOM", accept_multiple_files=True,
                                       help=f"{', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}, or DICOM "
                                            "(.dcm or no extension; single frames and cine loops)")
    if uploads:
        return [(upload.name, upload.getvalue()) for upload in uploads]
    demos = sorted(path for path in DEMO_DIR.glob("*.png") if is_regular_file(path))  # a pipe would block
    if not demos:
        st.sidebar.caption("No demo images in input/: upload an image to start.")
        return []
    demo = st.sidebar.selectbox("Or a demo image", demos, format_func=lambda path: path.name)
    return [(demo.name, demo.read_bytes())]


def threshold_ui(default: float) -> float:
    return st.sidebar.slider("Confidence threshold", 0.0, 1.0, float(default), 0.01,
                             help=f"Boxes scoring below it are hidden. Default {default:.2f}: the model's "
                                  "operating point. Moving it does not rerun the model.")


def detect_ui(digests) -> bool:
    """The Detect button; True while the files it was pressed for are still the input."""
    if st.sidebar.button("Detect", type="primary", disabled=not digests):
        st.session_state["detected"] = digests
    return bool(digests) and st.session_state.get("detected") == digests


def analyse(detector, name: str, data: bytes, digest: str, score_threshold: float):
    """``(record shown at score_threshold, pixels or None)`` of one upload."""
    result = analyse_upload(detector, str(detector.model_dir), digest, name, data).at_threshold(score_threshold)
    return result, decode_upload(digest, name, data) if result.ok else None


def about_ui(info: dict) -> None:
    """The model, its training data with citations and its test metrics, all from model_info.json."""
    with st.expander("About this tool, its model and its limits"):
        st.markdown(model_markdown(info))
        st.markdown(training_data_markdown(info))
        st.markdown(LIMITS_MARKDOWN)
        metrics = recorded_test_metrics(info)
        st.caption("Test-split metrics (model card):" if metrics is not None else "Test metrics: see MODEL_CARD.md.")
        if metrics is not None:
            st.dataframe(metrics)


def frame_ui(result: ImageResult, key: str):
    """A cine loop's frame slider, starting on the most suspicious frame -> frame number (None: one image)."""
    if not result.frames:
        return None
    numbers = [f.number for f in result.frames]
    return st.select_slider("Frame", numbers, value=result.key_frame, key=f"frame-{key}-{result.key_frame}",
                            help=f"{result.frame_count} frames; it starts on the most suspicious one, "
                                 f"{result.key_frame}.")


def dicom_downloads_ui(result: ImageResult, scan, data: bytes, info: dict) -> list:
    """A DICOM upload's report and annotated image for a PACS (none for other files), and what they carry."""
    if not has_dicom_preamble(data):
        return []
    try:
        files = dicom_downloads(result, scan, data, info)
    except DicomOutError as error:
        st.caption(f"No DICOM report for this file: {error}.")
        return []
    st.caption("The DICOM report and annotated image carry this file's patient and study identifiers, so that "
               "a PACS can file them in its study; the other downloads carry none.")
    return files


def image_result_ui(result: ImageResult, scan, key: str, data: bytes, info: dict) -> None:
    """Finding, original beside annotated (a loop: the frame chosen), box table and the downloads of one file."""
    st.text(printable(result.filename))  # a line feed or a bidi override shown as such, not obeyed
    if result.warning:
        st.warning(result.warning[0].upper() + result.warning[1:] + ".")
    st.markdown(f"**{result_finding_line(result)}**")
    st.caption(f"{len(result.shown_boxes)} box(es) at threshold {result.score_threshold:.2f}; "
               f"inference {result.seconds:.2f} s")
    frame = frame_ui(result, key)
    boxes = result.shown_boxes if frame is None else result.boxes_in_frame(frame)
    if frame is not None:
        st.caption(f"Frame {frame} of {result.frame_count}: {finding_line(boxes, result.mm_per_pixel)}")
    image = scan.frame(frame)
    original, annotated = st.columns(2)
    original.image(image, caption="Original", output_format="PNG")
    annotated.image(draw_boxes(image, boxes, caption=untrusted_caption(result.frame_check(frame))),
                    caption="Detections", output_format="PNG")
    st.dataframe(boxes_table(result, frame), hide_index=True)
    downloads = image_downloads(result, scan) + dicom_downloads_ui(result, scan, data, info)
    for column, (label, file_name, mime, build) in zip(st.columns(len(downloads)), downloads):
        column.download_button(label, build, file_name, mime, key=f"{label}-{key}", on_click="ignore")


def batch_ui(results, pixels, uploads, info: dict) -> None:
    """Several images: a sortable summary first, one ZIP, then each image in an expander."""
    summary = summary_table(results)
    summary.index = pd.RangeIndex(1, len(summary) + 1, name="image")
    st.dataframe(summary)
    st.download_button("All results (ZIP)", lambda: results_zip(results, pixels), "busdet_results.zip",
                       "application/zip", key="zip", on_click="ignore")
    for number, (result, image, (_, data)) in enumerate(zip(results, pixels, uploads), start=1):
        if result.ok:
            with st.expander(f"Image {number}: {result_finding_line(result)}"):
                image_result_ui(result, image, str(number), data, info)


def main() -> None:
    st.set_page_config(page_title="Breast ultrasound lesion finder", layout="wide")
    st.title("Breast ultrasound lesion finder")
    st.caption(NOTICE)
    try:
        detector = load_model(str(MODEL_DIR), str(LABEL_MAP), RUNTIME)
    except inference.ModelLoadError as error:
        st.error(f"No usable model: expected a TensorFlow SavedModel (`saved_model.pb`, `variables/`) in `{MODEL_DIR}` "
                 f"and its label map `{LABEL_MAP}` (or set `BUSDET_MODEL_DIR`, `BUSDET_LABEL_MAP`; "
                 f"`BUSDET_RUNTIME` is `{RUNTIME}`).")
        st.text(str(error))
        st.stop()
    about_ui(detector.info)
    inputs = inputs_ui()
    score_threshold = threshold_ui(detector.score_threshold)
    st.sidebar.caption(f"Model runtime: {inference.describe_runtime(detector)}")
    digests = tuple(hashlib.sha256(data).hexdigest() for _, data in inputs)
    if not detect_ui(digests):
        st.info("Choose images in the sidebar, then press Detect.")
        return
    results, pixels = zip(*(analyse(detector, name, data, digest, score_threshold)
                            for (name, data), digest in zip(inputs, digests)))
    for failed in (result for result in results if not result.ok):
        st.error("This file could not be read and was skipped; the other files still run:")
        st.text(printable(failed.message))
    if len(results) > 1:
        batch_ui(results, pixels, inputs, detector.info)
    elif results[0].ok:
        image_result_ui(results[0], pixels[0], "single", inputs[0][1], detector.info)


if __name__ == "__main__":
    main()
