"""busdet.dicom and busdet.scans: DICOM files made here with pydicom from the phantoms, read back as RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, RLELossless

from busdet.dicom import is_dicom_file, read_dicom
from busdet.dicom_phantoms import moving_lesion_frames, phantom_dicom, report_dicom, write_dicom
from busdet.images import ImageReadError, write_image
from busdet.phantoms import generate_phantom
from busdet.scans import decode_scan, is_input_file, read_scan


def tinted_phantom(width=200, height=150) -> np.ndarray:
    """A phantom with distinct red, green and blue, so a channel swap would show."""
    gray = generate_phantom(1, "benign", width=width, height=height).image.astype(np.float64)
    return np.round(gray * np.array([1.0, 0.8, 0.5])).astype(np.uint8)


def dicom_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("photometric, syntax, tolerance", [
    ("MONOCHROME2", ExplicitVRLittleEndian, 0),
    ("MONOCHROME1", ExplicitVRLittleEndian, 0),      # stored inverted: shown as MONOCHROME2
    ("PALETTE COLOR", ExplicitVRLittleEndian, 0),
    ("RGB", ExplicitVRLittleEndian, 0),
    ("YBR_FULL", ExplicitVRLittleEndian, 2),         # 8-bit YCbCr round trip
    ("YBR_FULL_422", ExplicitVRLittleEndian, 48),    # chroma shared by pixel pairs: off at sharp edges only
    ("YBR_FULL_422", JPEGBaseline8Bit, 48),          # lossy, and 4:2:2
    ("MONOCHROME2", JPEGBaseline8Bit, 16),
    ("YBR_FULL_422", JPEGExtended12Bit, 48),         # an 8-bit stream under the extended syntax
    ("RGB", RLELossless, 0),
    ("MONOCHROME2", RLELossless, 0),
])
def test_every_photometric_and_transfer_syntax_reads_as_the_rgb_shown(tmp_path, photometric, syntax, tolerance):
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    image = tinted_phantom() if colour else generate_phantom(1, "benign", width=200, height=150).image
    write_dicom(tmp_path / "scan.dcm", phantom_dicom(image, photometric, syntax))
    scan = read_scan(tmp_path / "scan.dcm")
    assert scan.frames.shape == (1, 150, 200, 3) and scan.frames.dtype == np.uint8
    assert not scan.multi_frame and scan.region is None and scan.mm_per_pixel is None
    difference = np.abs(scan.frame().astype(int) - image.astype(int))
    assert difference.max() <= tolerance and difference.mean() <= 2.0
    if colour:  # red stays red: the channel means keep their order
        assert list(np.argsort(scan.frame().reshape(-1, 3).mean(axis=0))) == [2, 1, 0]


def test_extension_less_dicom_is_found_by_its_preamble(tmp_path):
    write_dicom(tmp_path / "IM000001", phantom_dicom(generate_phantom(0, "normal", width=200, height=150).image))
    (tmp_path / "README").write_text("not an image")
    write_image(tmp_path / "scan.png", np.zeros((8, 8, 3), np.uint8))
    assert is_dicom_file(tmp_path / "IM000001") and is_input_file(tmp_path / "IM000001")
    assert not is_input_file(tmp_path / "README") and not is_dicom_file(tmp_path / "scan.png")
    assert read_scan(tmp_path / "IM000001").frames.shape == (1, 150, 200, 3)
    assert decode_scan((tmp_path / "IM000001").read_bytes(), "upload").frames.shape == (1, 150, 200, 3)


def test_cine_loop_keeps_every_frame_in_order():
    frames, boxes = moving_lesion_frames(count=12, step=4)
    scan = decode_scan(dicom_bytes(phantom_dicom(frames, "RGB")), "loop.dcm")
    assert scan.multi_frame and scan.frame_count == 12
    assert np.array_equal(scan.frames, frames)
    assert [b.xmin for b in boxes] == [boxes[0].xmin + 4 * i for i in range(12)]


def test_ultrasound_region_and_its_calibration_are_read():
    image = generate_phantom(2, "benign", width=320, height=240).image
    scan = decode_scan(dicom_bytes(phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01)), "x.dcm")
    assert scan.region == (40, 30, 300, 220)
    assert scan.mm_per_pixel == pytest.approx((0.1, 0.1))


def test_region_without_calibration_or_in_other_units_gives_no_mm():
    image = generate_phantom(2, "benign", width=320, height=240).image
    dataset = phantom_dicom(image, region=(40, 30, 300, 220))
    assert decode_scan(dicom_bytes(dataset), "x.dcm").mm_per_pixel is None
    dataset = phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01)
    dataset.SequenceOfUltrasoundRegions[0].PhysicalUnitsXDirection = 4  # seconds (an M-mode axis)
    scan = decode_scan(dicom_bytes(dataset), "x.dcm")
    assert scan.region == (40, 30, 300, 220) and scan.mm_per_pixel is None


def test_region_that_is_not_2d_is_ignored():
    image = generate_phantom(2, "benign", width=320, height=240).image
    dataset = phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01)
    dataset.SequenceOfUltrasoundRegions[0].RegionSpatialFormat = 3  # spectral (Doppler)
    scan = decode_scan(dicom_bytes(dataset), "x.dcm")
    assert scan.region is None and scan.mm_per_pixel is None


def test_truncated_file_is_one_reason(tmp_path):
    data = dicom_bytes(phantom_dicom(generate_phantom(0, "normal", width=200, height=150).image))
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError) as error:
        read_dicom(tmp_path / "cut.dcm")
    assert error.value.name == str(tmp_path / "cut.dcm")
    assert "DICOM" in error.value.reason and "\n" not in error.value.reason


def test_report_without_pixel_data_is_named_as_such():
    with pytest.raises(ImageReadError, match="DICOM without pixel data"):
        decode_scan(dicom_bytes(report_dicom()), "report.dcm")


def test_other_transfer_syntax_is_named():
    dataset = phantom_dicom(generate_phantom(0, "normal", width=200, height=150).image,
                            transfer_syntax=JPEGBaseline8Bit)
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.91"  # JPEG 2000
    with pytest.raises(ImageReadError) as error:
        decode_scan(dicom_bytes(dataset), "j2k.dcm")
    assert error.value.reason.startswith("DICOM transfer syntax JPEG 2000 Image Compression "
                                         "(1.2.840.10008.1.2.4.91) is not read")


@pytest.mark.parametrize("data, reason", [
    (b"", "file is empty"),
    (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x001.2.840", "DICOM without pixel data"),  # cut in the header
    (b"DICM", "not a DICOM file (no DICM preamble)"),
])
def test_damaged_dicom_bytes_are_one_reason(data, reason):
    with pytest.raises(ImageReadError) as error:
        decode_scan(data, "bad.dcm")
    assert error.value.reason.startswith(reason)


def test_reading_leaves_the_file_unchanged(tmp_path):
    write_dicom(tmp_path / "scan.dcm", phantom_dicom(tinted_phantom(), "YBR_FULL_422", JPEGBaseline8Bit, phi=True))
    before = (tmp_path / "scan.dcm").read_bytes()
    read_scan(tmp_path / "scan.dcm")
    assert (tmp_path / "scan.dcm").read_bytes() == before


@pytest.mark.parametrize("window", [None, (2048, 4096)])
def test_twelve_bit_grayscale_comes_out_as_the_eight_bit_image(window):
    """12 bits stored in 16: stretched to 8 bits, or mapped through the file's window."""
    image = generate_phantom(1, "benign", width=200, height=150).image
    dataset = phantom_dicom(image)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelData = (image[..., 0].astype(np.uint16) * 16).tobytes()
    dataset["PixelData"].VR = "OW"
    if window:
        dataset.WindowCenter, dataset.WindowWidth = window
    frame = decode_scan(dicom_bytes(dataset), "twelve.dcm").frame()
    expected = image.astype(float) * 16 * 255 / 4095 if window else \
        (image.astype(float) - image.min()) * 255 / (image.max() - image.min())
    assert np.abs(frame.astype(float) - expected).max() <= 2


