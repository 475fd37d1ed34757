"""DICOM files from ultrasound machines and PACS: pixels as RGB, the imaging region and its mm per pixel.

    scan = read_dicom("loop.dcm")          # Scan: frames [F, H, W, 3] uint8, region, mm_per_pixel
    scan = decode_dicom(data, "upload")     # the same from bytes (the page's uploads)
    is_dicom_file(path)                     # .dcm / .dicom, or the "DICM" preamble of an extension-less file

Only the elements that describe the pixels and the ultrasound geometry are read
(pydicom's ``specific_tags``): patient, study and institution fields are never
parsed, so they cannot reach a table, a log line, an image or the page. Decoding,
colour conversion and palette lookup are pydicom's own (with the pylibjpeg
plugins for JPEG and RLE); only the transfer syntaxes ultrasound devices export
are accepted, any other one is named in the error.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_voi_lut
from pydicom.uid import UID

from busdet.files import open_regular
from busdet.images import MAX_IMAGE_PIXELS, ImageReadError, Scan, open_input

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom")
PREAMBLE_LENGTH = 128
MAGIC = b"DICM"

# Uncompressed, deflated, RLE lossless, JPEG baseline (8 bit) and extended (12 bit).
READ_TRANSFER_SYNTAXES = {
    pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian, pydicom.uid.RLELossless, pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEGExtended12Bit,
}
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422")
READ_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") + COLOUR_INTERPRETATIONS

# A cine loop is decoded whole, as RGB: bound it (frames x pixels) before decoding.
MAX_LOOP_PIXELS = 400_000_000

# The only elements read: the image pixel module, presentation (VOI, palette) and
# the ultrasound regions. Nothing that names a person, a date or a place.
PIXEL_TAGS = [
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData", "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "RescaleSlope", "RescaleIntercept", "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", "SequenceOfUltrasoundRegions",
]
REGION_2D = 1          # RegionSpatialFormat: a 2-D image (B-mode)
UNITS_CM = 3           # PhysicalUnitsX/YDirection: centimetres

# The file this thread is reading, so that pydicom's own warnings name it (see _PydicomNamesTheFile).
_reading = threading.local()


class _PydicomNamesTheFile(logging.Filter):
    """Prefixes pydicom's log lines with the file being read in this thread: never an unnamed warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(_reading, "name", None)
        if name is not None:
            record.msg, record.args = "%s: pydicom: %s", (name, record.getMessage().strip().splitlines()[0][:200])
        return True


def _route_pydicom_warnings() -> None:
    """pydicom logs each warning and also issues it through ``warnings``: keep only the logged,
    named line (set up once per process)."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _PydicomNamesTheFile) for f in logger.filters):
        logger.addFilter(_PydicomNamesTheFile())
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


def is_dicom_file(path: Union[str, Path]) -> bool:
    """True for a ``.dcm``/``.dicom`` name, or any file starting with the 128-byte preamble and ``DICM``."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open_regular(path) as stream:  # a named pipe must not block the listing
            return has_dicom_preamble(stream.read(PREAMBLE_LENGTH + len(MAGIC)))
    except OSError:
        return False


