"""Model families: which generic runtime reads a spec, and what a landmark family's points are.

Families: ``dlib-resnet`` (dlib's .dat converted to ONNX), ``arcface`` (any ArcFace-layout ONNX embedder),
``dlib-shape5``, ``landmark68`` and ``facemesh`` (landmarks), ``dlib-mmod``, ``dlib-hog``, ``ultraface`` and
``blazeface`` (detectors), and the detectors whose faces come with 5 points (:data:`KEYPOINT_DETECTOR_FAMILIES`:
``blazeface`` from the mediapipe pack; ``retinaface``, ``scrfd``, ``yunet`` for users' own files —
:func:`keypoint_detector_spec` writes the spec for one). Only facts about specs live here;
:mod:`faceprint.factory` (above the stages) loads the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from faceprint.errors import ModelError
from faceprint.models.catalogue import sha256_file
from faceprint.models.spec import ModelSpec, parse_spec

EMBEDDER_FAMILIES = ("dlib-resnet", "arcface")
LANDMARK_FAMILIES = {"dlib-shape5": "dlib5", "landmark68": "arcface5", "facemesh": "arcface5"}  # family → scheme
DETECTOR_FAMILIES = ("dlib-mmod", "dlib-hog", "ultraface", "blazeface", "retinaface", "scrfd", "yunet")
# detectors whose faces come with 5 points → their scheme: a profile with one of them uses its points instead
# of a landmark model (faceprint.factory.resolve_profile)
KEYPOINT_DETECTOR_FAMILIES = {
    "blazeface": "arcface5",
    "retinaface": "arcface5",
    "scrfd": "arcface5",
    "yunet": "arcface5",
}
# what `faceprint models add FILE --family F` writes into the spec: the layout's usual input colour and
# normalisation and its reference decoding thresholds (detect/retinaface.py, scrfd.py, yunet.py explain them)
_KEYPOINT_DEFAULTS: dict[str, dict[str, Any]] = {
    "retinaface": {
        "input": {"colour": "BGR", "mean": [104.0, 117.0, 123.0], "std": [1.0]},
        "options": {"score_threshold": 0.5, "nms_iou": 0.4},
        "what": "RetinaFace layout (loc/conf/landms heads over prior boxes)",
    },
    "scrfd": {
        "input": {"colour": "RGB", "mean": [127.5], "std": [128.0]},
        "options": {"score_threshold": 0.5, "nms_iou": 0.4},
        "what": "SCRFD layout (insightface: score/bbox/kps per stride 8, 16, 32)",
    },
    "yunet": {
        "input": {"colour": "BGR", "mean": [0.0], "std": [1.0]},
        "options": {"score_threshold": 0.9, "nms_iou": 0.3},
        "what": "YuNet layout (OpenCV: cls/obj/bbox/kps per stride 8, 16, 32)",
    },
}
DEFAULT_KEYPOINT_INPUT = 640  # input side for graphs with a dynamic height/width
LIVENESS_FAMILIES = ("fasnet",)  # anti-spoofing: a crop around the face box → P(live)


def check_task(spec: ModelSpec, task: str, families: tuple[str, ...] | dict[str, str]) -> None:
    """A :class:`ModelError` unless ``spec`` is a ``task`` model of one of ``families``."""
    if spec.task != task:
        raise ModelError(f"model {spec.id!r} is a {spec.task}, not a {task}")
    if spec.family not in families:
        raise ModelError(f"model {spec.id!r}: unknown {task} family {spec.family!r}; known: {', '.join(families)}")


def gives_landmarks(spec: ModelSpec) -> bool:
    """Whether ``spec`` can serve as a profile's landmark model: a landmark model, or a detector whose faces
    come with keypoints (BlazeFace)."""
    if spec.task == "detector":
        return spec.family in KEYPOINT_DETECTOR_FAMILIES
    return spec.task == "landmarks" and spec.family in LANDMARK_FAMILIES


def landmark_scheme(spec: ModelSpec) -> str:
    if spec.task == "detector" and spec.family in KEYPOINT_DETECTOR_FAMILIES:
        return KEYPOINT_DETECTOR_FAMILIES[spec.family]
    check_task(spec, "landmarks", LANDMARK_FAMILIES)
    return LANDMARK_FAMILIES[spec.family]


def keypoint_detector_spec(path: Path, family: str, model_id: str | None = None) -> ModelSpec:
    """A user spec for an ONNX detector file of a keypoint family: input size from the graph (640×640 when it is
    dynamic), colour, normalisation and thresholds from the family's defaults; the file is loaded by the
    caller before the spec is accepted."""
    if family not in _KEYPOINT_DEFAULTS:
        raise ModelError(f"{path}: unknown detector family {family!r}; known: {', '.join(_KEYPOINT_DEFAULTS)}")
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from None
    dims = [d.dim_value or None for d in graph.input[0].type.tensor_type.shape.dim] if graph.input else []
    if len(dims) != 4:
        raise ModelError(f"{path}: a {family} detector has one N×3×H×W input, this graph's is {dims}")
    height, width = dims[2] or DEFAULT_KEYPOINT_INPUT, dims[3] or DEFAULT_KEYPOINT_INPUT
    defaults = _KEYPOINT_DEFAULTS[family]
    stem = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in path.stem.lower()).strip("-._")
    document = {
        "id": model_id or f"{family}-{stem}"[:64],
        "task": "detector",
        "family": family,
        "licence": "user-supplied (see the file's own licence)",
        "provenance": f"added by the user from {path.name}",
        "description": f"{defaults['what']}, {width}×{height} input, boxes and 5 landmarks",
        "file": {"name": path.name, "sha256": sha256_file(path)},
        "source": {"kind": "user", "path": path.name},
        "input": {"width": width, "height": height, **defaults["input"]},
        "options": dict(defaults["options"]),
    }
    return parse_spec(document, str(path))
