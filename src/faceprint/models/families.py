"""Model families: which generic runtime reads a spec, and what a landmark family's points are.

Families: ``dlib-resnet`` (dlib's .dat converted to ONNX), ``arcface`` (any ArcFace-layout ONNX embedder),
``dlib-shape5`` and ``landmark68`` (landmarks), ``dlib-mmod``, ``dlib-hog`` and ``ultraface`` (detectors).
Only facts about specs live here; :mod:`faceprint.factory` (above the stages) loads the models.
"""

from __future__ import annotations

from faceprint.errors import ModelError
from faceprint.models.spec import ModelSpec

EMBEDDER_FAMILIES = ("dlib-resnet", "arcface")
LANDMARK_FAMILIES = {"dlib-shape5": "dlib5", "landmark68": "arcface5"}  # family → landmark scheme it gives
DETECTOR_FAMILIES = ("dlib-mmod", "dlib-hog", "ultraface")
LIVENESS_FAMILIES = ("fasnet",)  # anti-spoofing: a crop around the face box → P(live)


def check_task(spec: ModelSpec, task: str, families: tuple[str, ...] | dict[str, str]) -> None:
    """A :class:`ModelError` unless ``spec`` is a ``task`` model of one of ``families``."""
    if spec.task != task:
        raise ModelError(f"model {spec.id!r} is a {spec.task}, not a {task}")
    if spec.family not in families:
        raise ModelError(f"model {spec.id!r}: unknown {task} family {spec.family!r}; known: {', '.join(families)}")


def landmark_scheme(spec: ModelSpec) -> str:
    check_task(spec, "landmarks", LANDMARK_FAMILIES)
    return LANDMARK_FAMILIES[spec.family]
