"""Take-away files for analysed images, built in memory for the page's download buttons.

    annotated_png(result, image)            # PNG bytes of the image with its shown boxes drawn
    predictions_json([result])              # one record per image, boxes as integer x, y, width, height
    annotated_mp4(result, scan)             # a cine loop: MP4 of the frames run, each with its boxes
    results_zip(results, scans)             # tables, JSON, annotated PNGs (and MP4s) of several files, one archive
    dicom_downloads(result, scan, data, info)   # a DICOM upload's report (SR) and annotated capture (SC)

The CSV tables come from :mod:`busdet.tables`, byte for byte what ``predict.py``
writes. Nothing here touches the disk: the bytes go straight to the browser, so an
uploaded image never lands in a file on the server.
"""

from __future__ import annotations

import io
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from busdet.boxes import Box, box_to_pixel_xywh
from busdet.dicom_out import build_dicom_results, dicom_bytes, read_source
from busdet.drawing import draw_boxes
from busdet.files import json_text, safe_stem
from busdet.images import Scan, as_scan, encode_mp4, encode_png
from busdet.results import ImageResult, image_finding, untrusted_caption
from busdet.tables import images_csv, predictions_csv

# A fixed timestamp inside the ZIP: the archive then depends on the results only
# and does not record when someone looked at the images.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

def annotated_image(result: ImageResult, image: Union[np.ndarray, Scan]) -> np.ndarray:
    """The image (RGB ``uint8 [H, W, 3]``, or a Scan's key frame) with the result's shown boxes
    drawn, a new array."""
    if isinstance(image, Scan):
        image = image.frame(result.key_frame)
    return draw_boxes(image, result.shown_boxes, caption=untrusted_caption(result.frame_check(result.key_frame)))


def annotated_frames(result: ImageResult, scan: Scan) -> List[np.ndarray]:
    """Every frame of a loop that the model ran on, with that frame's shown boxes drawn."""
    return [draw_boxes(scan.frame(f.number), result.boxes_in_frame(f.number), caption=untrusted_caption(f.check))
            for f in result.frames]


def annotated_mp4(result: ImageResult, scan: Scan) -> bytes:
    """MP4 bytes of :func:`annotated_frames` (:func:`busdet.images.encode_mp4`)."""
    return encode_mp4(annotated_frames(result, scan))


def annotated_png(result: ImageResult, image: Union[np.ndarray, Scan]) -> bytes:
    """PNG bytes of :func:`annotated_image` (lossless, full resolution)."""
    return encode_png(annotated_image(result, image))


def box_record(box: Box, frame: Optional[int] = None, size_mm: Optional[Sequence[float]] = None) -> Dict:
    """A box as JSON-ready integers ``x, y, width, height`` (the CSV's geometry), with its frame
    (1-based, loops) and size in mm (calibrated files), None where there is none."""
    xmin, ymin, width, height = box_to_pixel_xywh(box)
    score = None if box.score is None else round(float(box.score), 4)
    width_mm, height_mm = size_mm or (None, None)
    return {"xmin": xmin, "ymin": ymin, "width": width, "height": height, "label": box.label, "score": score,
            "frame": frame, "width_mm": width_mm, "height_mm": height_mm}


def image_record(result: ImageResult) -> Dict:
    """Everything known about one file as a JSON-ready dict (the shown boxes of every frame the tables hold)."""
    sentence, score = image_finding(result.shown_boxes) if result.ok else ("", None)
    boxes = [box_record(b, frame, result.size_mm(b)) for frame, shown in result.shown_frames for b in shown]
    return {"filename": result.filename, "width": result.width, "height": result.height,
            "frames": result.frame_count, "key_frame": result.key_frame,
            "score_threshold": result.score_threshold, "finding": sentence,
            "finding_score": None if score is None else round(float(score), 4),
            "inference_seconds": None if result.seconds is None else round(result.seconds, 3),
            "error": result.error, "boxes": boxes}


def predictions_json(results: Sequence[ImageResult]) -> bytes:
    """A JSON list of :func:`image_record` (UTF-8, indented)."""
    return json_text([image_record(r) for r in results]).encode("utf-8")


def image_downloads(result: ImageResult, image: Union[np.ndarray, Scan]) -> List[Tuple[str, str, str,
                                                                                    Callable[[], bytes]]]:
    """The take-away files of one file: ``(label, file name, MIME type, build)``; a loop adds its MP4.

    ``build`` makes the bytes only when called, so that a page can offer the
    files without encoding them on every redraw.
    """
    stem, scan = safe_stem(result.filename), as_scan(image)
    files = [("Annotated PNG", f"{stem}_annotated.png", "image/png", lambda: annotated_png(result, scan)),
             ("Boxes CSV", f"{stem}_predictions.csv", "text/csv", lambda: predictions_csv([result])),
             ("Boxes JSON", f"{stem}_predictions.json", "application/json", lambda: predictions_json([result]))]
    if result.frames:
        files.append(("Annotated MP4", f"{stem}_annotated.mp4", "video/mp4", lambda: annotated_mp4(result, scan)))
    return files


def dicom_downloads(result: ImageResult, scan: Scan, data: bytes, info: dict) -> List[Tuple[str, str, str,
                                                                                Callable[[], bytes]]]:
    """A DICOM upload's Structured Report and annotated Secondary Capture, as :func:`image_downloads` lists
    files. Unlike every other download, they carry the upload's patient and study identifiers.

    Both are built here, by ``predict.py --dicom-out``'s function, so that an upload they cannot be
    made for is refused before they are offered (a button would only fail when pressed, and the
    error, which may quote an identifier, would go to the server's log); only the bytes wait.

    Raises:
      busdet.dicom_out.DicomOutError: the upload lacks what a PACS needs to file them, or holds an
        identifier DICOM cannot carry (the message quotes none).
    """
    report, capture = build_dicom_results(result, scan, read_source(data), info)
    stem = safe_stem(result.filename)
    return [("DICOM report (SR)", f"{stem}.sr.dcm", "application/dicom", lambda: dicom_bytes(report)),
            ("DICOM annotated image (SC)", f"{stem}.sc.dcm", "application/dicom", lambda: dicom_bytes(capture))]


def _unique_names(stems: Sequence[str], suffix: str) -> List[str]:
    """``stem + suffix`` for each, with ``_2``, ``_3``... where two uploads share a name."""
    seen: Dict[str, int] = {}
    names = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}{suffix}" if seen[stem] == 1 else f"{stem}_{seen[stem]}{suffix}")
    return names


def results_zip(results: Sequence[ImageResult], images: Sequence[Union[np.ndarray, Scan, None]]) -> bytes:
    """One ZIP with ``predictions.csv``, ``images.csv``, ``predictions.json`` and
    ``annotated/<name>_annotated.png`` for every readable file (and ``<name>_annotated.mp4`` for a loop).

    ``images[i]`` holds the pixels of ``results[i]`` (None where there are none).
    """
    drawn = [(r, as_scan(image)) for r, image in zip(results, images) if r.ok and image is not None]
    stems = [name[:-len("_annotated")] for name in _unique_names([safe_stem(r.filename) for r, _ in drawn],
                                                                 "_annotated")]
    members = [("predictions.csv", predictions_csv(results)), ("images.csv", images_csv(results)),
               ("predictions.json", predictions_json(results))]
    for stem, (r, scan) in zip(stems, drawn):
        members.append((f"annotated/{stem}_annotated.png", annotated_png(r, scan)))
        if r.frames:
            members.append((f"annotated/{stem}_annotated.mp4", annotated_mp4(r, scan)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
