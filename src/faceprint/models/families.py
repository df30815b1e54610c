"""From a spec to a loaded model: each ``family`` names the generic runtime that reads it.

Families: ``dlib-resnet`` (dlib's .dat converted to ONNX), ``arcface`` (any ArcFace-layout ONNX embedder),
``dlib-shape5`` and ``landmark68`` (landmarks), ``dlib-mmod``, ``dlib-hog`` and ``ultraface`` (detectors).
Loading is explicit and returns a new object each time; callers own it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faceprint.errors import ModelError
from faceprint.models.registry import ModelRegistry
from faceprint.models.spec import ModelSpec

EMBEDDER_FAMILIES = ("dlib-resnet", "arcface")
LANDMARK_FAMILIES = {"dlib-shape5": "dlib5", "landmark68": "arcface5"}  # family → landmark scheme it gives
DETECTOR_FAMILIES = ("dlib-mmod", "dlib-hog", "ultraface")


def _need(spec: ModelSpec, task: str, families: tuple[str, ...] | dict[str, str]) -> None:
    if spec.task != task:
        raise ModelError(f"model {spec.id!r} is a {spec.task}, not a {task}")
    if spec.family not in families:
        raise ModelError(f"model {spec.id!r}: unknown {task} family {spec.family!r}; known: {', '.join(families)}")


def landmark_scheme(spec: ModelSpec) -> str:
    _need(spec, "landmarks", LANDMARK_FAMILIES)
    return LANDMARK_FAMILIES[spec.family]


def load_embedder(registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None) -> Any:
    spec = registry.get(model_id)
    _need(spec, "embedder", EMBEDDER_FAMILIES)
    if spec.family == "dlib-resnet":
        from faceprint.embed.dlib_resnet import DlibResNetEmbedder

        if model_id != DlibResNetEmbedder.model_id:
            raise ModelError(f"model {model_id!r}: the dlib-resnet family has one model, {DlibResNetEmbedder.model_id}")
        return DlibResNetEmbedder(device=device, threads=threads)
    from faceprint.embed.onnx_arcface import OnnxEmbedder

    return OnnxEmbedder(spec, registry.path(model_id), device=device, threads=threads)


def load_landmarker(
    registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None,
    detector: str | None = None,
) -> Any:  # fmt: skip
    """An object with ``predict(image, boxes) → N×5×2`` in the scheme :func:`landmark_scheme` names;
    ``detector`` (a model id) says whose boxes it will get."""
    spec = registry.get(model_id)
    landmark_scheme(spec)
    if spec.family == "dlib-shape5":
        from faceprint.align.shape_predictor import ShapePredictor5

        return ShapePredictor5()
    from faceprint.align.landmark68 import Landmark68

    return Landmark68(spec, registry.path(model_id), device=device, threads=threads, detector=detector)


def load_onnx_detector(
    registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None,
    min_score: float | None = None,
) -> Any:  # fmt: skip
    """Spec-driven ONNX detectors (the dlib ones are built by the pipeline with their own options)."""
    spec = registry.get(model_id)
    _need(spec, "detector", ("ultraface",))
    from faceprint.detect.onnx_ultraface import UltraFaceDetector

    return UltraFaceDetector(spec, registry.path(model_id), device=device, threads=threads, min_score=min_score)


def check_model(spec: ModelSpec, path: Path) -> None:
    """Load ``path`` as ``spec`` once (raises a :class:`ModelError` when they do not fit together)."""
    if spec.task == "embedder" and spec.family == "arcface":
        from faceprint.embed.onnx_arcface import OnnxEmbedder

        OnnxEmbedder(spec, path, threads=1)
    elif spec.task == "landmarks" and spec.family == "landmark68":
        from faceprint.align.landmark68 import Landmark68

        Landmark68(spec, path, threads=1)
    elif spec.task == "detector" and spec.family == "ultraface":
        from faceprint.detect.onnx_ultraface import UltraFaceDetector

        UltraFaceDetector(spec, path, threads=1)
    else:
        raise ModelError(f"model {spec.id!r}: family {spec.family!r} ({spec.task}) cannot be added as a file")
