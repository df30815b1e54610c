"""The MMOD CNN face detector on ONNX Runtime finds the same faces as dlib's own (``cnn_face_detection_model_v1``).

dlib's CNN is slow (seconds per photo), so the parity test uses small photos with faces; the 1 MP photo is in a
``slow`` test. Nothing is cached between runs except the converted ONNX file (which the first test rebuilds
into a fresh cache folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from faceprint.detect.mmod import MMODDetector, _model_file, tiled_pyramid_layout
from faceprint.models.catalogue import model_path
from faceprint.models.dlib_format import read_network
from faceprint.models.mmod_onnx import build_mmod_onnx, read_mmod, records_to_onnx

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")

# 2–5 faces each, 360–600 px: dlib's CNN takes about 1–3 s on each
PARITY_PHOTOS = [
    "faces/groups/selfie-many-people.jpg",
    "dlib_faces/2008_001009.jpg",
    "dlib_faces/2008_001322.jpg",
    "dlib_faces/2008_002506.jpg",
    "dlib_faces/2009_004587.jpg",
]


def _load(rel: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / rel).convert("RGB"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of inclusive integer rectangles (left, top, right, bottom)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return float(inter / (area - inter))


@pytest.fixture(scope="module")
def dlib_cnn():
    dlib = pytest.importorskip("dlib")
    return dlib.cnn_face_detection_model_v1(str(model_path("dlib-mmod")))


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MMODDetector]:
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # convert afresh
    try:
        _model_file.cache_clear()
        yield MMODDetector()
    finally:
        mp.undo()


def _assert_same(ours: tuple[np.ndarray, np.ndarray], theirs) -> None:
    rects, scores = ours
    ref = np.array([[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in theirs])
    ref_scores = np.array([d.confidence for d in theirs])
    assert len(rects) == len(ref), (rects, ref)
    for box, score in zip(ref, ref_scores, strict=True):
        ious = [_iou(box, r) for r in rects]
        j = int(np.argmax(ious))
        assert ious[j] >= 0.9, (box, rects)
        assert abs(scores[j] - score) < 1e-3, (score, scores[j])


def test_graph_is_valid_and_folded() -> None:
    model = build_mmod_onnx(model_path("dlib-mmod"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 7 and "Mul" not in ops and "Add" not in ops


def test_graph_rewrites_keep_the_output() -> None:
    """The split scorer and the zero-padded 48-channel layers compute what the plain layers compute."""
    import onnxruntime as ort

    records = read_network(model_path("dlib-mmod"))
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3, 157, 203)).astype(np.float32)
    outs = []
    for kwargs in ({}, {"split_scorer": False, "channel_multiple": 1}):
        model = records_to_onnx(records, **kwargs).SerializeToString()
        outs.append(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0])
    assert outs[0].shape == outs[1].shape == (1, 1, 17, 22)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_geometry_from_the_file() -> None:
    g = read_mmod(model_path("dlib-mmod"))
    assert g.windows == ((80, 80),)
    assert (g.stride, g.offset) == ((8, 8), (14, 14))
    assert (g.pyramid_padding, g.pyramid_outer_padding) == (10, 11)
    assert 0.3 < g.nms_iou < 0.4


def test_tiled_pyramid_layout() -> None:
    layout = tiled_pyramid_layout(811, 1280, 10, 11)
    rects = layout.rects
    assert tuple(rects[0]) == (11, 11, 1290, 821)
    heights = rects[:, 3] - rects[:, 1] + 1
    widths = rects[:, 2] - rects[:, 0] + 1
    assert np.all(heights[1:] == np.floor(heights[:-1] * 5 / 6)) and heights[-1] >= 5
    assert np.all(widths[1:] == np.floor(widths[:-1] * 5 / 6))
    assert rects.min() >= 0 and rects[:, 2].max() < layout.cols and rects[:, 3].max() < layout.rows
    for i in range(len(rects)):  # tiles never overlap
        for j in range(i + 1, len(rects)):
            a, b = rects[i], rects[j]
            assert max(a[0], b[0]) > min(a[2], b[2]) or max(a[1], b[1]) > min(a[3], b[3])


@pytest.mark.parametrize("rel", PARITY_PHOTOS)
def test_same_faces_as_dlib(rel: str, detector: MMODDetector, dlib_cnn) -> None:
    image = _load(rel)
    _assert_same(detector.detect_dlib(image), dlib_cnn(image, 0))


def test_no_faces(detector: MMODDetector) -> None:
    image = _load("dlib_faces/dogs.jpg")
    assert detector.detect(image) == []
    assert MMODDetector(min_face=40).detect(image) == []


def test_min_face_finds_small_faces() -> None:
    image = _load("dlib_faces/2008_002079.jpg")  # faces ≈ 40 px: too small for the 80-px window as they are
    assert MMODDetector(edge_margin=0).detect(image) == []
    small = MMODDetector(min_face=40)
    assert small.work_scale(*image.shape[:2]) == 2.0
    assert len(small.detect(image)) >= 5
    assert small.work_scale(3000, 4000) == pytest.approx((2e6 / 12e6) ** 0.5)  # 12 MP: capped work


def test_upsample_matches_dlib(dlib_cnn) -> None:
    image = np.asarray(Image.open(DATA / "faces/groups/selfie-many-people.jpg").convert("RGB").resize((300, 302)))
    _assert_same(MMODDetector(upsample=1).detect_dlib(image), dlib_cnn(image, 1))


def test_detect_api(detector: MMODDetector) -> None:
    image = _load("faces/groups/selfie-many-people.jpg")
    assert len(MMODDetector(edge_margin=0).detect(image)) == 5  # dlib's own count
    faces = detector.detect(image)
    # The mirrored margin also finds the close face cut by the right edge and the face cut by the left edge.
    assert len(faces) == 7
    scores = [s for _, s in faces]
    assert scores == sorted(scores, reverse=True)
    h, w = image.shape[:2]
    for (x1, y1, x2, y2), _ in faces:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    grey = np.ascontiguousarray(image.mean(axis=2).astype(np.uint8))
    assert len(detector.detect(grey)) >= 1
    assert MMODDetector(min_score=10.0).detect(image) == []


@pytest.mark.slow
def test_same_faces_as_dlib_1mp(detector: MMODDetector, dlib_cnn) -> None:
    image = _load("faces/groups/img67.jpg")
    _assert_same(detector.detect_dlib(image), dlib_cnn(image, 0))


@pytest.mark.parametrize("shape", [(0, 0, 3), (1, 1, 3), (6, 6, 3), (7, 9, 3), (40, 300)])
def test_tiny_and_blank_images(detector: MMODDetector, shape: tuple[int, ...]) -> None:
    assert detector.detect(np.zeros(shape, dtype=np.uint8)) == []


def test_invalid_image(detector: MMODDetector) -> None:
    from faceprint.errors import InvalidImage

    with pytest.raises(InvalidImage):
        detector.detect(np.zeros((50, 50, 4), dtype=np.uint8))
    with pytest.raises(InvalidImage):
        detector.detect(np.zeros((50, 50, 3), dtype=np.float32))


def test_crops_of_one_size_in_one_run_give_what_each_run_gives(detector: MMODDetector) -> None:
    # the cascade's MMOD crops: several same-size images through the network as one batch
    image = _load("faces/groups/selfie-many-people.jpg")
    h, w = image.shape[:2]
    crops = [np.ascontiguousarray(image[y : y + 232, x : x + 232]) for x, y in ((0, 0), (w - 232, 0), (w // 3, h // 4))]
    batched = detector.detect_dlib_same_size(crops)
    assert sum(len(rects) for rects, _ in batched) >= 1
    for crop, (rects, scores) in zip(crops, batched, strict=True):
        one_rects, one_scores = detector.detect_dlib(crop)
        np.testing.assert_array_equal(rects, one_rects)
        np.testing.assert_allclose(scores, one_scores, rtol=1e-5, atol=1e-5)
    assert detector.detect_dlib_same_size([]) == []
