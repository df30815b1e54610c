"""The default detector: MTCNN proposals (PNet → RNet → ONet on ONNX Runtime) confirmed by dlib's MMOD CNN.

The cascade's promise is "the faces the full-scan CNN detector finds, for a fraction of the work", so the
full-scan detector (itself tested for parity with dlib in test_mmod_onnx.py) is the oracle here: the same
faces, boxes overlapping at IoU ≥ 0.5, on the shared photos. The MTCNN stages are tested on what they must
do for the cascade: rate real faces high and the rest low.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from faceprint.detect.cascade import CascadeDetector, _crop, _nms, _onet_file, _pnet_file, _rnet_file
from faceprint.detect.mmod import MMODDetector
from faceprint.errors import InvalidArgument, ModelError
from faceprint.evaluation.metrics import box_iou as _box_iou
from faceprint.models.catalogue import model_path
from faceprint.models.mtcnn_onnx import build_onet_onnx, build_pnet_onnx, build_rnet_onnx, read_weights
from tests.conftest import DATA, GROUPS, IDENTITIES

# photos the full-scan detector is compared on: groups (small, cut and close faces) and large single portraits
PHOTOS = [
    GROUPS / "selfie-many-people.jpg",
    GROUPS / "couple.jpg",
    GROUPS / "img67.jpg",
    IDENTITIES / "person01" / "img26.jpg",
    IDENTITIES / "person04" / "img59.jpg",
    IDENTITIES / "person07" / "img38.jpg",
]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(_box_iou(np.array([a], dtype=float), np.array([b], dtype=float))[0, 0])


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def cascade(cache_dir: Path) -> CascadeDetector:
    return CascadeDetector()


@pytest.fixture(scope="module")
def full_scan(cache_dir: Path) -> MMODDetector:
    return MMODDetector(min_face=40)


def test_converted_networks_are_valid_onnx_with_the_expected_shapes(cache_dir: Path) -> None:
    for file, builder, model_id in (
        (_pnet_file(), build_pnet_onnx, "mtcnn-pnet"),
        (_rnet_file(), build_rnet_onnx, "mtcnn-rnet"),
        (_onet_file(), build_onet_onnx, "mtcnn-onet"),
    ):
        assert file.parent.parent == cache_dir  # converted on first use into the user cache
        model = onnx.load(file)
        onnx.checker.check_model(model)
        assert [o.name for o in model.graph.output] == ["prob", "reg"]
        # the cached graph is exactly what the builder makes from the verified weight file
        assert builder(model_path(model_id)).SerializeToString() == file.read_bytes()
    with pytest.raises(ModelError, match="PNet needs 13"):
        build_pnet_onnx(read_weights(model_path("mtcnn-rnet")))


def test_each_stage_rates_a_real_face_high_and_background_low(cascade: CascadeDetector) -> None:
    img = _load(IDENTITIES / "person03" / "img53.jpg")
    (face, _), *_ = MMODDetector(min_face=40).detect(img)
    x1, y1, x2, y2 = face
    side = max(x2 - x1, y2 - y1) * 1.25  # MTCNN's boxes are ~1.25× MMOD's
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    on_face = np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, 1.0]])
    background = np.array([[0, 0, 150, 150, 1.0]])  # top-left corner: wall, no face
    for stage in ("rnet", "onet"):
        assert len(cascade.refine(img, on_face, stage)) == 1, stage
        assert len(cascade.refine(img, background, stage)) == 0, stage
    proposals = cascade.propose(img)
    assert len(proposals) > 0
    best = max(box_iou(tuple(face), tuple(p[:4])) for p in proposals)
    assert best > 0.3


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_finds_the_faces_the_full_scan_finds(cascade: CascadeDetector, full_scan: MMODDetector, photo: Path) -> None:
    img = _load(photo)
    ours, theirs = cascade.detect(img), full_scan.detect(img)
    assert cascade.last_stats.get("full_scan", 0) == 0  # the crops path ran, not the fallback
    for box, score in theirs:
        assert any(box_iou(box, b) >= 0.5 for b, _ in ours), f"{photo.name}: missed {box} (score {score:.2f})"
    for box, score in ours:
        assert any(box_iou(box, b) >= 0.5 for b, _ in theirs), f"{photo.name}: extra {box} (score {score:.2f})"
        assert 0 <= box[0] < box[2] <= img.shape[1] and 0 <= box[1] < box[3] <= img.shape[0]
    assert [s for _, s in ours] == sorted((s for _, s in ours), reverse=True)


def test_the_face_cut_by_the_frame_is_found(cascade: CascadeDetector) -> None:
    faces = cascade.detect(_load(GROUPS / "selfie-many-people.jpg"))
    assert any(box[0] == 0 for box, _ in faces)  # the half face at the left edge
    assert len(faces) >= 6


def test_crowds_fall_back_to_the_full_scan(cache_dir: Path, full_scan: MMODDetector) -> None:
    img = _load(GROUPS / "selfie-many-people.jpg")
    tight = CascadeDetector(max_crop_pixels=1)  # any crop exceeds the budget
    assert tight.detect(img) == full_scan.detect(img)
    assert tight.last_stats["full_scan"] == 1


def test_no_face_no_detection_and_odd_inputs(cascade: CascadeDetector) -> None:
    assert cascade.detect(_load(DATA / "dlib_faces" / "dogs.jpg")) == []
    assert cascade.detect(np.zeros((8, 8, 3), np.uint8)) == []  # smaller than any window
    assert cascade.detect(np.full((300, 400, 3), 128, np.uint8)) == []
    grey = np.asarray(Image.open(IDENTITIES / "person03" / "img53.jpg").convert("L"))
    assert len(cascade.detect(grey)) == 1
    with pytest.raises(InvalidArgument, match="min_face"):
        CascadeDetector(min_face=0)


def test_small_faces_below_the_cnn_window_are_found(cascade: CascadeDetector) -> None:
    # dlib's examples: faces of 30–45 px, below MMOD's 80-px window at the photo's own scale
    img = _load(DATA / "dlib_faces" / "2008_004176.jpg")
    assert len(cascade.detect(img)) >= 6


def test_helpers() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=float)
    assert _nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    img = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    crop = _crop(img, np.array([-10.0, -10.0, 10.0, 10.0]), 20)  # half outside: zero-filled there
    assert crop.shape == (20, 20, 3) and crop[:9, :9].max() == 0 and crop[15, 15].any()