def test_damaged_geometry_values_are_one_reason_or_a_warning(caplog):
    """A frame count that is not a number stops the file; a damaged region only costs the mm."""
    image = generate_phantom(2, "benign", width=320, height=240).image
    dataset = phantom_dicom(image, region=(40, 30, 300, 220), cm_per_pixel=0.01)
    region = dataset.SequenceOfUltrasoundRegions[0]
    del region.RegionLocationMinX0
    region.add_new(0x00186018, "LO", "left")  # RegionLocationMinX0 as text, not a number
    scan = decode_scan(dicom_bytes(dataset), "region.dcm")
    assert scan.region is None and scan.mm_per_pixel is None and scan.frames.shape == (1, 240, 320, 3)
    assert any(m.startswith("region.dcm: ultrasound region unreadable") for m in caplog.messages)
    dataset = phantom_dicom(image)
    dataset.add_new(0x00280008, "LO", "many")  # NumberOfFrames as text, not a number
    with pytest.raises(ImageReadError) as error:
        decode_scan(dicom_bytes(dataset), "frames.dcm")
    assert error.value.reason.startswith("cannot read DICOM (ValueError")


@pytest.mark.parametrize("change, reason", [
    (lambda d: setattr(d, "PixelData", d.PixelData + bytes(200 * 150)),
     "DICOM pixel data holds 60,000 bytes but its header declares 1 frame(s) of 200x150 pixels, 30,000 bytes"),
    (lambda d: setattr(d, "Rows", 100),
     "DICOM pixel data holds 30,000 bytes but its header declares 1 frame(s) of 200x100 pixels, 20,000 bytes"),
    (lambda d: setattr(d, "NumberOfFrames", 3),
     "DICOM pixel data holds 30,000 bytes but its header declares 3 frame(s) of 200x150 pixels, 90,000 bytes"),
], ids=["more data than Rows x Columns", "fewer rows than the data", "more frames than the data"])
def test_native_geometry_that_disagrees_with_the_pixel_data_is_one_line_before_decoding(change, reason, caplog):
    dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image)
    change(dataset)
    with pytest.raises(ImageReadError) as error:
        decode_scan(dicom_bytes(dataset), "scan.dcm")
    assert str(error.value).startswith(f"scan.dcm: {reason}; header and pixels disagree")
    assert not [m for m in caplog.messages if "scan.dcm" not in m]  # pydicom says nothing unnamed


