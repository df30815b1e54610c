"""Load and validate images: every accepted input becomes an RGB uint8 array, EXIF-rotated.

Accepted sources: a path (``str``/``Path``), raw ``bytes``, a binary file object, or a NumPy array
(H×W grey, H×W×3 RGB, H×W×4 RGBA; uint8, uint16, or float in [0, 1]). Anything else, and anything that
does not decode, raises :class:`InvalidImage` naming the input and the reason.
"""

from __future__ import annotations

import hashlib
import io
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

#: Default upper bound on decoded pixels (a 12 MP photo is 12e6; 64 MP allows large camera files).
DEFAULT_MAX_PIXELS = 64_000_000
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image: ``pixels`` is H×W×3 uint8 RGB; ``source`` names it in errors and reports."""

    pixels: np.ndarray
    source: str
    sha256: str | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


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


def load_image(source: ImageSource | Image, *, name: str | None = None, max_pixels: int | None = None) -> Image:
    """Decode ``source`` into an :class:`Image`. ``name`` overrides how the input is named in errors."""
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
    return Image(decode_bytes(data, label, limit), label, hashlib.sha256(data).hexdigest())


def decode_bytes(data: bytes, label: str, max_pixels: int) -> np.ndarray:
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
            img.load()
            img = ImageOps.exif_transpose(img)
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
    return _pil_to_rgb(img)


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