def has_dicom_preamble(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) carries the DICOM Part 10 marker."""
    return head[PREAMBLE_LENGTH:PREAMBLE_LENGTH + len(MAGIC)] == MAGIC


def read_dicom(path: Union[str, Path]) -> Scan:
    """Reads a DICOM file as a :class:`busdet.images.Scan` (RGB frames, region, mm per pixel).

    Raises:
      ImageReadError: not DICOM, truncated, no pixel data, a transfer syntax or
        photometric interpretation not read, too many pixels.
    """
    with open_input(path) as stream:
        return _read(stream, str(path))


def decode_dicom(data: bytes, name: str = "<upload>") -> Scan:
    """Decodes DICOM bytes (an upload) like :func:`read_dicom`."""
    if not data:
        raise ImageReadError(name, "file is empty")
    return _read(io.BytesIO(data), name)


def _read(stream: BinaryIO, name: str) -> Scan:
    # pydicom's warnings about malformed values quote the values (UIDs of the file meta
    # included): the project's only use of pydicom does not want them on any terminal.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    _route_pydicom_warnings()
    _reading.name = name
    try:
        return _read_named(stream, name)
    finally:
        _reading.name = None


def _read_named(stream: BinaryIO, name: str) -> Scan:
    try:
        dataset = pydicom.dcmread(stream, specific_tags=PIXEL_TAGS)
        _check_readable(dataset, name)
    except ImageReadError:
        raise
    except InvalidDicomError:
        raise ImageReadError(name, "not a DICOM file (no DICM preamble)") from None
    except Exception as error:  # noqa: BLE001 - a cut or damaged file fails in many ways (EOFError, struct.error)
        raise ImageReadError(name, f"cannot read DICOM ({_short(error)})") from None
    try:
        frames = _rgb_frames(dataset)
    except Exception as error:  # noqa: BLE001 - truncated pixel data, a broken JPEG stream, ...
        raise ImageReadError(name, f"cannot decode the DICOM pixel data ({_short(error)})") from None
    try:
        region, mm_per_pixel = imaging_region(dataset, frames.shape[2], frames.shape[1])
    except Exception as error:  # noqa: BLE001 - a damaged region must not cost the image
        log.warning("%s: ultrasound region unreadable (%s); the whole frame is used, without sizes in mm",
                    name, _short(error))
        region, mm_per_pixel = None, None
    return Scan(np.ascontiguousarray(frames), region, mm_per_pixel)


def _short(error: Exception) -> str:
    """The error's type and first line, cut to a readable length."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_readable(dataset: pydicom.Dataset, name: str) -> None:
    """Refuses what cannot be turned into frames, with the reason, before decoding."""
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    if "PixelData" not in dataset:
        raise ImageReadError(name, "DICOM without pixel data (a report or other non-image object, or a file "
                                   "cut short); nothing to read")
    if syntax not in READ_TRANSFER_SYNTAXES:
        raise ImageReadError(name, f"DICOM transfer syntax {syntax.name} ({syntax}) is not read; "
                                   "export as uncompressed, RLE lossless or JPEG baseline/extended")
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if interpretation not in READ_INTERPRETATIONS:
        raise ImageReadError(name, f"DICOM photometric interpretation {interpretation or '(none)'} is not read "
                                   f"(read: {', '.join(READ_INTERPRETATIONS)})")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    frame_count = frame_count_of(dataset)
    if rows * columns == 0:
        raise ImageReadError(name, "DICOM image has no pixels (Rows or Columns is 0)")
    if rows * columns > MAX_IMAGE_PIXELS or rows * columns * frame_count > MAX_LOOP_PIXELS:
        raise ImageReadError(name, f"DICOM holds {frame_count} frame(s) of {columns}x{rows} pixels, more than "
                                   f"{MAX_IMAGE_PIXELS:,} per frame or {MAX_LOOP_PIXELS:,} in all")
    problem = find_geometry_problem(dataset, syntax.is_encapsulated)
    if problem is not None:
        raise ImageReadError(name, problem)


