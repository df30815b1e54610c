"""From a model choice to working parts: the one place that turns model ids into a pipeline's models.

A *profile* is what a model choice means end to end: the embedder, the detector and landmark model whose
boxes and points it was meant to be used with, and the calibration table that turns a false-match rate into
a threshold for it. Every interface resolves a choice here — the library's :class:`~faceprint.pipeline.
Pipeline`, the CLI, the HTTP service (``--model``/``FACEPRINT_MODEL``), Ray Serve, bulk enrolment, migration
and evaluation — so the same choice gives the same models everywhere.

Rules (:func:`resolve_profile`): the embedder is the one asked for, else the one ``faceprint models use``
chose, else ``dlib-resnet-v1``; the detector is the one asked for, else the one ``faceprint models use
DETECTOR`` chose, else the embedder's (``[profile] detector``) when installed, else the cascade; the landmark
model is the one asked for, else the detector's own keypoints when it has them (BlazeFace), else the
embedder's (``[align] landmarks``) when installed, else dlib's 5-point predictor. This module sits above
the stages (``detect/``, ``align/``, ``embed/``) and below the pipeline: ``models/`` never imports the stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceprint.align.facemesh import FaceMesh
from faceprint.align.landmark68 import Landmark68
from faceprint.align.shape_predictor import ShapePredictor5
from faceprint.detect.base import Detector
from faceprint.detect.blazeface import BlazeFaceDetector, BlazeFaceFallback, BlazeFaceKeypoints
from faceprint.detect.cascade import CascadeDetector
from faceprint.detect.confirm import ConfirmedDetector
from faceprint.detect.hog import HOGDetector
from faceprint.detect.keypoints import DetectorPoints, KeypointDetector
from faceprint.detect.mmod import MMODDetector
from faceprint.detect.onnx_ultraface import UltraFaceDetector
from faceprint.detect.retinaface import RetinaFaceDetector
from faceprint.detect.scrfd import ScrfdDetector
from faceprint.detect.yunet import YuNetDetector
from faceprint.embed.base import Embedder
from faceprint.embed.dlib_resnet import DlibResNetEmbedder
from faceprint.embed.onnx_arcface import OnnxEmbedder
from faceprint.errors import CalibrationMissing, FaceprintError, ModelError
from faceprint.liveness.base import LivenessUnavailable
from faceprint.liveness.calibration import LivenessCalibration, shipped_liveness_calibration
from faceprint.liveness.fasnet import FasNetLiveness
from faceprint.matching import Calibration, shipped_calibration
from faceprint.models.convert import converted_model
from faceprint.models.families import (
    EMBEDDER_FAMILIES,
    KEYPOINT_DETECTOR_FAMILIES,
    LANDMARK_FAMILIES,
    LIVENESS_FAMILIES,
    check_task,
    gives_landmarks,
    keypoint_detector_spec,
    landmark_scheme,
)
from faceprint.models.install import Installed, register_model
from faceprint.models.quantize import has_int8, int8_model
from faceprint.models.registry import ModelRegistry
from faceprint.models.spec import ModelSpec
from faceprint.models.tflite_onnx import CONVERTER_VERSION as TFLITE_CONVERTER
from faceprint.models.tflite_onnx import convert_tflite

# Short names of the built-in detectors (any detector model id also works): "cascade" = MTCNN proposals
# confirmed by dlib's CNN (detect/cascade.py), "mmod" = dlib's CNN scanning the whole photo, "hog" = dlib's
# HOG (face_recognition's default, needs dlib-bin), "blazeface" = BlazeFace full range, and short range on a
# photo where full range finds no face (detect/blazeface.py BlazeFaceFallback; the mediapipe pack).
DETECTORS = ("cascade", "mmod", "hog", "blazeface")
FALLBACK_DETECTOR = "cascade"
FALLBACK_LANDMARKS = "dlib-shape5"
# whose boxes each built-in detector returns (the landmark models adapt to it): the cascade's are MMOD's
_DETECTOR_IDS = {"cascade": "dlib-mmod", "mmod": "dlib-mmod", "hog": "dlib-hog"}
# the pack models a short name runs (its boxes and keypoints are the first one's), when not faceprint's own
_DETECTOR_MODELS = {"blazeface": ("mediapipe-blazeface-full", "mediapipe-blazeface-short")}
# the keypoint families' classes (detect/retinaface.py, scrfd.py, yunet.py): detectors that give 5 points too
_KEYPOINT_DETECTORS: dict[str, type[KeypointDetector]] = {
    "retinaface": RetinaFaceDetector,
    "scrfd": ScrfdDetector,
    "yunet": YuNetDetector,
}


class CalibrationFileError(FaceprintError):
    """An operator's calibration table cannot be read or belongs to another model."""


