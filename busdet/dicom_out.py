"""Results back into a PACS: a TID 1500 Measurement Report and an annotated Secondary Capture per DICOM input.

    source = read_source(path)                              # the identifiers the two objects must carry
    report, capture = build_dicom_results(result, scan, source, detector.info)
    write_dicom_results(result, scan, source, detector.info, Path("dicom_out/study/IM0001"))
                                                            # -> IM0001.sr.dcm, IM0001.sc.dcm

Both objects are built with highdicom. The report (Comprehensive SR, TID 1500)
holds one measurement group (TID 1410) per box the tables hold: the lesion as a
closed polyline on the source image (its SOP Instance UID, and the frame of a
loop), its appearance (benign or malignant, SCT "Classification"), the model's
score, width and height in mm when the file is calibrated, and the algorithm's
name and model version; a "Qualitative Evaluations" container says what the
image-level finding is and that this is research software, not a diagnosis. The
Secondary Capture is the key frame drawn as the PNG is, in its own series of the
source's study.

Unlike every other output, these two carry the source's patient and study
identifiers, or no PACS could file them. Only the Type 1 and 2 attributes of the
two modules DICOM requires (Patient, General Study) are read from the source,
with the UIDs the report refers to: nothing else of the header is read, so
nothing else can be copied. Log lines and error messages never quote any of them.
"""

from __future__ import annotations

import datetime
import io
import logging
from pathlib import Path
from typing import BinaryIO, List, Mapping, Optional, Sequence, Tuple, Union

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import busdet
from busdet.boxes import Box, box_to_pixel_xywh
from busdet.drawing import draw_boxes
from busdet.files import atomic_write, writing
from busdet.images import Scan
from busdet.results import ImageResult, result_finding_line

log = logging.getLogger(__name__)
# highdicom's INFO lines quote the source's SOP Instance UID ("copy Patient-related attributes
# from dataset ..."): no line of ours may carry an identifier, so only its errors get through.
logging.getLogger("highdicom").setLevel(logging.ERROR)

# The Patient and General Study modules' Type 1 and 2 attributes: what a PACS needs to file an object.
PATIENT_TAGS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"]
STUDY_TAGS = ["StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"]
# What the report refers to, and the character set the names above are decoded with.
REFERENCE_TAGS = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"]
SOURCE_TAGS = PATIENT_TAGS + STUDY_TAGS + REFERENCE_TAGS

ALGORITHM_NAME = "busdet RetinaNet-MobileNetV2 lesion detector"
MANUFACTURER = "busdet (open-source research software)"
RESEARCH_STATEMENT = ("Research software, not a medical device: these boxes are not a diagnosis and do not "
                      "replace a radiologist's reading.")
SR_SERIES = (9901, "busdet findings (research, not a diagnosis)")
SC_SERIES = (9902, "busdet annotated (research, not a diagnosis)")
SR_SUFFIX, SC_SUFFIX = ".sr.dcm", ".sc.dcm"
# What the two files are called in a message (busdet.files.WriteError).
RESULT_NAMES = ("DICOM report", "DICOM capture")
UTF8 = "ISO_IR 192"  # any name the source holds can be written back

APPEARANCE_NAME = codes.SCT.Classification
APPEARANCES = {"benign": codes.SCT.Benign, "malignant": codes.SCT.Malignant}
SCORE_NAME = hd.sr.CodedConcept("111012", "DCM", "Certainty of Finding")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
WIDTH_NAME, HEIGHT_NAME = codes.SCT.Width, codes.DCM.Height


class DicomOutError(ValueError):
    """A DICOM input whose results cannot be put into DICOM (the message names no identifier)."""


