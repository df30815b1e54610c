"""Load and validate images: every accepted input becomes an RGB uint8 array, EXIF-rotated.

Accepted sources: a path (``str``/``Path``), raw ``bytes``, a binary file object, or a NumPy array
(H×W grey, H×W×3 RGB, H×W×4 RGBA; uint8, uint16, or float in [0, 1]). Anything else, and anything that
does not decode, raises :class:`InvalidImage` naming the input and the reason.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from faceprint.errors import ImageTooLarge, InvalidImage
from faceprint.tracing import set_attributes, span

#: Default upper bound on decoded pixels (a 12 MP photo is 12e6; 64 MP allows large camera files).
DEFAULT_MAX_PIXELS = 64_000_000
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")
_DCT_FORMATS = ("JPEG", "MPO")  # decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (draft mode)
# EXIF orientation → the transpose that shows the photo upright (what ImageOps.exif_transpose applies).
_ORIENTATION = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)
# Modes Image.reduce() averages correctly, and what to convert the others to first (palette indices and
# 1-bit pixels cannot be averaged; 16-bit grey becomes 32-bit integers, scaled like it in _pil_to_rgb).
_REDUCIBLE = {
    "L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "RGBX": "RGBX", "CMYK": "CMYK", "I": "I", "F": "F",
    "1": "L", "P": "RGB", "PA": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I",
}  # fmt: skip

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image: ``pixels`` is H×W×3 uint8 RGB; ``source`` names it in errors and reports.

    A large photo may be decoded reduced (``load_image(..., decode_max_pixels=...)``): then ``pixels`` holds
    it at 1/``scale`` of its size and ``original`` is the photo's own (width, height). Detections always refer
    to the photo's own pixel frame (:class:`~faceprint.types.Detection`); the pipeline multiplies what its
    models find in ``pixels`` by ``scale``, and divides landmarks by it to cut chips.
    """

    pixels: np.ndarray
    source: str
    sha256: str | None = None
    scale: float = 1.0  # photo pixels per pixel of ``pixels`` (1: decoded at full size)
    original: tuple[int, int] | None = None  # the photo's (width, height) when decoded reduced

    @property
    def width(self) -> int:
        """Width of the photo (the frame of detections), not of a reduced ``pixels``."""
        return self.original[0] if self.original else int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return self.original[1] if self.original else int(self.pixels.shape[0])


def max_pixels_from_env() -> int:
    raw = os.environ.get("FACEPRINT_MAX_PIXELS")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise InvalidImage("FACEPRINT_MAX_PIXELS", f"must be a number of pixels, got {raw!r}") from None
    if value <= 0:
        raise InvalidImage("FACEPRINT_MAX_PIXELS", f"must be positive, got {raw!r}")
    return value


def load_image(
    source: ImageSource | Image,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    decode_max_pixels: int | None = None,
) -> Image:
    """Decode ``source`` into an :class:`Image`. ``name`` overrides how the input is named in errors.

    ``decode_max_pixels``: an encoded photo larger than this is decoded reduced by an integer factor to at
    most this many pixels (JPEG: by libjpeg's DCT scaling, without ever holding the full size; other
    formats: :meth:`PIL.Image.Image.reduce` after decoding), recording the factor in :attr:`Image.scale`.
    ``None``: full size. Arrays are never reduced."""
    if isinstance(source, Image):
        return source
    limit = max_pixels or max_pixels_from_env()
    if isinstance(source, np.ndarray):
        return Image(_array_to_rgb(source, name or "<array>", limit), name or "<array>")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        label = name or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidImage(label, "file not found") from None
        except IsADirectoryError:
            raise InvalidImage(label, "is a directory, not an image file") from None
        except OSError as exc:
            raise InvalidImage(label, f"cannot be read ({exc.strerror or exc})") from None
    elif isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        data = bytes(source)
    elif hasattr(source, "read"):
        label = name or str(getattr(source, "name", "<file>"))
        data = source.read()
        if not isinstance(data, bytes):
            raise InvalidImage(label, "file object must be opened in binary mode")
    else:
        raise InvalidImage(
            name or repr(type(source).__name__),
            "unsupported input type: give a path, bytes, a binary file object or a NumPy array",
        )
    with span("decode", bytes=len(data)):
        pixels, scale, size = decode(data, label, limit, decode_max_pixels)
        set_attributes(width=int(pixels.shape[1]), height=int(pixels.shape[0]), scale=scale)
    return Image(pixels, label, hashlib.sha256(data).hexdigest(), scale, size if scale != 1 else None)