@dataclass(frozen=True)
class ModelProfile:
    """A resolved model choice: which embedder, detector and landmark model run together."""

    embedder: str
    detector: str  # a short name of :data:`DETECTORS` or a detector model id
    landmarks: str
    landmark_scheme: str  # "dlib5" | "arcface5": the 5 points the landmark model gives
    dim: int  # the embedder's output dimension
    mirror: bool = False  # average in the mirrored chip's embedding (the spec's [options] mirror)

    @property
    def detector_boxes(self) -> str:
        """The model id whose boxes the detector returns (``mmod`` and ``cascade`` → ``dlib-mmod``)."""
        return _DETECTOR_IDS.get(self.detector) or detector_models(self.detector)[0]

    def to_dict(self) -> dict[str, object]:
        return {
            "embedder": self.embedder,
            "detector": self.detector,
            "landmarks": self.landmarks,
            "landmark_scheme": self.landmark_scheme,
            "dim": self.dim,
            "mirror": self.mirror,
        }


def detector_models(detector: str) -> tuple[str, ...]:
    """The installable models a detector choice runs: the short name ``blazeface`` → both BlazeFace models
    (full range first), a detector model id → itself, faceprint's own dlib and MTCNN detectors → none."""
    if detector in _DETECTOR_MODELS:
        return _DETECTOR_MODELS[detector]
    return () if detector in DETECTORS else (detector,)


def _available(registry: ModelRegistry, model_id: str | None) -> bool:
    if not model_id:
        return False
    specs = registry.specs()
    return all(m in specs and registry.status(specs[m]).available for m in detector_models(model_id))


def resolve_profile(
    registry: ModelRegistry,
    embedder: str | None = None,
    *,
    detector: str | None = None,
    landmarks: str | None = None,
    mirror: bool | None = None,
) -> ModelProfile:
    """The profile for a model choice (see the module docstring); unknown ids are a :class:`ModelError`
    listing the known ones. Whether the embedder's weights are installed is checked when it is loaded.
    ``mirror`` None follows the embedder spec's ``[options] mirror`` (measured per model: docs/evaluation.md)."""
    specs = registry.specs()
    embedder = embedder or registry.default_embedder()
    embedders = [i for i, s in specs.items() if s.task == "embedder"]
    if embedder not in embedders:
        raise ModelError(f"unknown embedder {embedder!r}; choose one of {', '.join(embedders)}")
    spec = specs[embedder]
    check_task(spec, "embedder", EMBEDDER_FAMILIES)
    if detector is None and _available(registry, chosen := registry.store.default_detector()):
        detector = chosen  # `faceprint models use DETECTOR`
    if detector is None:
        detector = spec.detector if _available(registry, spec.detector) else FALLBACK_DETECTOR
    detectors = [i for i, s in specs.items() if s.task == "detector" and i not in _DETECTOR_IDS.values()]
    if detector not in DETECTORS and detector not in detectors:
        raise ModelError(f"unknown detector {detector!r}; choose one of {', '.join([*DETECTORS, *detectors])}")
    boxes = _DETECTOR_IDS.get(detector) or detector_models(detector)[0]
    if landmarks is None and boxes in specs and gives_landmarks(specs[boxes]):
        landmarks = boxes  # a keypoint detector (BlazeFace, RetinaFace, SCRFD, YuNet): its own points
    if landmarks is None:
        landmarks = spec.landmarks if _available(registry, spec.landmarks) else FALLBACK_LANDMARKS
    if landmarks not in specs or not gives_landmarks(specs[landmarks]):
        known = ", ".join(i for i, s in specs.items() if gives_landmarks(s))
        raise ModelError(f"unknown landmark model {landmarks!r}; choose one of {known}")
    assert spec.output_dim is not None  # embedder specs always state it (checked when parsed)
    if mirror is None:
        mirror = bool(spec.options.get("mirror", False))
    return ModelProfile(embedder, detector, landmarks, landmark_scheme(specs[landmarks]), spec.output_dim, mirror)


@dataclass(frozen=True)
class DetectorOptions:
    """How the detector of a profile is run (see :class:`~faceprint.pipeline.PipelineConfig`)."""

    device: str = "cpu"
    threads: int | None = None
    upsample: int | None = None
    min_face: float | None = 40.0
    max_work_pixels: float = 2e6
    min_score: float | None = None
    precision: str = "fp32"  # "int8": the detector's quantized graph when one ships (see _weights)


