"""Image reading that gives the pixels a user sees, and image writing.

Every reader returns an RGB ``uint8`` array ``[H, W, 3]``: grayscale, 16-bit,
RGBA, palette and EXIF-rotated files are all normalised here, once, so that the
page, the CLI, training and evaluation agree on the pixels boxes refer to.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from busdet.files import atomic_write, open_regular, unreadable_reason

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Larger images are refused from their header, before decoding (decompression bombs).
# 50 megapixels is far above any ultrasound frame (BUSI is ~0.3 MP).
MAX_IMAGE_PIXELS = 50_000_000
TOO_LARGE = f"image is larger than {MAX_IMAGE_PIXELS:,} pixels"

# The only formats Pillow is asked to read (those of IMAGE_EXTENSIONS), whatever a file's name
# says: another format's decoder never sees an input (GIF and WebP animations, PostScript, which
# Pillow hands to Ghostscript, and Pillow's forty-odd others). JPEG includes multi-picture JPEG
# (MPO), whose first picture is the photograph.
READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
READ_FORMATS_TEXT = "PNG, JPEG, BMP and TIFF"

# Formats whose files may hold several images (multi-page TIFF, animated PNG).
MULTI_FRAME_FORMATS = ("TIFF", "PNG")


class ImageReadError(ValueError):
    """A file that cannot be read as an image: ``str()`` is ``"name: reason"``.

    ``name`` is the file as the caller named it, ``reason`` why it cannot be read.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True, eq=False)
class Scan:
    """The pixels of one input file, and the geometry its header gives (DICOM); nothing else of it.

    Attributes:
      frames: RGB ``uint8 [F, H, W, 3]``; ``F > 1`` only for a multi-frame file (a cine loop).
      region: pixel corners ``(xmin, ymin, xmax, ymax)`` (max exclusive) of the imaging
        region the model runs on; None for the whole frame.
      mm_per_pixel: ``(x, y)`` millimetres per pixel; None when the file carries no calibration.
    """

    frames: np.ndarray
    region: Optional[Tuple[int, int, int, int]] = None
    mm_per_pixel: Optional[Tuple[float, float]] = None

    @property
    def frame_count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def multi_frame(self) -> bool:
        return self.frame_count > 1

    def frame(self, number: Optional[int] = None) -> np.ndarray:
        """Frame ``number`` (1-based; None: the first) as RGB ``uint8 [H, W, 3]``."""
        return self.frames[0 if number is None else number - 1]


def as_scan(image: Union[np.ndarray, Scan]) -> Scan:
    """A :class:`Scan` as it is, or an RGB ``uint8 [H, W, 3]`` image as a one-frame Scan."""
    return image if isinstance(image, Scan) else Scan(image[np.newaxis])


