"""The mediapipe pack end to end: installed from the PyPI wheel (pip download; pip's cache serves it again),
converted from TFLite to ONNX by faceprint's own reader and checked against the TFLite interpreter
(``ai-edge-litert``, test-only) on real photos, and BlazeFace's decoding (anchors, weighted NMS, keypoints)
checked on the shared photos' known faces and dlib's labelled boxes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.detect.blazeface import (
    BlazeFaceDetector,
    BlazeFaceFallback,
    arcface5_from_keypoints,
    ssd_anchors,
    weighted_nms,
)
from faceprint.errors import ModelError
from faceprint.factory import (
    DetectorOptions,
    load_blazeface,
    load_detector,
    load_landmarker,
    resolve_profile,
    tflite_onnx_path,
)
from faceprint.image import load_image
from faceprint.models.install import install_pack
from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from faceprint.models.tflite_onnx import TfliteGraph, _Builder, _Op, _Tensor, convert_tflite, read_tflite
from faceprint.pipeline import Pipeline, PipelineConfig
from tests.conftest import DATA, GROUPS, IDENTITIES

MODELS = ("mediapipe-blazeface-short", "mediapipe-blazeface-full", "mediapipe-facemesh")
FILES = {"face_detection_short_range.tflite", "face_detection_full_range_sparse.tflite", "face_landmark.tflite"}
DETECTORS = ("mediapipe-blazeface-short", "mediapipe-blazeface-full")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """`faceprint models install mediapipe` into a fresh model store, as a user runs it."""
    root = tmp_path_factory.mktemp("mediapipe-store")
    result = CliRunner().invoke(app, ["models", "install", "mediapipe"], env={"FACEPRINT_MODEL_DIR": str(root)})
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def registry(store: Path) -> ModelRegistry:
    return ModelRegistry(ModelStore(store))


@pytest.fixture(scope="module")
def detectors(registry: ModelRegistry) -> dict[str, BlazeFaceDetector]:
    return {model_id: load_blazeface(registry, model_id, threads=1) for model_id in DETECTORS}


def test_install_keeps_only_the_three_sha256_checked_tflite_files(store: Path, registry: ModelRegistry) -> None:
    assert {p.name for p in (store / "files").rglob("*") if p.is_file()} == FILES
    for model_id in MODELS:
        assert registry.status(registry.get(model_id)).available
        registry.path(model_id)  # the sha256 again


def test_install_from_a_wheel_fetched_elsewhere(tmp_path: Path) -> None:
    """`--wheel FILE`: the machine without network gets the wheel from one with it (here: pip's cache)."""
    pack = ModelRegistry(ModelStore(tmp_path / "unused")).pack("mediapipe")
    cmd = [sys.executable, "-m", "pip", "download", f"mediapipe=={pack['version']}", "--no-deps"]
    cmd += ["--only-binary=:all:", "--platform", pack["platform"], "--python-version", pack["python_version"]]
    cmd += ["--dest", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    env = {"FACEPRINT_MODEL_DIR": str(tmp_path / "store")}
    result = CliRunner().invoke(app, ["models", "install", "mediapipe", "--wheel", str(wheel)], env=env)
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "store" / "files").rglob("*") if p.is_file()} == FILES


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("mediapipe/modules/face_detection/face_detection_short_range.tflite", b"not a model")
    registry = ModelRegistry(ModelStore(tmp_path / "store"))
    with pytest.raises(ModelError, match="refusing to install it"):
        install_pack(registry, "mediapipe", wheel=fake)
    with pytest.raises(ModelError, match="give --wheel"):
        install_pack(registry, "mediapipe", tarball=fake)
    assert not (tmp_path / "store").exists()


def test_the_graphs_use_only_the_converted_operators(registry: ModelRegistry) -> None:
    ops = {model_id: read_tflite(registry.path(model_id)).op_counts() for model_id in MODELS}
    assert ops["mediapipe-blazeface-short"]["CONV_2D"] == 21
    assert ops["mediapipe-blazeface-full"]["DENSIFY"] == 46  # sparse weights, densified when read
    assert ops["mediapipe-facemesh"]["PRELU"] == 23