def load_detector(registry: ModelRegistry, detector: str, options: DetectorOptions) -> Detector:
    """A new detector object for ``detector`` (a short name of :data:`DETECTORS` or a detector model id)."""
    o = options
    if detector == "hog":
        return HOGDetector(upsample=1 if o.upsample is None else o.upsample)
    if detector == "cascade" and o.upsample is None:
        kwargs: dict[str, Any] = {"device": o.device, "threads": o.threads, "precision": o.precision}
        if o.min_face is not None:
            kwargs["min_face"] = o.min_face
        if o.min_score is not None:
            kwargs["min_score"] = o.min_score
        return CascadeDetector(**kwargs)
    if detector in ("mmod", "cascade"):  # "cascade" with an explicit upsample: dlib's own scales, full scan
        kwargs = {"device": o.device, "threads": o.threads, "precision": o.precision}
        if o.upsample is not None:
            kwargs["upsample"] = o.upsample
        else:
            kwargs["min_face"] = o.min_face
            kwargs["max_work_pixels"] = o.max_work_pixels
        if o.min_score is not None:
            kwargs["min_score"] = o.min_score
        return MMODDetector(**kwargs)
    if detector == "blazeface":
        full, short = (
            load_blazeface(registry, m, device=o.device, threads=o.threads, min_score=o.min_score)
            for m in _DETECTOR_MODELS[detector]
        )
        return BlazeFaceFallback(full, short)
    spec = registry.get(detector)
    check_task(spec, "detector", ("ultraface", *KEYPOINT_DETECTOR_FAMILIES))
    if spec.family == "blazeface":
        return load_blazeface(registry, detector, device=o.device, threads=o.threads, min_score=o.min_score)
    kind = _KEYPOINT_DETECTORS.get(spec.family, UltraFaceDetector)
    weights = _weights(registry, detector, o.precision)
    found = kind(spec, weights, device=o.device, threads=o.threads, min_score=o.min_score)
    confirm = spec.options.get("confirm_threshold")
    if confirm is None:
        return found
    return ConfirmedDetector(found, threshold=float(confirm), device=o.device, threads=o.threads)


def tflite_onnx_path(registry: ModelRegistry, model_id: str) -> Path:
    """A pack's TFLite model (sha256-checked in the store) converted to ONNX once and cached."""
    return converted_model(model_id, convert_tflite, version=TFLITE_CONVERTER, source=registry.path(model_id))


def load_blazeface(
    registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None,
    min_score: float | None = None,
) -> BlazeFaceDetector:  # fmt: skip
    """A BlazeFace detector (mediapipe pack): the TFLite file converted to ONNX on first use."""
    spec = registry.get(model_id)
    check_task(spec, "detector", ("blazeface",))
    path = tflite_onnx_path(registry, model_id)
    return BlazeFaceDetector(spec, path, device=device, threads=threads, min_score=min_score)


def load_landmarker(
    registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None,
    detector: str | None = None,
) -> ShapePredictor5 | Landmark68 | FaceMesh | BlazeFaceKeypoints | DetectorPoints:  # fmt: skip
    """An object with ``predict(image, boxes) → N×5×2`` in the scheme :func:`landmark_scheme` names;
    ``detector`` (a model id) says whose boxes it will get."""
    spec = registry.get(model_id)
    if spec.task == "detector" and gives_landmarks(spec):  # a keypoint detector's points for others' boxes
        if spec.family == "blazeface":
            return BlazeFaceKeypoints(load_blazeface(registry, model_id, device=device, threads=threads))
        kind = _KEYPOINT_DETECTORS[spec.family]
        return DetectorPoints(kind(spec, registry.path(model_id), device=device, threads=threads))
    check_task(spec, "landmarks", LANDMARK_FAMILIES)
    if spec.family == "dlib-shape5":
        return ShapePredictor5()
    if spec.family == "facemesh":
        return FaceMesh(spec, tflite_onnx_path(registry, model_id), device=device, threads=threads)
    return Landmark68(spec, registry.path(model_id), device=device, threads=threads, detector=detector)


def _weights(registry: ModelRegistry, model_id: str, precision: str) -> Path:
    """The graph to run for ``model_id``: its file, or for ``int8`` its quantized version when faceprint ships
    ranges for it (:mod:`faceprint.models.quantize`); models without them stay fp32."""
    path = registry.path(model_id)
    return int8_model(model_id, path) if precision == "int8" and has_int8(model_id) else path


def load_embedder(
    registry: ModelRegistry, model_id: str, *, device: str = "cpu", threads: int | None = None,
    precision: str = "fp32",
) -> Embedder:  # fmt: skip
    """A new embedder for ``model_id``; :class:`ModelNotInstalled` names the install command when missing.
    ``precision="int8"``: its quantized graph (a :class:`ModelError` when none ships for it)."""
    spec = registry.get(model_id)
    check_task(spec, "embedder", EMBEDDER_FAMILIES)
    if spec.family == "dlib-resnet":
        if model_id != DlibResNetEmbedder.model_id:
            raise ModelError(f"model {model_id!r}: the dlib-resnet family has one model, {DlibResNetEmbedder.model_id}")
        return DlibResNetEmbedder(device=device, threads=threads, precision=precision)
    path = int8_model(model_id, registry.path(model_id)) if precision == "int8" else registry.path(model_id)
    return OnnxEmbedder(spec, path, device=device, threads=threads)


