"""Image loading: formats, EXIF, colour modes, limits and the errors users see."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from faceprint import InvalidImage, load_image
from faceprint.errors import ImageTooLarge
from tests.conftest import GROUPS, IDENTITIES

PHOTO = IDENTITIES / "person01" / "img44.jpg"


def _encode(img: PILImage.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> PILImage.Image:
    return PILImage.open(PHOTO).convert("RGB")


def test_path_bytes_file_and_array_agree(photo: PILImage.Image) -> None:
    from_path = load_image(PHOTO)
    from_str = load_image(str(PHOTO))
    from_bytes = load_image(PHOTO.read_bytes())
    with PHOTO.open("rb") as fh:
        from_file = load_image(fh)
    from_array = load_image(np.asarray(photo))
    assert from_path.pixels.dtype == np.uint8 and from_path.pixels.shape[2] == 3
    for other in (from_str, from_bytes, from_file, from_array):
        np.testing.assert_array_equal(other.pixels, from_path.pixels)
    assert from_path.source == str(PHOTO)
    assert from_path.sha256 == from_bytes.sha256 and len(from_path.sha256) == 64


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_lossless_formats_round_trip(photo: PILImage.Image, fmt: str) -> None:
    small = photo.resize((64, 48))
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    loaded = load_image(_encode(small, fmt, **kwargs))
    np.testing.assert_array_equal(loaded.pixels, np.asarray(small))


def test_exif_orientation_is_applied(photo: PILImage.Image) -> None:
    small = photo.resize((80, 40))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    loaded = load_image(_encode(small, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.pixels.shape[:2] == (80, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "1"])
def test_colour_modes_become_rgb(photo: PILImage.Image, mode: str) -> None:
    img = photo.resize((32, 32)).convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    loaded = load_image(_encode(img, fmt))
    assert loaded.pixels.shape == (32, 32, 3) and loaded.pixels.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    loaded = load_image(_encode(PILImage.fromarray(ramp), "PNG"))
    assert loaded.pixels[..., 0].max() == round(63000 / 257)
    assert loaded.pixels[..., 0].min() == 0


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    loaded = load_image(_encode(PILImage.fromarray(rgba, "RGBA"), "PNG"))
    assert (loaded.pixels == 255).all()


def test_arrays_of_other_dtypes() -> None:
    grey16 = np.full((5, 6), 65535, dtype=np.uint16)
    assert (load_image(grey16).pixels == 255).all()
    floats = np.full((5, 6, 3), 0.5, dtype=np.float32)
    assert (load_image(floats).pixels == 128).all()
    with pytest.raises(InvalidImage, match=r"\[0, 1\]"):
        load_image(np.full((5, 6, 3), 2.0))
    with pytest.raises(InvalidImage, match="shape"):
        load_image(np.zeros((5, 6, 7), dtype=np.uint8))


def test_truncated_jpeg_names_the_input(tmp_path: Path) -> None:
    data = (GROUPS / "couple.jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidImage) as err:
        load_image(bad)
    assert str(bad) in str(err.value) and "truncated" in str(err.value)


def test_text_file_and_empty_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all")
    with pytest.raises(InvalidImage, match="not a recognised image"):
        load_image(text)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty"):
        load_image(empty)
    with pytest.raises(InvalidImage, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImage, match="directory"):
        load_image(tmp_path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height, with a tiny (invalid) body: a decompression-bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as err:  # an InvalidImage: the CLI exits 2, the service answers 413
        load_image(_png_header_only(30000, 30000), name="bomb.png")
    assert "bomb.png" in str(err.value) and "900,000,000" in str(err.value)
    assert isinstance(err.value, InvalidImage) and err.value.pixels == 900_000_000
    with pytest.raises(ImageTooLarge, match="over the limit of 100"):
        load_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)


def test_pixel_limit_is_configurable(monkeypatch: pytest.MonkeyPatch, photo: PILImage.Image) -> None:
    monkeypatch.setenv("FACEPRINT_MAX_PIXELS", "1000")
    with pytest.raises(InvalidImage, match="limit"):
        load_image(PHOTO)
    monkeypatch.setenv("FACEPRINT_MAX_PIXELS", "lots")
    with pytest.raises(InvalidImage, match="FACEPRINT_MAX_PIXELS"):
        load_image(PHOTO)
