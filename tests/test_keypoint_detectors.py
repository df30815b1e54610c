"""The RetinaFace, SCRFD and YuNet decoders on small ONNX graphs built here with each family's exact input and
output names, shapes and layout (no such weights are reachable from the registries we can use).

Each graph's outputs are constants chosen to put one face on a known anchor (every other anchor scores low);
the graph still reads its input (a zero-weighted mean of it is added), so ONNX Runtime runs it as a model.
The expected boxes and points are worked out by hand in the comments from the family's decoding rules.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.detect.keypoints import DetectorPoints
from faceprint.detect.retinaface import RetinaFaceDetector, prior_boxes
from faceprint.detect.scrfd import ScrfdDetector, anchor_centres
from faceprint.detect.yunet import YuNetDetector
from faceprint.errors import ModelError
from faceprint.factory import add_model, resolve_profile
from faceprint.models.families import keypoint_detector_spec
from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from faceprint.pipeline import Pipeline

POINT_OFFSETS = np.array([[-1, -1], [1, -1], [0, 0], [-0.5, 1], [0.5, 1]], np.float32)


def constant_graph(path: Path, input_name: str, size: tuple[int, int], outputs: dict[str, np.ndarray]) -> Path:
    """An ONNX graph ``input_name`` 1×3×H×W → each of ``outputs`` (constant + 0 × mean(input))."""
    h, w = size
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_const"))
        nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, h, w])], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def scrfd_graph(path: Path, *, batched: bool = True) -> Path:
    # 640×640, strides 8/16/32, 2 anchors per cell: 12800, 3200 and 800 anchors. One face on stride 16,
    # cell (row 10, col 20), second anchor: index 2·(10·40 + 20) + 1 = 841, centre (20·16, 10·16) = (320, 160).
    outputs = {}
    for stride in (8, 16, 32):
        n = 2 * (640 // stride) ** 2
        score, bbox, kps = np.full((n, 1), 0.01), np.ones((n, 4)), np.zeros((n, 10))
        if stride == 16:
            score[841] = 0.9
            bbox[841] = [2, 3, 4, 5]  # × 16 → x1 = 320 − 32, y1 = 160 − 48, x2 = 320 + 64, y2 = 160 + 80
            kps[841] = POINT_OFFSETS.ravel()  # × 16 around (320, 160)
        for name, value in (("score", score), ("bbox", bbox), ("kps", kps)):
            outputs[f"{name}_{stride}"] = value[None] if batched else value
    ordered = {k: outputs[k] for kind in ("score", "bbox", "kps") for k in outputs if k.startswith(kind)}
    return constant_graph(path, "input.1", (640, 640), ordered)


def retinaface_graph(path: Path, names: tuple[str, str, str] = ("loc", "conf", "landms")) -> Path:
    # 640×640 priors: 80²·2 + 40²·2 + 20²·2 = 16800. One face on step 32, cell (row 5, col 10), min size 256:
    # index 12800 + 3200 + 2·(5·20 + 10) = 16220; prior centre (10.5·32, 5.5·32) = (336, 176) px, size 256 px.
    p = 16800
    loc, conf, landms = np.zeros((p, 4)), np.tile([0.99, 0.01], (p, 1)), np.zeros((p, 10))
    loc[16220] = [1, -1, 0, np.log(1.5) / 0.2]  # centre + (0.1·256, −0.1·256) = (361.6, 150.4); h = 256·1.5
    conf[16220] = [0.1, 0.9]
    landms[16220] = (POINT_OFFSETS * 2).ravel()  # point = PRIOR centre + 2·offset·0.1·256 = (336, 176) + 51.2·offset
    loc_name, conf_name, landms_name = names
    outputs = {landms_name: landms[None], conf_name: conf[None], loc_name: loc[None]}  # order must not matter
    return constant_graph(path, "input0", (640, 640), outputs)


def yunet_graph(path: Path) -> Path:
    # 640×640, strides 8/16/32: 6400, 1600, 400 cells. One face on stride 32, cell (row 4, col 6): index 86.
    outputs = {}
    for stride in (8, 16, 32):
        n = (640 // stride) ** 2
        cls, obj = np.full((1, n, 1), 0.01), np.full((1, n, 1), 0.5)
        bbox, kps = np.zeros((1, n, 4)), np.zeros((1, n, 10))
        if stride == 32:
            cls[0, 86], obj[0, 86] = 0.81, 1.0  # score √(0.81·1) = 0.9
            bbox[0, 86] = [0.5, 0.25, np.log(4), np.log(5)]  # centre (6.5·32, 4.25·32) = (208, 136), 128×160
            kps[0, 86] = POINT_OFFSETS.ravel()  # ((offset + (6, 4))·32)
        outputs |= {f"cls_{stride}": cls, f"obj_{stride}": obj, f"bbox_{stride}": bbox, f"kps_{stride}": kps}
    ordered = {k: outputs[k] for kind in ("cls", "obj", "bbox", "kps") for k in outputs if k.startswith(kind)}
    return constant_graph(path, "input", (640, 640), ordered)


def image(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_scrfd_anchor_layout_matches_insightface() -> None:
    centres = anchor_centres(640, 640, 16, 2)
    assert centres.shape == (3200, 2)
    # insightface: np.stack(np.mgrid[:h, :w][::-1], axis=-1) * stride, each centre repeated per anchor
    expected = np.stack(np.mgrid[:40, :40][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * 16
    np.testing.assert_array_equal(centres, np.repeat(expected, 2, axis=0))


def test_retinaface_priors_follow_the_common_export() -> None:
    priors = prior_boxes(640, 640)
    assert priors.shape == (16800, 4)
    np.testing.assert_allclose(priors[0], [4 / 640, 4 / 640, 16 / 640, 16 / 640])  # first cell, min size 16
    np.testing.assert_allclose(priors[1], [4 / 640, 4 / 640, 32 / 640, 32 / 640])  # same cell, min size 32
    np.testing.assert_allclose(priors[16220], [336 / 640, 176 / 640, 256 / 640, 256 / 640])


@pytest.mark.parametrize("batched", [True, False])
def test_scrfd_decodes_the_hand_computed_face(tmp_path: Path, batched: bool) -> None:
    path = scrfd_graph(tmp_path / "scrfd_10g_bnkps.onnx", batched=batched)
    detector = ScrfdDetector(keypoint_detector_spec(path, "scrfd"), path, threads=1)
    # a 1280×640 photo is letterboxed at scale 0.5: photo px = input px × 2
    (box, score, points), *rest = detector.faces(image(1280, 640))
    assert rest == []
    assert score == pytest.approx(0.9)
    np.testing.assert_allclose(box, np.array([288, 112, 384, 240]) * 2, atol=1e-3)
    np.testing.assert_allclose(points, (np.array([320, 160]) + POINT_OFFSETS * 16) * 2, atol=1e-3)
    assert detector.detect(image(1280, 640)) == [(box, score)]


def test_retinaface_decodes_the_hand_computed_face_whatever_the_output_names(tmp_path: Path) -> None:
    for names in [("loc", "conf", "landms"), ("output0", "592", "591")]:
        path = retinaface_graph(tmp_path / f"retinaface-{names[0]}.onnx", names)
        detector = RetinaFaceDetector(keypoint_detector_spec(path, "retinaface"), path, threads=1)
        [(box, score, points)] = detector.faces(image(640, 640))
        assert score == pytest.approx(0.9)
        # centre (361.6, 150.4), width 256, height 384
        np.testing.assert_allclose(box, [233.6, 0, 489.6, 342.4], atol=1e-3)  # y1 = −41.6 clipped to 0
        np.testing.assert_allclose(points, np.array([336, 176]) + POINT_OFFSETS * 51.2, atol=1e-3)


def test_yunet_decodes_the_hand_computed_face(tmp_path: Path) -> None:
    path = yunet_graph(tmp_path / "face_detection_yunet_2023mar.onnx")
    detector = YuNetDetector(keypoint_detector_spec(path, "yunet"), path, threads=1, min_score=0.5)
    [(box, score, points)] = detector.faces(image(1280, 1280))  # scale 0.5
    assert score == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_allclose(box, np.array([144, 56, 272, 216]) * 2, atol=1e-3)
    np.testing.assert_allclose(points, (POINT_OFFSETS + np.array([6, 4])) * 32 * 2, atol=1e-3)


def test_yunet_decodes_as_opencv_face_detector_yn_does(tmp_path: Path) -> None:
    # OpenCV's own YuNet decoder (cv2.FaceDetectorYN, face_detect.cpp) as the reference: random box and point
    # regressions everywhere, five faces scored 0.6–0.95 on cells of every stride, the rest below the threshold
    rng = np.random.default_rng(7)
    outputs, faces = {}, {8: [(10, 12), (60, 70)], 16: [(5, 30)], 32: [(4, 6), (15, 2)]}
    for stride in (8, 16, 32):
        side = 640 // stride
        cls, obj = rng.uniform(0, 0.2, (1, side * side, 1)), rng.uniform(0.5, 1, (1, side * side, 1))
        for r, c in faces[stride]:
            cls[0, r * side + c], obj[0, r * side + c] = rng.uniform(0.6, 0.95), 1.0
        bbox = np.concatenate([rng.uniform(0, 1, (1, side * side, 2)), rng.uniform(0.5, 1.5, (1, side * side, 2))], 2)
        kps = rng.uniform(-1, 1, (1, side * side, 10))
        outputs |= {f"cls_{stride}": cls, f"obj_{stride}": obj, f"bbox_{stride}": bbox, f"kps_{stride}": kps}
    ordered = {k: outputs[k] for kind in ("cls", "obj", "bbox", "kps") for k in outputs if k.startswith(kind)}
    path = constant_graph(tmp_path / "yunet.onnx", "input", (640, 640), ordered)
    ours = YuNetDetector(keypoint_detector_spec(path, "yunet"), path, threads=1, min_score=0.5).faces(image(640, 640))
    reference = cv2.FaceDetectorYN.create(str(path), "", (640, 640), 0.5, 0.4, 5000)
    _, theirs = reference.detect(np.ascontiguousarray(image(640, 640)[..., ::-1]))
    theirs = theirs[np.argsort(-theirs[:, 14])]
    assert len(ours) == len(theirs) == 5
    for (box, score, points), row in zip(ours, theirs, strict=True):
        x, y, w, h = row[:4]
        np.testing.assert_allclose(box, np.clip([x, y, x + w, y + h], 0, 640), atol=1e-2)
        np.testing.assert_allclose(points, row[4:14].reshape(5, 2), atol=1e-2)
        assert score == pytest.approx(row[14], abs=1e-4)


def test_a_graph_of_another_layout_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = yunet_graph(tmp_path / "yunet.onnx")
    with pytest.raises(ModelError, match=r"yunet\.onnx"):
        ScrfdDetector(keypoint_detector_spec(path, "scrfd"), path, threads=1)
    with pytest.raises(ModelError, match=r"yunet\.onnx"):
        RetinaFaceDetector(keypoint_detector_spec(path, "retinaface"), path, threads=1)
    with pytest.raises(ModelError, match="unknown detector family 'ssd'"):
        keypoint_detector_spec(path, "ssd")


def test_models_add_family_makes_a_profile_detector_with_its_own_landmarks(tmp_path: Path) -> None:
    path = scrfd_graph(tmp_path / "det_10g.onnx")
    store = tmp_path / "store"
    argv = ["models", "add", str(path), "--family", "scrfd"]
    r = CliRunner().invoke(app, argv, env={"FACEPRINT_MODEL_DIR": str(store)})
    assert r.exit_code == 0, r.output
    assert "added scrfd-det_10g (detector, scrfd)" in r.output
    registry = ModelRegistry(ModelStore(store))
    profile = resolve_profile(registry, detector="scrfd-det_10g")
    assert (profile.landmarks, profile.landmark_scheme) == ("scrfd-det_10g", "arcface5")

    pipeline = Pipeline(detector="scrfd-det_10g", model_dir=store)
    photo = image(1280, 640)
    [found] = pipeline.detect(photo)
    assert found.landmark_scheme == "arcface5"
    np.testing.assert_allclose(found.landmarks, (np.array([320, 160]) + POINT_OFFSETS * 16) * 2, atol=1e-3)
    # boxes from elsewhere (a tracker) get the detector's points of the face they cover
    np.testing.assert_allclose(pipeline.landmark(photo, [(found.box, 1.0)])[0].landmarks, found.landmarks, atol=1e-3)
    assert pipeline.chips(photo, [found]).shape == (1, 150, 150, 3)  # aligned for dlib-resnet-v1 from arcface5


def test_models_add_family_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    registry = ModelRegistry(ModelStore(tmp_path / "store"))
    bad = tmp_path / "notes.onnx"
    bad.write_text("not a graph")
    with pytest.raises(ModelError, match=r"notes\.onnx"):
        add_model(registry, bad, family="yunet")
    with pytest.raises(ModelError, match="no such file"):
        add_model(registry, tmp_path / "missing.onnx", family="scrfd")


def test_a_box_the_detector_does_not_find_gets_the_usual_point_positions(tmp_path: Path) -> None:
    path = scrfd_graph(tmp_path / "scrfd.onnx")
    points = DetectorPoints(ScrfdDetector(keypoint_detector_spec(path, "scrfd"), path, threads=1))
    box = np.array([[1000.0, 500.0, 1100.0, 620.0]])  # nowhere near the graph's one face, in the image or a crop
    [guess] = points.predict(image(1280, 640), box)
    assert (guess[:, 0] > 1000).all() and (guess[:, 0] < 1100).all() and (guess[:, 1] > 500).all()
    assert guess[0, 0] < guess[1, 0] and guess[2, 1] < guess[3, 1]  # left eye left of right eye, nose above mouth
