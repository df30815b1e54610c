"""Parity of our NumPy 5-point shape predictor with dlib's on real photos (boxes from dlib's HOG detector)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprint.align.shape_predictor import ShapePredictor5, _chain_starts, decode_dlib_ints
from faceprint.errors import InvalidImage
from faceprint.models.catalogue import model_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")

PHOTOS = sorted((DATA / "faces").rglob("*.jpg")) + sorted((DATA / "dlib_faces").glob("*.jpg"))


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def predictor() -> ShapePredictor5:
    return ShapePredictor5()


@pytest.fixture(scope="module")
def dlib_pair():
    dlib = pytest.importorskip("dlib")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path("dlib-shape5")))


def test_decode_dlib_ints() -> None:
    # 1 → 01 01; -10 → 81 0a; 0x1234 → 02 34 12; -300 → 82 2c 01; 2**40 → 06 00 00 00 00 00 01
    data = bytes.fromhex("0101810a023412822c0106000000000001")
    assert decode_dlib_ints(data).tolist() == [1, -10, 0x1234, -300, 2**40]


def _encode(value: int) -> bytes:
    """dlib's variable-length integer encoding (the writer side, for the tests)."""
    magnitude = abs(value).to_bytes(8, "little").rstrip(b"\0") or b"\0"
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


def test_decode_random_streams() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        values = [int(v) for v in rng.integers(-(2**62), 2**62, 400) >> rng.integers(0, 62, 400)]
        data = b"".join(_encode(v) for v in values)
        assert decode_dlib_ints(data).tolist() == values
        # tiny blocks: the speculative chains often start mid-integer and must be corrected
        starts, stop = _chain_starts(np.frombuffer(data, np.uint8), block=int(rng.integers(2, 40)))
        assert stop == len(data) and len(starts) == len(values), trial


def test_model_shape(predictor: ShapePredictor5) -> None:
    m = predictor.model
    assert m.num_parts == 5
    assert m.leaf_values.shape[-1] == 10
    assert m.anchor_idx.shape == m.deltas.shape[:2]


def test_parity_with_dlib(predictor: ShapePredictor5, dlib_pair) -> None:
    detector, reference = dlib_pair
    assert len(PHOTOS) >= 40, f"photos missing under {DATA}"
    faces = 0
    worst = 0.0
    for path in PHOTOS:
        image = _load(path)
        # upsampling only the small photos keeps the test short and still yields 80+ faces
        rects = detector(image, 1 if image.shape[0] * image.shape[1] < 400_000 else 0)
        if len(rects) == 0:
            continue
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=float)
        ours = predictor.predict(image, boxes)
        theirs = np.array([[[p.x, p.y] for p in reference(image, r).parts()] for r in rects], dtype=np.float32)
        assert ours.shape == theirs.shape == (len(rects), 5, 2)
        assert ours.dtype == np.float32
        worst = max(worst, float(np.abs(ours - theirs).max()))
        faces += len(rects)
        sub = predictor.predict(image, boxes, subpixel=True)
        assert np.abs(sub - theirs).max() <= 0.5 + 1e-4
    assert faces >= 80
    # exact: both round the sampled pixels and the output points the same way
    assert worst <= 0.5, worst
    assert worst == 0.0, f"max abs difference {worst} px"


def test_grey_image_matches_dlib(predictor: ShapePredictor5, dlib_pair) -> None:
    detector, reference = dlib_pair
    image = _load(DATA / "faces" / "groups" / "img67.jpg")
    grey = np.ascontiguousarray(image.mean(axis=2).astype(np.uint8))
    rects = detector(grey, 1)
    assert len(rects) > 0
    boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=float)
    theirs = np.array([[[p.x, p.y] for p in reference(grey, r).parts()] for r in rects], dtype=np.float32)
    np.testing.assert_array_equal(predictor.predict(grey, boxes), theirs)


def test_box_off_the_image_edge(predictor: ShapePredictor5, dlib_pair) -> None:
    """Pixels outside the image read as 0, as in dlib."""
    import dlib

    _, reference = dlib_pair
    image = _load(DATA / "faces" / "groups" / "selfie-many-people.jpg")
    rect = dlib.rectangle(-60, 200, 120, 380)
    theirs = np.array([[p.x, p.y] for p in reference(image, rect).parts()], dtype=np.float32)
    ours = predictor.predict(image, np.array([[-60, 200, 121, 381]]))[0]
    np.testing.assert_array_equal(ours, theirs)


def test_empty_and_invalid(predictor: ShapePredictor5) -> None:
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    assert predictor.predict(image, np.zeros((0, 4))).shape == (0, 5, 2)
    with pytest.raises(InvalidImage):
        predictor.predict(image.astype(np.float32), np.zeros((1, 4)))
    with pytest.raises(InvalidImage):
        predictor.predict(np.zeros((10, 10, 4), dtype=np.uint8), np.zeros((1, 4)))
