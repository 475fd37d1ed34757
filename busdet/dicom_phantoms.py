"""Synthetic DICOM files made from the phantoms, for tests, demos and the cine benchmark.

    dataset = phantom_dicom(generate_phantom(0, "malignant").image, "YBR_FULL_422", JPEGBaseline8Bit)
    dataset.save_as("scan.dcm", enforce_file_format=True)
    frames, boxes = moving_lesion_frames(seed=3, count=12, step=4)   # a cine loop whose lesion moves
    write_dicom(path, phantom_dicom(frames, region=(40, 30, 520, 400), cm_per_pixel=0.01))

Every file is built with pydicom (JPEG with Pillow, RLE with pydicom's own encoder);
nothing here is a picture of anyone. ``phi=True`` fills the header with fake
patient, study and institution data, to check that none of it leaves the reader.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, RLELossless, UID

from busdet.boxes import Box, offset_box
from busdet.files import atomic_write
from busdet.phantoms import generate_phantom

US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
# Fake identifying data: each value is distinctive, so a search of any output finds it if it leaked.
FAKE_PHI = {
    "PatientName": "Phantomsdottir^Ingrid^PHI-NAME", "PatientID": "PHI-ID-5550123",
    "PatientBirthDate": "19610203", "PatientSex": "F", "PatientAge": "063Y", "OtherPatientIDs": "PHI-OTHER-77",
    "StudyDate": "20240229", "SeriesDate": "20240229", "AcquisitionDate": "20240229", "ContentDate": "20240229",
    "StudyTime": "134501", "AccessionNumber": "PHI-ACC-9081", "StudyID": "PHI-STUDY-42",
    "StudyDescription": "PHI-DESCRIPTION breast US left", "InstitutionName": "PHI Saint Nowhere Hospital",
    "InstitutionAddress": "PHI 1 Imaginary Road, Atlantis", "ReferringPhysicianName": "Doctor^PHI-REFERRER",
    "OperatorsName": "Sonographer^PHI-OPERATOR", "StationName": "PHI-STATION-3", "DeviceSerialNumber": "PHI-SN-000314",
}


def phantom_dicom(frames: Union[np.ndarray, Sequence[np.ndarray]], photometric: str = "MONOCHROME2",
                  transfer_syntax: str = ExplicitVRLittleEndian, region: Optional[Tuple[int, int, int, int]] = None,
                  cm_per_pixel: Optional[float] = None, phi: bool = False) -> Dataset:
    """An ultrasound DICOM data set holding RGB ``uint8 [H, W, 3]`` frame(s).

    Args:
      frames: one frame ``[H, W, 3]`` or several (a cine loop: ``NumberOfFrames`` is set).
      photometric: MONOCHROME1/2 (from the red channel), RGB, YBR_FULL, YBR_FULL_422 or PALETTE COLOR.
      transfer_syntax: uncompressed (explicit VR little endian), ``JPEGBaseline8Bit`` (Pillow's
        encoder; MONOCHROME2 or YBR_FULL_422), ``JPEGExtended12Bit`` (the same 8-bit stream,
        which the extended process includes) or ``RLELossless`` (pydicom's encoder).
      region: pixel corners ``(xmin, ymin, xmax, ymax)`` (max exclusive) of a 2-D ultrasound region.
      cm_per_pixel: with ``region``, its ``PhysicalDeltaX/Y`` in cm (units 3).
      phi: fill the header with :data:`FAKE_PHI`.
    """
    stack = np.asarray(frames)
    stack = stack[np.newaxis] if stack.ndim == 3 else stack
    native = ExplicitVRLittleEndian if transfer_syntax == RLELossless else transfer_syntax  # compressed below
    dataset = _base_dataset(stack.shape[0], stack.shape[1], stack.shape[2], native)
    dataset.PhotometricInterpretation = photometric
    if phi:
        for keyword, value in FAKE_PHI.items():
            setattr(dataset, keyword, value)
        dataset.add_new(0x00091010, "LO", "PHI-PRIVATE-TAG")
    if region is not None:
        dataset.SequenceOfUltrasoundRegions = [_region_item(region, cm_per_pixel)]
    if transfer_syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        _set_jpeg_pixels(dataset, stack, photometric)
    else:
        _set_native_pixels(dataset, stack, photometric)
        if transfer_syntax == RLELossless:
            dataset.compress(RLELossless, encoding_plugin="pydicom")
    return dataset


def _base_dataset(count: int, rows: int, columns: int, transfer_syntax: str) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    sop_class = US_MULTIFRAME_STORAGE if count > 1 else US_STORAGE
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = sop_class
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    # Every device export carries its study and series: a PACS files the results by them.
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    dataset.Modality = "US"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    if count > 1:
        dataset.NumberOfFrames = count
        dataset.FrameIncrementPointer = 0x00181063
        dataset.FrameTime = 33.3
    return dataset


def _region_item(region: Tuple[int, int, int, int], cm_per_pixel: Optional[float]) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = region[0], region[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = region[2] - 1, region[3] - 1  # inclusive
    if cm_per_pixel is not None:
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX = item.PhysicalDeltaY = cm_per_pixel
    return item


def _samples(stack: np.ndarray, photometric: str) -> np.ndarray:
    """The stored samples of RGB frames in ``photometric``: ``[F, H, W]`` or ``[F, H, W, 3]``."""
    gray = stack[..., 0]
    if photometric == "MONOCHROME2" or photometric == "PALETTE COLOR":
        return gray
    if photometric == "MONOCHROME1":
        return 255 - gray
    if photometric == "RGB":
        return stack
    return convert_color_space(stack, "RGB", "YBR_FULL")


def _set_native_pixels(dataset: Dataset, stack: np.ndarray, photometric: str) -> None:
    samples = _samples(stack, photometric)
    colour = samples.ndim == 4
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    if photometric == "PALETTE COLOR":  # an identity palette: index i shows gray i (16-bit entries)
        entries = (np.arange(256, dtype=np.uint16) * 257).tobytes()
        for colour_name in ("Red", "Green", "Blue"):
            setattr(dataset, f"{colour_name}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(dataset, f"{colour_name}PaletteColorLookupTableData", entries)
    if photometric == "YBR_FULL_422":  # two pixels share Cb and Cr: Y0 Y1 Cb Cr
        y, cb, cr = (samples[..., i].astype(np.float64) for i in range(3))
        pairs = [y[..., 0::2], y[..., 1::2], (cb[..., 0::2] + cb[..., 1::2]) / 2, (cr[..., 0::2] + cr[..., 1::2]) / 2]
        dataset.PixelData = np.round(np.stack(pairs, axis=-1)).astype(np.uint8).tobytes()
    else:
        dataset.PixelData = np.ascontiguousarray(samples).tobytes()
    dataset["PixelData"].VR = "OB" if colour or photometric != "MONOCHROME2" else "OW"


def _set_jpeg_pixels(dataset: Dataset, stack: np.ndarray, photometric: str) -> None:
    """One JPEG baseline fragment per frame, by Pillow (4:2:2 colour for YBR_FULL_422)."""
    colour = photometric != "MONOCHROME2"
    fragments = []
    for frame in stack:
        buffer = io.BytesIO()
        image = Image.fromarray(frame) if colour else Image.fromarray(frame[..., 0], "L")
        image.save(buffer, format="JPEG", quality=95, subsampling=1 if colour else 0)
        fragments.append(buffer.getvalue())
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.PixelData = encapsulate(fragments)
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True


def report_dicom(phi: bool = False) -> Dataset:
    """A structured report: a DICOM file without pixel data."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = COMPREHENSIVE_SR_STORAGE
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.Modality = "SR"
    if phi:
        for keyword, value in FAKE_PHI.items():
            setattr(dataset, keyword, value)
    return dataset


def moving_lesion_frames(seed: int = 3, count: int = 12, step: int = 4, width: int = 320,
                         height: int = 240) -> Tuple[np.ndarray, List[Box]]:
    """A cine loop of one malignant phantom whose lesion moves ``step`` px right per frame.

    Returns:
      RGB ``uint8 [count, H, W, 3]`` and the lesion's true box in each frame.
    """
    phantom = generate_phantom(seed, "malignant", width=width, height=height, lesions=1)
    frames = np.stack([np.roll(phantom.image, index * step, axis=1) for index in range(count)])
    return frames, [offset_box(phantom.boxes[0], index * step, 0) for index in range(count)]


def write_dicom(path: Union[str, Path], dataset: Dataset) -> None:
    """Writes ``dataset`` as a DICOM file (preamble, ``DICM``, file meta) atomically."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with atomic_write(path, "wb") as stream:
        stream.write(buffer.getvalue())
