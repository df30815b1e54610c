"""Model families: which generic runtime reads a spec, and what a landmark family's points are.

Families: ``dlib-resnet`` (dlib's .dat converted to ONNX), ``arcface`` (any ArcFace-layout ONNX embedder),
``dlib-shape5`` and ``landmark68`` (landmarks), ``dlib-mmod``, ``dlib-hog``, ``ultraface`` and ``blazeface``
(detectors; BlazeFace's keypoints also serve as landmarks).
Only facts about specs live here; :mod:`faceprint.factory` (above the stages) loads the models.
"""

from __future__ import annotations

from faceprint.errors import ModelError
from faceprint.models.spec import ModelSpec

EMBEDDER_FAMILIES = ("dlib-resnet", "arcface")
LANDMARK_FAMILIES = {
    "dlib-shape5": "dlib5",
    "landmark68": "arcface5",
    "facemesh": "arcface5",
}  # family → landmark scheme it gives
DETECTOR_FAMILIES = ("dlib-mmod", "dlib-hog", "ultraface", "blazeface")
# detectors that find keypoints with each face (a profile with one uses them as its landmarks) → their scheme
KEYPOINT_DETECTOR_FAMILIES = {"blazeface": "arcface5"}
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
