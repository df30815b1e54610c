"""The pipeline: image → detections (box, score, 5 landmarks) → aligned chips → faceprints.

A :class:`Pipeline` owns its loaded models; create one and reuse it (loading costs a second or two, the
first use of an ONNX model converts and caches it). Inference is thread-safe: ONNX Runtime sessions accept
concurrent runs, and the components that are not (dlib's HOG detector) lock internally.

Any embedder of the model registry (built-in specs plus the user's model store) can be chosen by id; the
choice becomes a profile (embedder + detector + landmarks + calibration table) in :mod:`faceprint.factory`,
the one place every interface resolves it. The chip template comes from the embedder's spec, re-expressed for
the landmark scheme in use (see :mod:`faceprint.align.templates`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from faceprint.align.chips import ChipTemplate, extract_chips
from faceprint.align.templates import chip_template
from faceprint.detect.base import Detector, LandmarkingDetector, RawDetection

# Imported here, while `faceprint/__init__` runs, like `detect.base` above: the first import of the `embed`
# subpackage sets the attribute `faceprint.embed`, which must happen before `faceprint.embed()` is defined.
from faceprint.embed.base import Embedder, embed_chips
from faceprint.errors import InvalidArgument, NoFaceFound
from faceprint.factory import (
    DETECTORS,
    FALLBACK_DETECTOR,
    FALLBACK_LANDMARKS,
    DetectorOptions,
    ModelProfile,
    load_calibration,
    load_detector,
    load_embedder,
    load_landmarker,
    load_liveness,
    load_liveness_calibration,
    resolve_profile,
)
from faceprint.image import Image, ImageSource, load_image
from faceprint.liveness import LivenessCalibration, LivenessModel, LivenessResult
from faceprint.liveness.calibration import UNCALIBRATED_THRESHOLD
from faceprint.matching import Calibration
from faceprint.models.quantize import resolve_precision
from faceprint.models.registry import BUILTIN_DEFAULT_EMBEDDER, ModelRegistry
from faceprint.models.spec import ModelSpec
from faceprint.models.store import ModelStore
from faceprint.quality import QualityPolicy, assess
from faceprint.tracing import set_attributes, span
from faceprint.types import Detection, Faceprint

__all__ = ["DEFAULT_DETECTOR", "DEFAULT_EMBEDDER", "DETECTORS", "Pipeline", "PipelineConfig"]

DEFAULT_DETECTOR = FALLBACK_DETECTOR  # the detector of an embedder whose spec names none (dlib-resnet-v1)
DEFAULT_EMBEDDER = BUILTIN_DEFAULT_EMBEDDER  # when `faceprint models use` chose none
DEFAULT_LANDMARKS = FALLBACK_LANDMARKS


@dataclass(frozen=True)
class PipelineConfig:
    """A model choice and how to run it. ``embedder``/``detector``/``landmarks`` left ``None`` follow the
    model's profile (:func:`faceprint.factory.resolve_profile`): the embedder ``faceprint models use`` chose,
    and the detector and landmarks its spec names; :attr:`profile` holds the resolved ids."""

    detector: str | None = None
    embedder: str | None = None
    device: str = "cpu"
    threads: int | None = None
    upsample: int | None = None  # None: the detector's own default
    # Smallest face to find (px). The cascade finds such faces in photos of any size (its proposal network
    # scans at 12 / min_face of the photo's size). The full-scan CNN detector ("mmod") resizes images so such
    # a face fills its 80 px window, within a work budget of `max_work_pixels` (so large photos find larger
    # faces: a 12 MP photo at 2 MP finds faces from ~200 px); an explicit `upsample` wins. The budget trades
    # recall of small faces in large photos for speed (benchmarks/pipeline.py).
    min_face: float | None = 40.0
    max_work_pixels: float = 2e6
    min_score: float | None = None  # detections below are dropped; None: the detector's default
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    landmarks: str | None = None  # None: the embedder spec's preferred landmark model when installed
    model_dir: Path | None = None  # model store; None: $FACEPRINT_MODEL_DIR / $FACEPRINT_HOME/models
    calibration: Path | None = None  # an operator's score → FMR table for the embedder; None: the shipped one
    liveness: str | None = None  # liveness model id; None: the installed one (loaded on first liveness check)
    liveness_calibration: Path | None = None  # an operator's liveness table; None: the shipped one
    # "fp32" or "int8" (embedder and detectors quantized with shipped ranges; models without stay fp32);
    # None: $FACEPRINT_PRECISION, else fp32. Accuracy: docs/models.md ("int8").
    precision: str | None = None
    # Test-time augmentation: each faceprint is the normalised sum of the chip's and the mirrored chip's
    # embeddings (twice the embedding work). None: the model's default (its spec's [options] mirror).
    mirror: bool | None = None
    profile: ModelProfile = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", resolve_precision(self.precision))
        profile = resolve_profile(
            self.registry(), self.embedder, detector=self.detector, landmarks=self.landmarks, mirror=self.mirror
        )
        object.__setattr__(self, "profile", profile)

    def registry(self) -> ModelRegistry:
        return ModelRegistry(ModelStore(self.model_dir))

    @property
    def detector_id(self) -> str:
        """The model id whose boxes the detector returns (``mmod`` and ``cascade`` → ``dlib-mmod``)."""
        return self.profile.detector_boxes

    def detector_options(self) -> DetectorOptions:
        return DetectorOptions(
            device=self.device,
            threads=self.threads,
            upsample=self.upsample,
            min_face=self.min_face,
            max_work_pixels=self.max_work_pixels,
            min_score=self.min_score,
            precision=str(self.precision),
        )


class Pipeline:
    """Loads models on first use and keeps them; see the module docstring."""

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = PipelineConfig(**overrides)
        elif overrides:
            raise TypeError("give either a PipelineConfig or keyword overrides, not both")
        self.config = config
        self.profile = config.profile
        self.registry = config.registry()
        self.spec: ModelSpec = self.registry.get(self.profile.embedder)
        self.landmarker_id = self.profile.landmarks
        self.landmark_scheme = self.profile.landmark_scheme
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._landmarker: Any = None
        self._embedder: Embedder | None = None
        self._calibration: tuple[Calibration | None] | None = None
        self._liveness: LivenessModel | None = None
        self._liveness_table: tuple[LivenessCalibration | None] | None = None
        self._templates: dict[str, ChipTemplate] = {}

    # -- components, loaded lazily so `faceprint detect` never loads the embedder -------------------------
    @property
    def detector(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = load_detector(self.registry, self.profile.detector, self.config.detector_options())
            return self._detector

    @property
    def landmarker(self) -> Any:
        with self._lock:
            if self._landmarker is None:
                self._landmarker = load_landmarker(
                    self.registry,
                    self.landmarker_id,
                    device=self.config.device,
                    threads=self.config.threads,
                    detector=self.config.detector_id,
                )
            return self._landmarker

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = load_embedder(
                    self.registry,
                    self.profile.embedder,
                    device=self.config.device,
                    threads=self.config.threads,
                    precision=str(self.config.precision),
                )
            return self._embedder

    @property
    def calibration(self) -> Calibration | None:
        """The score → FMR table of this model choice (the operator's, else the shipped one; ``None``: none
        exists, so callers need an explicit threshold)."""
        with self._lock:
            if self._calibration is None:
                self._calibration = (load_calibration(self.profile.embedder, self.config.calibration),)
            return self._calibration[0]

    @property
    def liveness_model(self) -> LivenessModel:
        """The liveness model (loaded on first use); :class:`LivenessUnavailable` names the install command."""
        with self._lock:
            if self._liveness is None:
                self._liveness = load_liveness(
                    self.registry, self.config.liveness, device=self.config.device, threads=self.config.threads
                )
            return self._liveness

    @property
    def liveness_calibration(self) -> LivenessCalibration | None:
        model = self.liveness_model
        with self._lock:
            if self._liveness_table is None:
                self._liveness_table = (load_liveness_calibration(model.model_id, self.config.liveness_calibration),)
            return self._liveness_table[0]

    @property
    def model_id(self) -> str:
        return self.profile.embedder

    @property
    def detector_name(self) -> str:
        return self.profile.detector

    @property
    def dim(self) -> int:
        return self.profile.dim

    @property
    def template(self) -> ChipTemplate:
        """The embedder's chip template for this pipeline's landmark scheme."""
        return self.template_for(self.landmark_scheme)

    def template_for(self, scheme: str) -> ChipTemplate:
        with self._lock:
            if scheme not in self._templates:
                assert self.spec.template is not None  # embedder specs always name one (checked when parsed)
                self._templates[scheme] = chip_template(self.spec.template, scheme)
            return self._templates[scheme]

    # -- stages -------------------------------------------------------------------------------------------
    def detect(self, image: ImageSource | Image) -> list[Detection]:
        """All faces in ``image`` with boxes, scores and 5 landmarks, highest score first."""
        img = load_image(image)
        detector = self.detector
        if self.profile.landmarks == self.profile.detector_boxes and isinstance(detector, LandmarkingDetector):
            with span("detect", detector=self.detector_name):  # boxes and points from one pass (BlazeFace,
                raw, points = detector.detect_landmarks(img.pixels)  # RetinaFace, SCRFD, YuNet)
                set_attributes(faces=len(raw))
            return self._detections(img, raw, points)
        with span("detect", detector=self.detector_name):
            raw = detector.detect(img.pixels)
            set_attributes(faces=len(raw))
        return self.landmark(img, raw)

    def landmark(self, image: ImageSource | Image, raw: Sequence[RawDetection]) -> list[Detection]:
        """Detections with this pipeline's 5 landmarks for ``((x1, y1, x2, y2), score)`` boxes in the
        image's ``pixels``; returned in the photo's own frame (multiplied by :attr:`Image.scale`)."""
        if not raw:
            return []
        img = load_image(image)
        boxes = np.array([box for box, _ in raw], dtype=np.float64)
        with span("landmarks", model=self.landmarker_id, faces=len(raw)):
            landmarks = self.landmarker.predict(img.pixels, boxes)
        return self._detections(img, raw, landmarks)

    def _detections(self, img: Image, raw: Sequence[RawDetection], landmarks: Any) -> list[Detection]:
        s = float(img.scale)
        return [
            Detection(
                box=tuple(float(v) * s for v in box),  # type: ignore[arg-type]
                score=float(score),
                landmarks=np.asarray(points, dtype=np.float32) * np.float32(s),
                landmark_scheme=self.landmark_scheme,
            )
            for (box, score), points in zip(raw, landmarks, strict=True)
        ]

    def chips(self, image: ImageSource | Image, detections: Sequence[Detection]) -> np.ndarray:
        """Aligned chips for the embedder, one per detection (each aligned by its own landmark scheme), cut
        from the image's ``pixels`` (detections, in the photo's frame, are divided by :attr:`Image.scale`)."""
        img = load_image(image)
        with span("align", faces=len(detections)):
            return self._chips(img, detections)

    def _chips(self, img: Image, detections: Sequence[Detection]) -> np.ndarray:
        if img.scale != 1:
            inv = np.float32(1.0 / img.scale)
            detections = [replace(d, landmarks=None if d.landmarks is None else d.landmarks * inv) for d in detections]
        schemes = {d.landmark_scheme for d in detections}
        if len(schemes) <= 1:
            template = self.template_for(schemes.pop()) if schemes else self.template
            return extract_chips(img.pixels, [d.landmarks for d in detections], template)
        size = self.template.size
        out = np.empty((len(detections), size, size, 3), dtype=np.uint8)
        for i, d in enumerate(detections):
            out[i] = extract_chips(img.pixels, [d.landmarks], self.template_for(d.landmark_scheme))[0]
        return out

    def embed(self, image: ImageSource | Image, detections: Sequence[Detection] | None = None) -> list[Faceprint]:
        """Faceprints of every face (or of the given detections), in detection order."""
        img = load_image(image)
        if detections is None:
            detections = self.detect(img)
        return self.embed_batch([(img, list(detections))])[0]

    def embed_batch(self, items: Iterable[tuple[Image, list[Detection]]]) -> list[list[Faceprint]]:
        """Embed the faces of several images in one batched network run."""
        items = list(items)
        chip_sets = [self.chips(img, dets) for img, dets in items]
        counts = [len(c) for c in chip_sets]
        if sum(counts) == 0:
            return [[] for _ in items]
        all_chips = np.concatenate([c for c in chip_sets if len(c)], axis=0)
        with span("embed", model=self.model_id, faces=len(all_chips), images=len(items)):
            vectors = self.embed_chips(all_chips)
        out: list[list[Faceprint]] = []
        start = 0
        for (_, dets), chips in zip(items, chip_sets, strict=True):
            prints = []
            for j, det in enumerate(dets):
                q = assess(det, chips[j], self.config.quality)
                prints.append(
                    Faceprint(
                        vector=vectors[start + j],
                        model_id=self.model_id,
                        detection=det,
                        quality=q.score,
                        extra={"quality": q},
                    )
                )
            start += len(dets)
            out.append(prints)
        return out

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Unit-length embeddings of aligned chips (with the mirrored chip averaged in when the profile says
        ``mirror``: :func:`faceprint.embed.base.embed_chips`)."""
        return embed_chips(self.embedder, chips, mirror=self.profile.mirror)

    def liveness(
        self,
        image: ImageSource | Image,
        detections: Sequence[Detection] | None = None,
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]:
        """Liveness of every face (or of the given detections): P(live), the decision and the APCER/BPCER its
        threshold was calibrated for. The threshold is ``threshold``, else the table's for ``apcer`` (default
        :data:`~faceprint.liveness.DEFAULT_APCER`), else 0.5 when the model has no table."""
        if threshold is not None and apcer is not None:
            raise InvalidArgument("give either a liveness threshold or an apcer, not both")
        img = load_image(image)
        if detections is None:
            detections = self.detect(img)
        model = self.liveness_model
        table = self.liveness_calibration
        rates: tuple[float | None, float | None] = (None, None)
        if threshold is None:
            if table is None:
                threshold = UNCALIBRATED_THRESHOLD
            else:
                threshold = table.default_threshold() if apcer is None else table.threshold_for(apcer)
                rates = table.rates_at(threshold)
        if not detections:
            return []
        # Models see the decoded pixels: boxes in the photo's frame are divided by the decode's scale.
        boxes = np.array([d.box for d in detections], dtype=np.float64) / float(img.scale)
        with span("liveness", model=model.model_id, faces=len(detections)):
            scores = model.scores(img.pixels, boxes)
        return [
            LivenessResult(d.box, float(s), bool(s >= threshold), float(threshold), model.model_id, *rates)
            for d, s in zip(detections, scores, strict=True)
        ]

    def largest_face(self, image: ImageSource | Image) -> tuple[Faceprint, int]:
        """The faceprint of the largest face and how many faces the image holds; NoFaceFound if none."""
        img = load_image(image)
        detections = self.detect(img)
        if not detections:
            raise NoFaceFound(img.source)
        largest = max(detections, key=lambda d: d.area)
        return self.embed(img, [largest])[0], len(detections)