def native_pixel_bytes(dataset: pydicom.Dataset) -> int:
    """The bytes of uncompressed pixel data that Rows, Columns, NumberOfFrames, SamplesPerPixel
    and BitsAllocated declare (YBR_FULL_422 stores two samples per pixel; 1-bit data is packed)."""
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if str(dataset.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2
    bits = int(dataset.get("BitsAllocated", 8) or 8)
    values = int(dataset.Rows) * int(dataset.Columns) * frame_count_of(dataset) * samples
    return -(-values * bits // 8)


def find_geometry_problem(dataset: pydicom.Dataset, encapsulated: bool) -> Optional[str]:
    """Why the pixel data cannot hold what the header declares (both numbers), or None.

    Uncompressed: the data must be exactly the declared size (plus the one pad byte to
    an even length). Compressed: every frame needs at least one fragment.
    """
    data = dataset.PixelData
    geometry = f"{frame_count_of(dataset)} frame(s) of {int(dataset.Columns)}x{int(dataset.Rows)} pixels"
    if not encapsulated:
        expected = native_pixel_bytes(dataset)
        if len(data) not in (expected, expected + expected % 2):
            return (f"DICOM pixel data holds {len(data):,} bytes but its header declares {geometry}, "
                    f"{expected:,} bytes; header and pixels disagree (a file cut short, or a wrong header), not read")
        return None
    fragments = count_fragments(data)
    if fragments < frame_count_of(dataset):
        return (f"DICOM compressed pixel data holds {fragments} fragment(s) but its header declares {geometry}, "
                "at least one fragment each; header and pixels disagree, not read")
    return None


def count_fragments(data: bytes) -> int:
    """Fragments of encapsulated pixel data after its basic offset table (0 when it cannot be parsed)."""
    if len(data) < 8:
        return 0
    offset = 8 + struct.unpack("<I", data[4:8])[0]
    try:
        return pydicom.encaps.parse_fragments(data[offset:])[0]
    except (ValueError, struct.error):
        return 0


def frame_count_of(dataset: pydicom.Dataset) -> int:
    """Number of frames (1 when ``NumberOfFrames`` is absent or empty)."""
    return max(1, int(dataset.get("NumberOfFrames", 1) or 1))


def _rgb_frames(dataset: pydicom.Dataset) -> np.ndarray:
    """The pixel data as RGB ``uint8 [F, H, W, 3]``, as a DICOM viewer would show them.

    pydicom decodes (and turns YBR into RGB, its default); palettes go through
    pydicom's ``apply_color_lut``, grayscale through ``apply_voi_lut`` and is
    inverted for MONOCHROME1.
    """
    interpretation = str(dataset.PhotometricInterpretation)
    pixels = dataset.pixel_array
    if frame_count_of(dataset) == 1:
        pixels = pixels[np.newaxis]
    if interpretation == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        return _to_uint8(rgb, 8 * rgb.itemsize)
    if interpretation in COLOUR_INTERPRETATIONS:
        # pydicom's pixel_array turns YBR_FULL and YBR_FULL_422 into RGB (its convert_color_space).
        return _to_uint8(pixels, int(dataset.BitsStored))
    bits, signed = int(dataset.BitsStored), int(dataset.get("PixelRepresentation", 0) or 0) == 1
    if ("WindowCenter" in dataset or "VOILUTSequence" in dataset) and not signed:
        # The window maps the stored values onto the full unsigned range of BitsStored.
        gray = _to_uint8(np.asarray(apply_voi_lut(pixels, dataset), dtype=np.float64), bits)
    elif bits > 8 or signed:
        gray = _stretch(pixels)
    else:
        gray = pixels.astype(np.uint8)
    if interpretation == "MONOCHROME1":
        gray = 255 - gray
    return np.repeat(gray[..., np.newaxis], 3, axis=-1)


def _to_uint8(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` bits (unsigned) -> uint8."""
    if bits <= 8:
        return np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return np.clip(np.round(pixels.astype(np.float64) * (255.0 / (2 ** bits - 1))), 0, 255).astype(np.uint8)


def _stretch(gray: np.ndarray) -> np.ndarray:
    """Grayscale of any range -> uint8 between the loop's own minimum and maximum (like 16-bit PNGs)."""
    gray = gray.astype(np.float64)
    low, high = float(gray.min()), float(gray.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((gray - low) * scale, 0, 255).astype(np.uint8)


def imaging_region(dataset: pydicom.Dataset, width: int, height: int) -> Tuple[
        Optional[Tuple[int, int, int, int]], Optional[Tuple[float, float]]]:
    """The 2-D ultrasound region(s) and their millimetres per pixel.

    Returns:
      ``(region, mm_per_pixel)``: ``region`` the pixel corners ``(xmin, ymin, xmax, ymax)``
      (max exclusive) around every 2-D region (``RegionSpatialFormat`` 1), clipped to
      the frame, or None (use the whole frame); ``mm_per_pixel`` ``(x, y)`` when
      every such region is in cm (``PhysicalUnits*Direction`` 3) with the same
      ``PhysicalDeltaX/Y`` above 0, else None.
    """
    items = [item for item in dataset.get("SequenceOfUltrasoundRegions", [])
             if item.get("RegionSpatialFormat") == REGION_2D]
    corners = [(int(i.get("RegionLocationMinX0", 0)), int(i.get("RegionLocationMinY0", 0)),
                int(i.get("RegionLocationMaxX1", -1)) + 1, int(i.get("RegionLocationMaxY1", -1)) + 1) for i in items]
    corners = [(max(0, x0), max(0, y0), min(width, x1), min(height, y1)) for x0, y0, x1, y1 in corners]
    corners = [c for c in corners if c[2] > c[0] and c[3] > c[1]]
    if not corners:
        return None, None
    region = (min(c[0] for c in corners), min(c[1] for c in corners),
              max(c[2] for c in corners), max(c[3] for c in corners))
    spacings = {_mm_per_pixel(item) for item in items}
    return region, spacings.pop() if len(spacings) == 1 else None


def _mm_per_pixel(region) -> Optional[Tuple[float, float]]:
    """``(x, y)`` millimetres per pixel of one ultrasound region, or None without a cm calibration."""
    if region.get("PhysicalUnitsXDirection") != UNITS_CM or region.get("PhysicalUnitsYDirection") != UNITS_CM:
        return None
    delta_x, delta_y = (abs(float(region.get(name) or 0.0)) for name in ("PhysicalDeltaX", "PhysicalDeltaY"))
    return (delta_x * 10.0, delta_y * 10.0) if delta_x > 0 and delta_y > 0 else None