def read_source(source: Union[str, Path, bytes, BinaryIO]) -> Dataset:
    """The attributes of :data:`SOURCE_TAGS` of a DICOM file (a path, bytes or a stream), nothing else.

    Raises:
      DicomOutError: not readable, or without the UIDs a report must refer to.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        dataset = pydicom.dcmread(stream, specific_tags=SOURCE_TAGS)
    except Exception as error:  # noqa: BLE001 - the pixels were read already; a header this broken is rare
        raise DicomOutError(f"cannot read the DICOM header again ({type(error).__name__})") from None
    missing = [tag for tag in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID") if not dataset.get(tag)]
    if missing:
        raise DicomOutError(f"the file has no {', '.join(missing)}: a PACS could not file results for it")
    for keyword in PATIENT_TAGS + STUDY_TAGS[1:]:  # Type 2: present, and empty where unknown
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    return dataset


def model_version(info: Mapping) -> str:
    """The model's version for the report, from ``model_info.json``: its checkpoint and the
    SavedModel's digest where recorded (at most 64 characters, DICOM's LO)."""
    parts = [str(info[key]) for key in ("model_version", "checkpoint") if info.get(key)][:1]
    digest = (info.get("onnx") or {}).get("saved_model_sha256")
    if digest:
        parts.append(f"sha256:{digest[:12]}")
    return (" ".join(parts) or "unrecorded")[:64]


def held_boxes(result: ImageResult) -> List[Tuple[Optional[int], Box]]:
    """``(frame or None, box)`` for every row ``predictions.csv`` holds, in its order."""
    return [(frame, box) for frame, boxes in result.shown_frames
            for box in sorted(boxes, key=lambda b: -(b.score or 0.0))]


def box_polyline(box: Box) -> np.ndarray:
    """The box as ``predictions.csv`` gives it, as a closed polyline ``[5, 2]`` of (column, row).

    DICOM's image coordinates put (0, 0) at the top-left corner of the first pixel and
    (Columns, Rows) at the bottom-right of the last: the project's pixel corners.
    """
    x, y, width, height = box_to_pixel_xywh(box)
    corners = [(x, y), (x + width, y), (x + width, y + height), (x, y + height), (x, y)]
    return np.array(corners, dtype=np.float64)


def _uid(*parts) -> str:
    """A UID derived from ``parts``: the same input, model and findings give the same objects,
    so a result sent twice replaces itself in the PACS instead of doubling."""
    return generate_uid(entropy_srcs=["busdet", *map(str, parts)])


def _findings_key(result: ImageResult) -> str:
    """What the objects show, as text: the threshold and every box held (frame, pixels, label, score)."""
    boxes = [(frame, box_to_pixel_xywh(box), box.label, round(float(box.score), 4))
             for frame, box in held_boxes(result)]
    return f"{result.score_threshold} {result.key_frame} {boxes}"


def _measurement_group(number: int, frame: Optional[int], box: Box, result: ImageResult, source: Dataset,
                       algorithm: hd.sr.AlgorithmIdentification):
    """TID 1410 for one box: region, appearance, score and (calibrated) width and height in mm."""
    image = hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID,
                                       referenced_frame_numbers=None if frame is None else [frame])
    region = hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, box_polyline(box), image)
    measurements = [hd.sr.Measurement(SCORE_NAME, round(float(box.score), 4), NO_UNITS)]
    size = result.size_mm(box)
    if size is not None:
        measurements += [hd.sr.Measurement(name, value, codes.UCUM.Millimeter)
                         for name, value in zip((WIDTH_NAME, HEIGHT_NAME), size)]
    appearance = APPEARANCES.get(box.label)
    evaluations = [] if appearance is None else [hd.sr.QualitativeEvaluation(APPEARANCE_NAME, appearance)]
    where = f"frame {frame} " if frame is not None else ""
    tracking = hd.sr.TrackingIdentifier(uid=_uid(source.SOPInstanceUID, "box", number, result.score_threshold),
                                        identifier=f"{where}{box.label}-appearing lesion {number}")
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm, finding_sites=[hd.sr.FindingSite(codes.SCT.Breast)],
        measurements=measurements, qualitative_evaluations=evaluations or None)


def _no_lesion_group(result: ImageResult, source: Dataset, algorithm: hd.sr.AlgorithmIdentification):
    """TID 1501 for an image without a box at the threshold: "Lesion: Absent" on the (key) frame."""
    frame = result.key_frame
    image = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID,
                                                 referenced_frame_numbers=None if frame is None else [frame])
    tracking = hd.sr.TrackingIdentifier(uid=_uid(source.SOPInstanceUID, "none", result.score_threshold),
                                        identifier="no lesion above the threshold")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=codes.SCT.Lesion, algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Breast)], source_images=[image],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Lesion, codes.SCT.Absent)])


def _statements(lines: Sequence[str]) -> hd.sr.ContainerContentItem:
    """TID 1500's "Qualitative Evaluations" container, holding ``lines`` as TEXT comments."""
    container = hd.sr.ContainerContentItem(hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [hd.sr.TextContentItem(codes.DCM.Comment, line,
                                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
                                 for line in lines]
    return container


def build_report(result: ImageResult, source: Dataset, info: Mapping) -> hd.sr.ComprehensiveSR:
    """The Measurement Report (TID 1500) of ``result``, which was read from ``source``."""
    version = model_version(info)
    algorithm = hd.sr.AlgorithmIdentification(ALGORITHM_NAME, version,
                                              parameters=[f"score_threshold={result.score_threshold:g}"])
    groups = [_measurement_group(number, frame, box, result, source, algorithm)
              for number, (frame, box) in enumerate(held_boxes(result), start=1)]
    groups = groups or [_no_lesion_group(result, source, algorithm)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=_uid("device", version), name="busdet",
                                                       manufacturer_name=MANUFACTURER, model_name=version)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(context, codes.SCT.UltrasonographyOfBreast, imaging_measurements=groups,
                                     title=codes.DCM.ImagingMeasurementReport)
    report[0].ContentSequence.append(_statements([result_finding_line(result), RESEARCH_STATEMENT]))
    series_number, description = SR_SERIES
    document = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=_uid(source.StudyInstanceUID, "sr", version),
        series_number=series_number, sop_instance_uid=_uid(source.SOPInstanceUID, "sr", version,
                                                           _findings_key(result)),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, series_description=description,
        **_made_here())
    return document


def _made_here() -> dict:
    """What both objects say of their making: software, character set, and the series' date and time
    (now: a viewer lists a series under its date)."""
    now = datetime.datetime.now()
    return {"software_versions": f"busdet {busdet.__version__}", "specific_character_set": UTF8,
            "series_date": now.date(), "series_time": now.time()}


def annotated_key_frame(result: ImageResult, scan: Scan) -> np.ndarray:
    """The key frame (the one image) with its shown boxes, drawn exactly as the PNG: RGB ``uint8 [H, W, 3]``."""
    return draw_boxes(scan.frame(result.key_frame), result.shown_boxes)


def build_capture(result: ImageResult, scan: Scan, source: Dataset, info: Mapping) -> hd.sc.SCImage:
    """The annotated key frame as a Secondary Capture in a new series of ``source``'s study."""
    version = model_version(info)
    series_number, description = SC_SERIES
    capture = hd.sc.SCImage(
        pixel_array=annotated_key_frame(result, scan), photometric_interpretation="RGB", bits_allocated=8,
        # PATIENT wants an orientation; an ultrasound frame has none, so it is left empty below (Type 2).
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        study_instance_uid=source.StudyInstanceUID, series_instance_uid=_uid(source.StudyInstanceUID, "sc", version),
        series_number=series_number, instance_number=1, manufacturer=MANUFACTURER,
        sop_instance_uid=_uid(source.SOPInstanceUID, "sc", version, _findings_key(result)),
        transfer_syntax_uid=ExplicitVRLittleEndian, series_description=description,
        **_made_here(),
        **{name: _value(source, keyword) for name, keyword in _SC_IDENTIFIERS})
    capture.PatientOrientation = capture.Laterality = None  # unknown: empty (Type 2 and 2C)
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = RESEARCH_STATEMENT
    capture.DerivationDescription = f"{ALGORITHM_NAME} {version}: boxes drawn on frame " \
                                    f"{result.key_frame or 1} of the source image"
    capture.SourceImageSequence = [_image_reference(source, result.key_frame)]
    return capture


# highdicom's SCImage arguments and the source attributes they take.
_SC_IDENTIFIERS = [("patient_id", "PatientID"), ("patient_name", "PatientName"),
                   ("patient_birth_date", "PatientBirthDate"), ("patient_sex", "PatientSex"),
                   ("accession_number", "AccessionNumber"), ("study_id", "StudyID"), ("study_date", "StudyDate"),
                   ("study_time", "StudyTime"), ("referring_physician_name", "ReferringPhysicianName")]


def _value(source: Dataset, keyword: str):
    """The source's value, or None where it is absent or empty (the object then gets it empty)."""
    value = source.get(keyword)
    return value if value not in (None, "") else None


def _image_reference(source: Dataset, frame: Optional[int]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def build_dicom_results(result: ImageResult, scan: Scan, source: Dataset, info: Mapping):
    """``(report, capture)`` of one analysed DICOM file.

    Raises:
      DicomOutError: highdicom refused to build one (the reason, without any identifier).
    """
    # pydicom's warnings about odd values (a name too long for its VR) quote the values: a
    # source's identifiers are copied as they are, without a word about them on any terminal.
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        return build_report(result, source, info), build_capture(result, scan, source, info)
    except (ValueError, TypeError) as error:
        raise DicomOutError(f"cannot build the DICOM results ({type(error).__name__})") from None


def dicom_bytes(dataset: Dataset) -> bytes:
    """A data set as a DICOM Part 10 file (preamble, file meta)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_result_paths(stem: Path) -> Tuple[Path, Path]:
    """``(report, capture)`` file paths: ``stem`` with ``.sr.dcm`` and ``.sc.dcm`` added."""
    return stem.with_name(stem.name + SR_SUFFIX), stem.with_name(stem.name + SC_SUFFIX)


def write_dicom_results(result: ImageResult, scan: Scan, source: Dataset, info: Mapping, stem: Path,
                        overwrite: bool = True) -> Tuple[Path, Path]:
    """Writes the report and the capture atomically beside each other; returns their paths.

    Raises:
      DicomOutError: the two objects cannot be built (nothing is written).
      busdet.files.WriteError: one of them cannot be written; it names which (:data:`RESULT_NAMES`) and why.
    """
    objects = build_dicom_results(result, scan, source, info)
    paths = dicom_result_paths(stem)
    for what, dataset, path in zip(RESULT_NAMES, objects, paths):
        with writing(what, path), atomic_write(path, "wb", overwrite=overwrite) as stream:
            stream.write(dicom_bytes(dataset))
    return paths