def test_an_operator_or_weight_type_the_converter_does_not_know_is_a_clear_error() -> None:
    tensors = [
        _Tensor("x", (1, 8, 8, 3), np.float32, None),
        _Tensor("y", (1, 8, 8, 3), np.float32, None),
        _Tensor("w", (4, 1, 1, 3), np.int8, np.ones((4, 1, 1, 3), np.int8)),
    ]
    graph = TfliteGraph(tensors, [_Op("SOFTMAX", [0], [1], None), _Op("DEQUANTIZE", [2], [1], None)], [0], [1])
    with pytest.raises(ModelError, match="operator SOFTMAX is not supported"):
        _Builder(graph).convert(graph.ops[0])
    with pytest.raises(ModelError, match="int8 weights"):
        _Builder(graph).convert(graph.ops[1])


def _parity_inputs() -> list[np.ndarray]:
    photos = [*sorted(IDENTITIES.glob("person0[0-2]/*.jpg"))[:5], *sorted(GROUPS.glob("*.jpg"))]
    return [load_image(p).pixels for p in photos]


@pytest.mark.parametrize("model_id", MODELS)
def test_conversion_matches_the_tflite_interpreter_on_real_photos(registry: ModelRegistry, model_id: str) -> None:
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:  # fail, not skip: without the oracle the conversion would go unchecked
        pytest.fail("ai-edge-litert is not installed: `pip install -e .[test]` brings the TFLite interpreter")
    path = registry.path(model_id)
    session = ort.InferenceSession(convert_tflite(path).SerializeToString(), providers=["CPUExecutionProvider"])
    interpreter = litert.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    size = int(inp["shape"][1])
    spec = registry.get(model_id)
    assert spec.input is not None and spec.input.width == size
    worst: dict[str, float] = {}
    for pixels in _parity_inputs():
        x = (cv2.resize(pixels, (size, size)).astype(np.float32) - spec.input.mean[0]) / spec.input.std[0]
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        expected = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, {"input": x.transpose(2, 0, 1)[None]}), strict=True))
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape
            worst[name] = max(worst.get(name, 0.0), float(np.abs(got[name] - value).max()))
    # measured: ≤ 3.7e-4 on score logits, ≤ 1.5e-4 on box regressors of up to ±170 input pixels
    assert max(worst.values()) < 2e-3, worst


def test_conversion_is_cached(registry: ModelRegistry) -> None:
    first = tflite_onnx_path(registry, "mediapipe-blazeface-short")
    mtime = first.stat().st_mtime_ns
    assert tflite_onnx_path(registry, "mediapipe-blazeface-short") == first
    assert first.stat().st_mtime_ns == mtime


