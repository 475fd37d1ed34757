"""Any input file the tools read -> a :class:`busdet.images.Scan`: images (PNG, JPEG, ...) and DICOM.

    is_input_file(path)            # an image extension, .dcm/.dicom, or the DICM preamble
    scan = read_scan(path)         # Scan(frames [F, H, W, 3] uint8, region, mm_per_pixel)
    scan = decode_scan(data, name) # the same from an upload's bytes

``predict.py`` (through :mod:`busdet.batch`) and the page read every file here, so
they accept the same files and read the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from busdet.dicom import DICOM_EXTENSIONS, decode_dicom, has_dicom_preamble, is_dicom_file, read_dicom
from busdet import images
from busdet.images import Scan, as_scan, is_image_file


def is_input_file(path: Union[str, Path]) -> bool:
    """True for a file the tools read: an image extension, or DICOM (by name or preamble)."""
    return is_image_file(path) or is_dicom_file(path)


def read_scan(path: Union[str, Path]) -> Scan:
    """Reads an image or DICOM file (DICOM unless the name has an image extension).

    Raises:
      ImageReadError: see :func:`busdet.images.read_image` and :func:`busdet.dicom.read_dicom`.
    """
    return as_scan(images.read_image(path)) if is_image_file(path) else read_dicom(path)


def decode_scan(data: bytes, name: str = "<upload>") -> Scan:
    """Decodes an upload: DICOM when it has the preamble or a DICOM name, else an image."""
    if has_dicom_preamble(data) or Path(name).suffix.lower() in DICOM_EXTENSIONS:
        return decode_dicom(data, name)
    return as_scan(images.decode_image(data, name))
