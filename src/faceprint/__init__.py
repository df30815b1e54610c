"""faceprint: offline face detection, verification and identification on ONNX Runtime.

The seven verbs most users need::

    import faceprint
    faces = faceprint.detect("group.jpg")               # [Detection(box, score, landmarks)]
    prints = faceprint.embed("group.jpg")               # [Faceprint(vector, model_id, detection, quality)]
    result = faceprint.verify("a.jpg", "b.jpg")         # Verification(decision=Decision(same_person, ...))

The module-level functions share one lazily created default :class:`Pipeline`; create your own
``Pipeline(...)`` to choose models, device or threads and to control its lifetime.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

# Imported before the `cluster` function below is defined, so that the function (not the subpackage) is the
# attribute `faceprint.cluster` (as `embed` in pipeline.py and `verify` below).
from faceprint.cluster import Clustering, Constraints
from faceprint.cluster import cluster as _cluster
from faceprint.errors import (
    CalibrationMissing,
    FaceprintError,
    IncompatibleFaceprints,
    InvalidImage,
    ModelError,
    ModelNotInstalled,
    NoFaceFound,
)
from faceprint.image import Image, load_image
from faceprint.liveness import LivenessResult, LivenessUnavailable
from faceprint.matching import Calibration, Decision
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.types import Detection, Faceprint

# Imported before the `verify` function below is defined, so that the function (not the submodule) is the
# attribute `faceprint.verify` (as `embed` in pipeline.py).
from faceprint.verify import Verification, VerifyInput
from faceprint.verify import verify as _verify

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

_default: Pipeline | None = None
_default_lock = threading.Lock()


def default_pipeline() -> Pipeline:
    """The pipeline the module-level functions use (created on first call, default settings)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Pipeline()
        return _default


def detect(image: object, *, pipeline: Pipeline | None = None) -> list[Detection]:
    """Every face in ``image`` (path, bytes, file object or array): box, score, 5 landmarks."""
    return (pipeline or default_pipeline()).detect(image)  # type: ignore[arg-type]


def embed(image: object, *, pipeline: Pipeline | None = None) -> list[Faceprint]:
    """A faceprint for every face in ``image``."""
    return (pipeline or default_pipeline()).embed(image)  # type: ignore[arg-type]


def liveness(image: object, *, pipeline: Pipeline | None = None) -> list[LivenessResult]:
    """Is each face in ``image`` a live person (not a printed photo or a screen)? Per face: P(live), the
    decision, and the APCER/BPCER its threshold was calibrated for. Needs a liveness model
    (`faceprint models install faceplugin`); without one, :class:`LivenessUnavailable`, never "live"."""
    return (pipeline or default_pipeline()).liveness(image)  # type: ignore[arg-type]


def verify(
    a: VerifyInput,
    b: VerifyInput,
    *,
    fmr: float | None = None,
    fpir: float | None = None,
    threshold: float | None = None,
    pipeline: Pipeline | None = None,
) -> Verification:
    """Same person? ``a``/``b`` are images (largest face used), faceprints or vectors; the threshold follows
    at most one of ``fmr``, ``fpir`` and ``threshold`` (default FMR 1e-3)."""
    return _verify(a, b, fmr=fmr, fpir=fpir, threshold=threshold, pipeline=pipeline or default_pipeline())


def cluster(
    faceprints: Sequence[Faceprint],
    *,
    images: Sequence[str] | None = None,
    fmr: float | None = None,
    threshold: float | None = None,
    min_faces: int = 2,
    constraints: Constraints | None = None,
) -> Clustering:
    """Group faceprints into people: clusters (members, representative, cohesion) and outliers. ``images``
    names each face's photo (faces of one photo are never one person); the threshold follows ``fmr``
    (default 1e-3 on the model's calibration) or an explicit ``threshold``. See :mod:`faceprint.cluster`."""
    return _cluster(faceprints, images=images, fmr=fmr, threshold=threshold, min_faces=min_faces,
                    constraints=constraints)  # fmt: skip


__all__ = [
    "Calibration",
    "CalibrationMissing",
    "Clustering",
    "Constraints",
    "Decision",
    "Detection",
    "Faceprint",
    "FaceprintError",
    "Image",
    "IncompatibleFaceprints",
    "InvalidImage",
    "LivenessResult",
    "LivenessUnavailable",
    "ModelError",
    "ModelNotInstalled",
    "NoFaceFound",
    "Pipeline",
    "PipelineConfig",
    "Verification",
    "__version__",
    "cluster",
    "default_pipeline",
    "detect",
    "embed",
    "liveness",
    "load_image",
    "verify",
]