def test_anchors_are_mediapipes() -> None:
    short = ssd_anchors(128, [8, 16, 16, 16], [2, 2, 2, 2])
    full = ssd_anchors(192, [4], [1])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    np.testing.assert_allclose(short[:3], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])
    np.testing.assert_allclose(short[512:519], [[0.5 / 8, 0.5 / 8]] * 6 + [[1.5 / 8, 0.5 / 8]])
    np.testing.assert_allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_weighted_nms_blends_the_overlapping_boxes_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float64)
    keypoints = np.arange(3 * 6 * 2, dtype=np.float64).reshape(3, 6, 2)
    scores = np.array([0.9, 0.6, 0.7])
    out_boxes, out_points, out_scores = weighted_nms(boxes, keypoints, scores, 0.3)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])
    np.testing.assert_allclose(out_boxes[0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)
    np.testing.assert_allclose(out_points[0], (0.9 * keypoints[0] + 0.6 * keypoints[1]) / 1.5)
    np.testing.assert_allclose(out_boxes[1], boxes[2])


def test_keypoints_map_to_arcface5_with_mouth_corners_along_the_eye_axis() -> None:
    keypoints = np.array([[[30, 40], [70, 40], [50, 60], [50, 80], [10, 50], [90, 50]]], np.float64)
    points = arcface5_from_keypoints(keypoints)[0]
    np.testing.assert_allclose(points[:3], [[30, 40], [70, 40], [50, 60]])
    np.testing.assert_allclose(points[3:], [[50 - 0.375 * 40, 80 - 0.062 * 40], [50 + 0.375 * 40, 80 - 0.062 * 40]])
    # a face seen upside down keeps image-left first
    np.testing.assert_allclose(arcface5_from_keypoints(keypoints[:, [1, 0, 2, 3, 5, 4]])[0], points)


@pytest.mark.parametrize("model_id", DETECTORS)
def test_one_face_in_every_identity_photo_with_keypoints_in_place(
    detectors: dict[str, BlazeFaceDetector], model_id: str
) -> None:
    detector = detectors[model_id]
    missed = []
    for photo in sorted(IDENTITIES.glob("*/*.jpg")):
        pixels = load_image(photo).pixels
        boxes, keypoints, scores = detector.detect_keypoints(pixels)
        if len(boxes) == 0:
            missed.append(photo.name)
            continue
        x1, y1, x2, y2 = boxes[0]
        k = keypoints[0]
        # eyes above the nose tip above the mouth centre, all inside the box
        assert k[0, 1] < k[3, 1] and k[1, 1] < k[3, 1] and k[2, 1] < k[3, 1], photo
        assert (k[:4, 0] > x1).all() and (k[:4, 0] < x2).all() and (k[:4, 1] > y1).all() and (k[:4, 1] < y2).all()
        assert 0.05 < (x2 - x1) / max(pixels.shape[:2]) < 0.9 and scores[0] >= detector.min_score
    assert missed == []


def _dlib_boxes() -> dict[Path, list[tuple[float, float, float, float]]]:
    out: dict[Path, list[tuple[float, float, float, float]]] = {}
    for xml in ("training.xml", "testing.xml"):
        for image in ET.parse(DATA / "dlib_faces" / xml).getroot().iter("image"):
            boxes = out.setdefault(DATA / "dlib_faces" / image.get("file", ""), [])
            for b in image.iter("box"):
                left, top, w, h = (float(b.get(k, 0)) for k in ("left", "top", "width", "height"))
                boxes.append((left, top, left + w, top + h))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_full_range_finds_dlibs_labelled_faces(detectors: dict[str, BlazeFaceDetector]) -> None:
    detector = detectors["mediapipe-blazeface-full"]
    found = total = 0
    for photo, truth in _dlib_boxes().items():
        boxes, _, _ = detector.detect_keypoints(load_image(photo).pixels)
        total += len(truth)
        found += sum(any(_iou(np.array(t), b) >= 0.3 for b in boxes) for t in truth)
    assert total == 43 and found >= 0.6 * total, (found, total)
    boxes, _, _ = detector.detect_keypoints(load_image(DATA / "dlib_faces" / "dogs.jpg").pixels)
    assert len(boxes) == 0


def test_couple_and_selfie(detectors: dict[str, BlazeFaceDetector]) -> None:
    for model_id, detector in detectors.items():
        assert len(detector.detect(load_image(GROUPS / "couple.jpg").pixels)) == 2, model_id
        assert len(detector.detect(load_image(GROUPS / "selfie-many-people.jpg").pixels)) >= 4, model_id


def test_profile_uses_the_detectors_own_keypoints(registry: ModelRegistry, store: Path) -> None:
    profile = resolve_profile(registry, detector="mediapipe-blazeface-short")
    assert profile.landmarks == "mediapipe-blazeface-short" and profile.landmark_scheme == "arcface5"
    assert resolve_profile(registry, detector="mediapipe-blazeface-full", landmarks="dlib-shape5").landmarks == (
        "dlib-shape5"
    )
    with pytest.raises(ModelError, match="unknown landmark model"):
        resolve_profile(registry, landmarks="faceplugin-ultraface")
    # boxes from elsewhere (a tracker, an API caller) get the same points by re-running BlazeFace on their crops
    pipe = Pipeline(PipelineConfig(detector="mediapipe-blazeface-short", model_dir=store, threads=1))
    image = load_image(GROUPS / "couple.jpg")
    faces = pipe.detect(image)
    assert len(faces) == 2 and all(f.landmark_scheme == "arcface5" for f in faces)
    again = load_landmarker(registry, "mediapipe-blazeface-short", threads=1).predict(
        image.pixels, np.array([f.box for f in faces]) / image.scale
    )
    for face, points in zip(faces, again * image.scale, strict=True):
        eyes = np.linalg.norm(face.landmarks[1] - face.landmarks[0])
        # the crop shows the face larger than the whole-photo pass did: measured ≤ 0.15 of the eye distance
        assert np.abs(points - face.landmarks).max() < 0.2 * eyes


def test_models_use_makes_blazeface_the_default_detector(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(store, root)
    env = {"FACEPRINT_MODEL_DIR": str(root)}
    result = CliRunner().invoke(app, ["models", "use", "mediapipe-blazeface-full"], env=env)
    assert result.exit_code == 0, result.output
    assert "default detector: mediapipe-blazeface-full" in result.output
    profile = resolve_profile(ModelRegistry(ModelStore(root)))
    assert (profile.detector, profile.landmarks) == ("mediapipe-blazeface-full", "mediapipe-blazeface-full")
    result = CliRunner().invoke(app, ["detect", str(GROUPS / "couple.jpg"), "--json"], env=env)
    assert result.exit_code == 0 and result.output.count('"box"') == 2, result.output
    assert CliRunner().invoke(app, ["models", "use", "cascade"], env=env).exit_code == 0
    assert resolve_profile(ModelRegistry(ModelStore(root))).detector == "cascade"
    bad = CliRunner().invoke(app, ["models", "use", "mediapipe-facemesh"], env=env)
    assert bad.exit_code != 0 and "not an embedder" in bad.output


def test_blazeface_pipeline_verifies_the_shared_identities(store: Path) -> None:
    pipe = Pipeline(PipelineConfig(detector="mediapipe-blazeface-full", model_dir=store, threads=1))
    vectors, labels = [], []
    for person in ("person00", "person01", "person02"):
        for photo in sorted((IDENTITIES / person).glob("*.jpg"))[:3]:
            faces = pipe.embed(photo)
            vectors.append(max(faces, key=lambda f: f.detection.area if f.detection else 0).vector)
            labels.append(person)
    v = np.stack(vectors)
    same = np.equal.outer(labels, labels)
    distance = np.linalg.norm(v[:, None] - v[None], axis=-1)
    assert distance[same].max() < distance[~same].min()


def test_face_mesh_gives_arcface5_points_that_agree_with_the_keypoints(registry: ModelRegistry, store: Path) -> None:
    detector = load_blazeface(registry, "mediapipe-blazeface-full", threads=1)
    mesh = load_landmarker(registry, "mediapipe-facemesh", threads=1)
    assert resolve_profile(registry, landmarks="mediapipe-facemesh").landmark_scheme == "arcface5"
    for photo in sorted(IDENTITIES.glob("person0[0-3]/*.jpg")):
        pixels = load_image(photo).pixels
        raw, keypoints = detector.detect_landmarks(pixels)
        points = mesh.predict(pixels, np.array([raw[0][0]]))[0]
        eyes = np.linalg.norm(keypoints[0, 1] - keypoints[0, 0])
        # eye centres and nose tip: two models, the same anatomy (mouth corners: derived on one side)
        assert np.linalg.norm(points[:3] - keypoints[0, :3], axis=1).max() < 0.25 * eyes, photo
        assert points[3, 0] < points[2, 0] < points[4, 0] and points[3, 1] > points[2, 1], photo


def test_grey_and_tightly_cropped_faces(detectors: dict[str, BlazeFaceDetector]) -> None:
    photos = sorted((DATA / "orl" / "s1").glob("*.pgm"))
    assert photos
    for photo in photos:  # 92×112 grey, no margin around the face: measured 10/10 for short range
        with PILImage.open(photo) as im:
            grey = np.asarray(im.convert("L"))
        boxes, keypoints, _ = detectors["mediapipe-blazeface-short"].detect_keypoints(grey)
        assert len(boxes) == 1, photo
        assert keypoints[0, 0, 0] < keypoints[0, 2, 0] < keypoints[0, 1, 0]  # nose between the eyes


#: One of the 52 LFW photos (large, close faces) where full range finds no face and short range finds it
#: (docs/models.md, "BlazeFace as the default detector?": the ``failed`` list of full range's LFW cache).
FULL_RANGE_MISS = DATA / "lfw" / "Frank_Cassell" / "Frank_Cassell_0001.jpg"


def test_blazeface_runs_short_range_only_where_full_range_finds_no_face(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = load_detector(registry, "blazeface", DetectorOptions(threads=1))
    assert isinstance(detector, BlazeFaceFallback) and detector.model_id == "mediapipe-blazeface-full"
    miss = load_image(FULL_RANGE_MISS).pixels
    expected = detector.short.detect(miss)
    short_runs: list[tuple[int, ...]] = []
    short_range = detector.short.detect_keypoints

    def counted(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        short_runs.append(image.shape)
        return short_range(image)

    monkeypatch.setattr(detector.short, "detect_keypoints", counted)
    assert detector.full.detect(miss) == []
    raw, points = detector.detect_landmarks(miss)
    assert len(short_runs) == 1 and len(raw) == 1 and points.shape == (1, 5, 2)
    (x1, y1, x2, y2), score = raw[0]
    assert score >= 0.5 and x1 < 125 < x2 and y1 < 125 < y2 and x2 - x1 > 100  # LFW's centred, close face
    assert raw == expected  # short range's own face, box and score unchanged
    for photo in ("couple.jpg", "selfie-many-people.jpg"):  # full range finds faces: short range never runs
        pixels = load_image(GROUPS / photo).pixels
        assert detector.detect(pixels) == detector.full.detect(pixels) != []
    assert len(short_runs) == 1


@pytest.mark.parametrize("landmarks", [None, "dlib-shape5"])
def test_blazeface_pipeline_aligns_a_full_range_miss(store: Path, landmarks: str | None) -> None:
    pipe = Pipeline(PipelineConfig(detector="blazeface", landmarks=landmarks, model_dir=store, threads=1))
    own = landmarks is None  # BlazeFace's own keypoints, from the pass that found the face
    assert pipe.profile.landmarks == ("mediapipe-blazeface-full" if own else "dlib-shape5")
    assert pipe.profile.detector_boxes == "mediapipe-blazeface-full"
    faces = pipe.embed(FULL_RANGE_MISS)
    assert len(faces) == 1 and faces[0].detection is not None
    assert faces[0].detection.landmark_scheme == ("arcface5" if own else "dlib5")
    x1, y1, x2, y2 = faces[0].detection.box
    points = faces[0].detection.landmarks  # every point on the face, none at the box's edge
    assert np.all((points > [x1, y1]) & (points < [x2, y2])) and np.ptp(points[:, 0]) > 0.2 * (x2 - x1)


def test_models_use_blazeface(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(store, root)
    env = {"FACEPRINT_MODEL_DIR": str(root)}
    result = CliRunner().invoke(app, ["models", "use", "blazeface"], env=env)
    assert result.exit_code == 0, result.output
    assert "default detector: blazeface (landmarks mediapipe-blazeface-full)" in result.output
    profile = resolve_profile(ModelRegistry(ModelStore(root)))
    assert (profile.detector, profile.detector_boxes) == ("blazeface", "mediapipe-blazeface-full")
    result = CliRunner().invoke(app, ["detect", str(FULL_RANGE_MISS), "--json"], env=env)
    assert result.exit_code == 0 and result.output.count('"box"') == 1, result.output
    empty = {"FACEPRINT_MODEL_DIR": str(tmp_path / "empty")}  # without the mediapipe pack: how to install it
    bad = CliRunner().invoke(app, ["models", "use", "blazeface"], env=empty)
    assert bad.exit_code != 0 and "mediapipe" in bad.output, bad.output