def is_image_file(path: Union[str, Path]) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8 array, scaling 16/32-bit ranges down to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        high = pixels.max() if pixels.size else 0.0
        # 16-bit ultrasound exports use the full 16-bit range or only 12 bits;
        # stretch by the actual maximum so both come out visible.
        scale = 255.0 / high if high > 0 else 0.0
        gray = np.clip(pixels * scale, 0, 255).astype(np.uint8)
        return np.stack([gray] * 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent regions are shown on black, like the ultrasound background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _check_single_frame(image: Image.Image, name: str) -> None:
    """Refuses a file holding several images: reading only the first would be a silent half answer."""
    frames = getattr(image, "n_frames", 1) if image.format in MULTI_FRAME_FORMATS else 1
    if frames > 1:
        kind = "pages (multi-page TIFF)" if image.format == "TIFF" else "frames (animated PNG)"
        raise ImageReadError(name, f"holds {frames} {kind}; only single images are read: "
                                   "save each one as its own file")


def _other_format(source) -> Optional[str]:
    """The format other than :data:`READ_FORMATS` that Pillow would take the stream for (``"GIF"``),
    from its first bytes alone (each plugin's signature check: nothing is parsed), or None."""
    try:
        source.seek(0)
        head = source.read(16)
        Image.init()
        return next((f for f in Image.ID if f not in READ_FORMATS and Image.OPEN[f][1] is not None
                     and Image.OPEN[f][1](head)), None)
    except Exception:  # noqa: BLE001 - only a better message is lost
        return None


def _decode(source, name: str) -> np.ndarray:
    # The size limit is checked here, on the header: Pillow's own limit is one setting for the
    # whole process, which another thread (the page's sessions, predict.py's readers) may change
    # in the meantime. Its warning between its limit and twice that is then noise.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=READ_FORMATS)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageReadError(name, TOO_LARGE)
            _check_single_frame(image, name)
            image.load()
            image = ImageOps.exif_transpose(image)
            pixels = _to_rgb(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # above twice Pillow's own limit, refused inside Image.open
        raise ImageReadError(name, TOO_LARGE) from None
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except Image.UnidentifiedImageError:
        other = _other_format(source)
        if other is None:
            raise ImageReadError(name, "not a recognised image format") from None
        raise ImageReadError(name, f"is in {other} format; only {READ_FORMATS_TEXT} images are read: "
                                   "save it as PNG") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (OSError, TypeError, KeyError)
        raise ImageReadError(name, f"cannot decode image ({error or type(error).__name__})") from None
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageReadError(name, "image has no pixels")
    return np.ascontiguousarray(pixels)


@contextlib.contextmanager
def open_input(path: Union[str, Path]) -> Iterator:
    """Opens an input file for binary reading; never blocks (:func:`busdet.files.open_regular`).

    Raises:
      ImageReadError: not found, a broken link or a link loop, not a regular file (a named pipe,
        a device), empty, or unreadable (the reason from :func:`busdet.files.unreadable_reason`).
    """
    try:
        stream = open_regular(path)
    except OSError as error:
        reason = unreadable_reason(path) or f"cannot open ({error.strerror or error})"
        raise ImageReadError(str(path), reason) from None
    with stream:
        if os.fstat(stream.fileno()).st_size == 0:
            raise ImageReadError(str(path), "file is empty")
        yield stream


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Reads an image file as RGB ``uint8 [H, W, 3]`` as a viewer would display it.

    Raises:
      ImageReadError: the file is missing, not a regular file, empty, truncated or damaged, not an image,
        an image in a format other than :data:`READ_FORMATS` (named), or too large.
    """
    with open_input(path) as stream:
        return _decode(stream, str(path))


def decode_image(data: bytes, name: str = "<upload>") -> np.ndarray:
    """Decodes image bytes (an upload) like :func:`read_image`."""
    if not data:
        raise ImageReadError(name, "file is empty")
    return _decode(io.BytesIO(data), name)


def encode_png(image: np.ndarray) -> bytes:
    """RGB ``uint8 [H, W, 3]`` -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# zlib level 3 instead of Pillow's 6: on speckled ultrasound frames it is 2-3x
# faster (about 40 ms instead of 100-250 ms for a BUSI-sized frame) and the files
# come out no larger, which keeps writing from limiting predict.py's throughput.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "PNG": {"compress_level": 3}}


# MPEG-4 Part 2 ("mp4v"): the codec OpenCV's bundled FFmpeg writes without any other
# library (its H.264 needs a hardware encoder). Plays in VLC, mpv and most players.
VIDEO_FOURCC = "mp4v"
VIDEO_FPS = 10.0


def encode_mp4(frames: Sequence[np.ndarray], fps: float = VIDEO_FPS) -> bytes:
    """RGB ``uint8 [H, W, 3]`` frames -> MP4 bytes (OpenCV's VideoWriter, no metadata of ours).

    The writer needs a seekable file: it gets an anonymous in-memory one (Linux
    ``memfd``), so that no frame of an upload ever lands on the server's disk;
    elsewhere a temporary file that is removed at once.
    """
    height, width = frames[0].shape[:2]
    with _scratch_file() as path:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {VIDEO_FOURCC} video here")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        with open(path, "rb") as stream:
            return stream.read()


@contextlib.contextmanager
def _scratch_file() -> Iterator[str]:
    """A ``.mp4`` path to write and read back (FFmpeg picks the container by the name).

    On Linux it is a link, in a temporary folder, to an anonymous in-memory file
    (``memfd``): the frames never reach the disk. Elsewhere a temporary file.
    """
    with tempfile.TemporaryDirectory(prefix="busdet-") as folder:
        path = os.path.join(folder, "video.mp4")
        if not (hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")):
            yield path
            return
        descriptor = os.memfd_create("busdet-video")
        try:
            os.symlink(f"/proc/{os.getpid()}/fd/{descriptor}", path)
            yield path
        finally:
            os.close(descriptor)


def write_video(path: Union[str, Path], frames: Sequence[np.ndarray], overwrite: bool = True) -> None:
    """Writes RGB frames as an MP4 (:func:`encode_mp4`) atomically."""
    data = encode_mp4(frames)
    with atomic_write(path, "wb", overwrite=overwrite) as stream:
        stream.write(data)


def write_image(path: Union[str, Path], image: np.ndarray, overwrite: bool = True) -> None:
    """Writes RGB ``uint8 [H, W, 3]`` atomically; the format follows the extension."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), "PNG")
    with atomic_write(path, "wb", overwrite=overwrite) as stream:
        Image.fromarray(image).save(stream, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
