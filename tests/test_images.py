"""Image reading gives the pixels a viewer shows; bad files fail with the file's name."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busdet.images import ImageReadError, decode_image, encode_png, is_image_file, read_image, write_image


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def saved(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_rgb_is_read_as_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    result = read_image(saved(tmp_path, "a.png", png_bytes(Image.fromarray(pixels))))
    assert result.dtype == np.uint8 and result.flags.c_contiguous
    assert np.array_equal(result, pixels)


def test_grayscale_is_replicated_in_three_channels(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    result = read_image(saved(tmp_path, "g.png", png_bytes(Image.fromarray(gray))))
    assert result.shape == (5, 7, 3)
    assert all(np.array_equal(result[..., c], gray) for c in range(3))


def test_16_bit_is_stretched_by_its_maximum():
    twelve_bit = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)  # a 12-bit export in 16-bit PNG
    result = decode_image(png_bytes(Image.fromarray(twelve_bit)), "deep.png")
    assert result[..., 0].tolist() == [[0, 63], [127, 255]]


def test_all_black_16_bit_stays_black():
    assert decode_image(png_bytes(Image.fromarray(np.zeros((3, 3), np.uint16)))).max() == 0


def test_rgba_transparency_is_shown_on_black():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = [200, 100, 50, 255]  # opaque
    rgba[0, 1] = [200, 100, 50, 0]  # fully transparent
    rgba[0, 2] = [200, 100, 50, 128]  # half
    result = decode_image(png_bytes(Image.fromarray(rgba)))
    assert result[0, 0].tolist() == [200, 100, 50]
    assert result[0, 1].tolist() == [0, 0, 0]
    assert np.allclose(result[0, 2], [100, 50, 25], atol=1)


def test_palette_gives_its_colours():
    indexed = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    result = decode_image(png_bytes(indexed))
    assert result[0, 1].tolist() == [255, 0, 0] and result[1, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("orientation,turns", [(3, 2), (6, -1), (8, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_gives_the_pixels_as_displayed(orientation, turns, fmt):
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[:20, :40] = 255  # a white block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    result = decode_image(buffer.getvalue(), f"rotated.{fmt.lower()}")
    shown = np.rot90(stored, k=turns)
    assert result.shape == shown.shape
    assert np.abs(result.astype(int) - shown).mean() < 3


def test_truncated_file_names_the_file(tmp_path):
    data = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path = saved(tmp_path, "cut.png", data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"{path}: cannot decode"):
        read_image(path)


def test_empty_file_names_the_file(tmp_path):
    path = saved(tmp_path, "empty.png", b"")
    with pytest.raises(ImageReadError, match=f"{path}: file is empty"):
        read_image(path)
    with pytest.raises(ImageReadError, match="upload.png: file is empty"):
        decode_image(b"", "upload.png")


def test_non_image_names_the_file(tmp_path):
    path = saved(tmp_path, "notes.png", b"these are not pixels")
    with pytest.raises(ImageReadError, match=f"{path}: not a recognised image format"):
        read_image(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="absent.png: file not found"):
        read_image(tmp_path / "absent.png")


def claims_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims another size (IHDR rewritten with a valid CRC)."""
    ihdr = data[12:29]  # chunk type + 13 bytes of data
    patched = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    return data[:12] + patched + struct.pack(">I", zlib.crc32(patched)) + data[33:]