def check_model(spec: ModelSpec, path: Path) -> None:
    """Load ``path`` as ``spec`` once (raises a :class:`ModelError` when they do not fit together)."""
    if spec.task == "embedder" and spec.family == "arcface":
        OnnxEmbedder(spec, path, threads=1)
    elif spec.task == "landmarks" and spec.family == "landmark68":
        Landmark68(spec, path, threads=1)
    elif spec.task == "detector" and spec.family == "ultraface":
        UltraFaceDetector(spec, path, threads=1)
    elif spec.task == "detector" and spec.family in _KEYPOINT_DETECTORS:
        _KEYPOINT_DETECTORS[spec.family](spec, path, threads=1)
    elif spec.task == "anti-spoofing" and spec.family in LIVENESS_FAMILIES:
        FasNetLiveness(spec, path, threads=1)
    else:
        raise ModelError(f"model {spec.id!r}: family {spec.family!r} ({spec.task}) cannot be added as a file")


def add_model(
    registry: ModelRegistry, source: Path, *, family: str | None = None, model_id: str | None = None
) -> Installed:
    """``faceprint models add``: register a spec or weight file after loading it once (see
    :func:`faceprint.models.install.register_model`). With ``family`` (``retinaface``, ``scrfd``, ``yunet``),
    ``source`` is an ONNX detector of that layout: its spec is written from the family's defaults
    (:func:`~faceprint.models.families.keypoint_detector_spec`), id ``model_id`` or ``<family>-<file stem>``."""
    if family is None:
        return register_model(registry, source, check=check_model)
    spec = keypoint_detector_spec(source, family, model_id)
    shipped = registry.specs().get(spec.id)
    if shipped is not None and shipped.source.kind != "user":
        raise ModelError(f"{source}: id {spec.id!r} is a shipped model; choose another id (--id)")
    check_model(spec, source)
    path = registry.store.put_file(spec, source)
    registry.store.put_spec(spec)
    return Installed(spec, path)


def load_calibration(model_id: str, path: Path | None = None, *, required: bool = False) -> Calibration | None:
    """The table that turns an FMR into a threshold for ``model_id``: the operator's file when given (it must
    calibrate this model), else the one shipped with faceprint, else ``None`` (or :class:`CalibrationMissing`
    when ``required``): then callers need an explicit threshold."""
    if path is not None:
        try:
            table = Calibration.load(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CalibrationFileError(f"calibration table {path}: cannot read it: {exc}") from None
        if table.model_id != model_id:
            raise CalibrationFileError(f"calibration table {path} calibrates {table.model_id}, not {model_id}")
        return table
    try:
        return shipped_calibration(model_id)
    except CalibrationMissing:
        if required:
            raise
        return None


def resolve_liveness(registry: ModelRegistry, model_id: str | None = None) -> str:
    """The liveness model to use: ``model_id``, else the first installed anti-spoofing model; none installed →
    :class:`LivenessUnavailable` naming the install command (nothing passes as live unchecked)."""
    specs = registry.specs()
    known = [i for i, s in specs.items() if s.task == "anti-spoofing"]
    if model_id is not None:
        if model_id not in known:
            raise ModelError(f"unknown liveness model {model_id!r}; choose one of {', '.join(known) or 'none'}")
        candidates = [model_id]
    else:
        candidates = known
    for candidate in candidates:
        if registry.status(specs[candidate]).available:
            return candidate
    first = candidates[0] if candidates else "faceplugin-liveness"
    how = registry.status(specs[first]).how_to_get if first in specs else "faceprint models install faceplugin"
    raise LivenessUnavailable(first, how)


def load_liveness(
    registry: ModelRegistry, model_id: str | None = None, *, device: str = "cpu", threads: int | None = None
) -> FasNetLiveness:
    """A new liveness model (see :func:`resolve_liveness`)."""
    model_id = resolve_liveness(registry, model_id)
    spec = registry.get(model_id)
    check_task(spec, "anti-spoofing", LIVENESS_FAMILIES)
    return FasNetLiveness(spec, registry.path(model_id), device=device, threads=threads)


def load_liveness_calibration(model_id: str, path: Path | None = None) -> LivenessCalibration | None:
    """The operator's liveness table when given (it must be for this model), else the shipped one, else
    ``None`` (then the threshold is 0.5 and its APCER/BPCER are unknown)."""
    if path is None:
        return shipped_liveness_calibration(model_id)
    table = LivenessCalibration.load(path)
    if table.model_id != model_id:
        raise CalibrationFileError(f"liveness table {path} is for {table.model_id}, not {model_id}")
    return table