def header_pixels(data: bytes) -> int | None:
    """Pixels of an encoded image as its header declares them, without decoding (``None``: not an image
    Pillow can read, or one it refuses as a decompression bomb, which decoding will report)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:
                width, height = img.size
    except (PILImage.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None
    return width * height


def decode_bytes(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    """``data`` decoded at full size (see :func:`decode`)."""
    return decode(data, label, max_pixels)[0]


def decode(
    data: bytes, label: str, max_pixels: int, decode_max_pixels: int | None = None
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """``data`` as RGB pixels, EXIF-rotated, reduced by an integer factor to at most ``decode_max_pixels``
    when larger; returns the pixels, that factor and the upright photo's own (width, height)."""
    if not data:
        raise InvalidImage(label, "is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data))
            width, height = img.size
            if img.format not in SUPPORTED_FORMATS:
                raise InvalidImage(
                    label,
                    f"unsupported image format {img.format}; supported: {', '.join(SUPPORTED_FORMATS[:5])}",
                )
            if width * height > max_pixels:
                raise ImageTooLarge(label, width * height, max_pixels)
            if decode_max_pixels is None or width * height <= decode_max_pixels:
                img.load()
                img = ImageOps.exif_transpose(img)
                factor, size = 1, img.size
            else:
                img, factor, size = _decode_reduced(img, width * height, decode_max_pixels)
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(label, "is not a recognised image (JPEG, PNG, WebP, BMP or TIFF)") from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        # Pillow refuses absurd sizes inside open(), before we can read them; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageTooLarge(label, int(found.group(1)) if found else None, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(label, f"could not be decoded; the file is truncated or corrupt ({exc})") from None
    return _pil_to_rgb(img), factor, size


def _decode_reduced(img: PILImage.Image, pixels: int, budget: int) -> tuple[PILImage.Image, int, tuple[int, int]]:
    """Decode ``img`` (opened, not loaded) reduced by the smallest integer factor that brings its ``pixels``
    within ``budget``; EXIF orientation applied. JPEG is decoded at the nearest DCT scale (1/2, 1/4, 1/8) at
    or above that size, so the full-size pixels never exist; anything left over is reduced by averaging.
    Returns the image, the factor and the upright photo's own (width, height)."""
    orientation = img.getexif().get(0x0112)
    width, height = img.size
    factor = 1
    want = math.ceil(math.sqrt(pixels / budget))
    if img.format in _DCT_FORMATS:
        img.draft(img.mode, (math.ceil(img.width / want), math.ceil(img.height / want)))
        factor = max(1, round(width / img.width))
    img.load()
    left = img.width * img.height
    if left > budget:
        more = math.ceil(math.sqrt(left / budget))
        img = img.convert(_REDUCIBLE.get(img.mode, "RGB")) if img.mode not in _REDUCIBLE.values() else img
        img = img.reduce(more)  # averages each more×more block (a partial last block averages what it has)
        factor *= more
    method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    if method is not None:
        img = img.transpose(method)
    return img, factor, ((height, width) if orientation in _SWAPS_AXES else (width, height))


def _pil_to_rgb(img: PILImage.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        grey = np.clip(arr.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        grey = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = PILImage.new("RGBA", img.size, (255, 255, 255, 255))
        img = PILImage.alpha_composite(background, img)
    if img.mode == "RGB;16" or (img.mode.startswith("RGB") and np.asarray(img).dtype != np.uint8):
        arr = np.asarray(img).astype(np.float32) / 257.0
        return np.ascontiguousarray(arr.round().astype(np.uint8)[:, :, :3])
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray, label: str, max_pixels: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImage(label, f"array of shape {arr.shape} is not an image (expected H×W, H×W×3 or H×W×4)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidImage(label, f"array of shape {arr.shape} has no pixels")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageTooLarge(label, arr.shape[0] * arr.shape[1], max_pixels)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidImage(label, "float array contains NaN or infinity")
        if arr.min() < 0 or arr.max() > 1:
            raise InvalidImage(label, "float arrays must hold values in [0, 1]")
        out = (arr * 255.0).round().astype(np.uint8)
    else:
        raise InvalidImage(label, f"unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif out.shape[2] == 4:
        alpha = out[:, :, 3:4].astype(np.float32) / 255.0
        out = (out[:, :, :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(out)