def test_compressed_loop_with_more_frames_than_fragments_is_one_line():
    dataset = phantom_dicom(moving_lesion_frames(count=4)[0], "YBR_FULL_422", JPEGBaseline8Bit)
    dataset.NumberOfFrames = 9
    with pytest.raises(ImageReadError) as error:
        decode_scan(dicom_bytes(dataset), "loop.dcm")
    assert error.value.reason.startswith("DICOM compressed pixel data holds 4 fragment(s) but its header declares "
                                         "9 frame(s) of 320x240 pixels")


def test_odd_sized_pixel_data_with_its_pad_byte_still_reads():
    dataset = phantom_dicom(generate_phantom(1, "benign", width=201, height=151).image)  # 30,351 bytes + 1 pad
    assert decode_scan(dicom_bytes(dataset), "odd.dcm").frames.shape == (1, 151, 201, 3)


def test_pydicom_warnings_name_the_file(caplog):
    import logging

    from busdet import dicom

    dataset = phantom_dicom(generate_phantom(1, "benign", width=200, height=150).image)
    dicom._route_pydicom_warnings()
    dicom._reading.name = "named.dcm"
    try:
        logging.getLogger("pydicom").warning("something odd\nsecond line")
    finally:
        dicom._reading.name = None
    assert "named.dcm: pydicom: something odd" in caplog.messages
    assert decode_scan(dicom_bytes(dataset), "x.dcm").frame_count == 1