# Over the limit; over Pillow's own (89 MP), where Pillow warns; over twice Pillow's, where it raises.
@pytest.mark.parametrize("width,height", [(8_000, 7_000), (10_000, 10_000), (20_000, 10_000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, width, height):
    path = saved(tmp_path, "bomb.png", claims_size(png_bytes(Image.new("L", (1, 1))), width, height))
    with pytest.raises(ImageReadError, match=f"{path}: image is larger than"):
        read_image(path)


def test_pillow_limit_is_restored_after_reading(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    decode_image(png_bytes(Image.new("L", (2, 2))))
    with pytest.raises(ImageReadError):
        decode_image(b"junk")
    assert Image.MAX_IMAGE_PIXELS == before


def test_the_limit_holds_whatever_pillows_own_setting_becomes_meanwhile(monkeypatch):
    """Pillow's limit is one setting for the whole process, and the page's sessions and predict.py's
    readers decode in threads: another thread restoring the value it found (or a library turning the
    guard off) while this one opens a bomb must not let the bomb through."""
    real_open = Image.open

    def open_with_the_guard_off_meanwhile(*args, **kwargs):
        Image.MAX_IMAGE_PIXELS = None
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back afterwards
    monkeypatch.setattr(Image, "open", open_with_the_guard_off_meanwhile)
    bomb = claims_size(png_bytes(Image.new("L", (1, 1))), 8_000, 7_000)
    with pytest.raises(ImageReadError, match="^bomb.png: image is larger than 50,000,000 pixels$"):
        decode_image(bomb, "bomb.png")


def saved_as(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


FRAMES = [Image.new("RGB", (8, 6), (value, value, value)) for value in (40, 90, 140)]


@pytest.mark.parametrize("fmt, data", [
    ("GIF", saved_as(FRAMES[0], "GIF", save_all=True, append_images=FRAMES[1:])),
    ("WEBP", saved_as(FRAMES[0], "WEBP", save_all=True, append_images=FRAMES[1:])),
    ("GIF", saved_as(FRAMES[0], "GIF")),
    ("EPS", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 6\nshowpage\n"),  # Pillow would run Ghostscript
], ids=["animated GIF", "animated WebP", "GIF", "PostScript"])
def test_other_formats_are_refused_by_name_whatever_the_file_is_called(fmt, data):
    with pytest.raises(ImageReadError, match=f"^scan.png: is in {fmt} format; only PNG, JPEG, BMP and TIFF "
                                             "images are read: save it as PNG$"):
        decode_image(data, "scan.png")


def test_a_read_format_under_another_ones_name_is_still_read():
    assert decode_image(saved_as(FRAMES[1], "JPEG", quality=100), "scan.png")[0, 0].tolist() == [90, 90, 90]


def tiff_whose_second_page_has_no_width() -> bytes:
    """Two pages; the second one's ImageWidth entry renumbered to a private tag (Pillow: TypeError)."""
    data = bytearray(saved_as(Image.new("L", (4, 4)), "TIFF", save_all=True, append_images=[Image.new("L", (4, 4))]))
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for entry in range(second + 2, second + 2 + 12 * struct.unpack_from("<H", data, second)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 256:
            struct.pack_into("<H", data, entry, 0xC000)
    return bytes(data)


def test_a_damaged_file_that_trips_pillow_outside_its_io_errors_is_named_not_raised():
    """Pillow raises TypeError, KeyError or struct.error for some damaged headers: one error, not a crash
    of the page or of predict.py's whole run."""
    with pytest.raises(ImageReadError, match=r"^pages.tif: cannot decode image \(Missing dimensions\)$"):
        decode_image(tiff_whose_second_page_has_no_width(), "pages.tif")


def test_is_image_file_ignores_case():
    assert is_image_file("A.PNG") and is_image_file("b.JpEg") and is_image_file(Path("c.tif"))
    assert not is_image_file("notes.txt") and not is_image_file("png")


def test_encode_png_round_trips():
    pixels = np.random.default_rng(2).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(pixels)), pixels)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_write_image_round_trips_losslessly(tmp_path, suffix):
    pixels = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    write_image(tmp_path / f"x{suffix}", pixels)
    assert np.array_equal(read_image(tmp_path / f"x{suffix}"), pixels)


def test_write_image_refuses_to_overwrite_when_asked(tmp_path):
    path = tmp_path / "x.jpg"
    write_image(path, np.zeros((4, 4, 3), np.uint8))
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_image(path, np.full((4, 4, 3), 255, np.uint8), overwrite=False)
    assert path.read_bytes() == before
