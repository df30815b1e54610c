"""The pipeline: image → detections (box, score, 5 landmarks) → aligned chips → faceprints.

A :class:`Pipeline` owns its loaded models; create one and reuse it (loading costs a second or two, the
first use of an ONNX model converts and caches it). Inference is thread-safe: ONNX Runtime sessions accept
concurrent runs, and the components that are not (dlib's HOG detector) lock internally.

Any embedder of the model registry (built-in specs plus the user's model store) can be chosen by id; the
chip template comes from its spec, re-expressed for the landmark scheme in use (see
:mod:`faceprint.align.templates`), and the landmark model is the one the spec prefers when it is installed,
dlib's 5-point predictor otherwise (or ``landmarks=`` explicitly).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceprint.align.chips import ChipTemplate, extract_chips
from faceprint.detect.base import Detector, RawDetection

# Imported here, while `faceprint/__init__` runs, like `detect.base` above: the first import of the `embed`
# subpackage sets the attribute `faceprint.embed`, which must happen before `faceprint.embed()` is defined.
from faceprint.embed.base import Embedder
from faceprint.errors import FaceprintError, NoFaceFound
from faceprint.image import Image, ImageSource, load_image
from faceprint.models.registry import BUILTIN_DEFAULT_EMBEDDER, ModelRegistry
from faceprint.models.spec import ModelSpec
from faceprint.models.store import ModelStore
from faceprint.quality import QualityPolicy, assess
from faceprint.types import Detection, Faceprint

# Short names of the built-in detectors (any detector model id also works): "cascade" = MTCNN proposals
# confirmed by dlib's CNN (the default: detect/cascade.py), "mmod" = dlib's CNN scanning the whole photo,
# "hog" = dlib's HOG (face_recognition's default, needs dlib-bin).
DETECTORS = ("cascade", "mmod", "hog")
EMBEDDERS = ("dlib-resnet-v1",)  # built into the package; `faceprint models list` shows every embedder
DEFAULT_DETECTOR = "cascade"
DEFAULT_EMBEDDER = BUILTIN_DEFAULT_EMBEDDER
DEFAULT_LANDMARKS = "dlib-shape5"
# whose boxes each built-in detector returns (the landmark models adapt to it): the cascade's are MMOD's
_DETECTOR_IDS = {"cascade": "dlib-mmod", "mmod": "dlib-mmod", "hog": "dlib-hog"}


@dataclass(frozen=True)
class PipelineConfig:
    detector: str = DEFAULT_DETECTOR
    embedder: str = DEFAULT_EMBEDDER
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

    def __post_init__(self) -> None:
        specs = self.registry().specs()
        detectors = [i for i, s in specs.items() if s.task == "detector" and i not in _DETECTOR_IDS.values()]
        if self.detector not in DETECTORS and self.detector not in detectors:
            choices = ", ".join([*DETECTORS, *detectors])
            raise FaceprintError(f"unknown detector {self.detector!r}; choose one of {choices}")
        embedders = [i for i, s in specs.items() if s.task == "embedder"]
        if self.embedder not in embedders:
            raise FaceprintError(f"unknown embedder {self.embedder!r}; choose one of {', '.join(embedders)}")
        if self.landmarks is not None and getattr(specs.get(self.landmarks), "task", None) != "landmarks":
            known = ", ".join(i for i, s in specs.items() if s.task == "landmarks")
            raise FaceprintError(f"unknown landmark model {self.landmarks!r}; choose one of {known}")

    def registry(self) -> ModelRegistry:
        return ModelRegistry(ModelStore(self.model_dir))

    @property
    def detector_id(self) -> str:
        """The model id whose boxes the detector returns (``mmod`` and ``cascade`` → ``dlib-mmod``)."""
        return _DETECTOR_IDS.get(self.detector, self.detector)


class Pipeline:
    """Loads models on first use and keeps them; see the module docstring."""

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = PipelineConfig(**overrides)
        elif overrides:
            raise TypeError("give either a PipelineConfig or keyword overrides, not both")
        self.config = config
        self.registry = config.registry()
        self.spec: ModelSpec = self.registry.get(config.embedder)
        self.landmarker_id = config.landmarks or self._preferred_landmarks()
        from faceprint.models.families import landmark_scheme

        self.landmark_scheme = landmark_scheme(self.registry.get(self.landmarker_id))
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._landmarker: Any = None
        self._embedder: Embedder | None = None
        self._templates: dict[str, ChipTemplate] = {}

    def _preferred_landmarks(self) -> str:
        wanted = self.spec.landmarks
        if wanted and wanted in self.registry.specs() and self.registry.status(self.registry.get(wanted)).available:
            return wanted
        return DEFAULT_LANDMARKS

    # -- components, loaded lazily so `faceprint detect` never loads the embedder -------------------------
    @property
    def detector(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = _make_detector(self.config, self.registry)
            return self._detector

    @property
    def landmarker(self) -> Any:
        with self._lock:
            if self._landmarker is None:
                from faceprint.models.families import load_landmarker

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
                from faceprint.models.families import load_embedder

                self._embedder = load_embedder(
                    self.registry, self.config.embedder, device=self.config.device, threads=self.config.threads
                )
            return self._embedder

    @property
    def model_id(self) -> str:
        return self.config.embedder

    @property
    def template(self) -> ChipTemplate:
        """The embedder's chip template for this pipeline's landmark scheme."""
        return self.template_for(self.landmark_scheme)

    def template_for(self, scheme: str) -> ChipTemplate:
        with self._lock:
            if scheme not in self._templates:
                from faceprint.align.templates import chip_template

                assert self.spec.template is not None  # embedder specs always name one (checked when parsed)
                self._templates[scheme] = chip_template(self.spec.template, scheme)
            return self._templates[scheme]

    # -- stages -------------------------------------------------------------------------------------------
    def detect(self, image: ImageSource | Image) -> list[Detection]:
        """All faces in ``image`` with boxes, scores and 5 landmarks, highest score first."""
        img = load_image(image)
        return self.landmark(img, self.detector.detect(img.pixels))

    def landmark(self, image: ImageSource | Image, raw: Sequence[RawDetection]) -> list[Detection]:
        """Detections with this pipeline's 5 landmarks for ``((x1, y1, x2, y2), score)`` boxes."""
        if not raw:
            return []
        img = load_image(image)
        boxes = np.array([box for box, _ in raw], dtype=np.float64)
        landmarks = self.landmarker.predict(img.pixels, boxes)
        return [
            Detection(
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                score=float(score),
                landmarks=np.asarray(points, dtype=np.float32),
                landmark_scheme=self.landmark_scheme,
            )
            for (box, score), points in zip(raw, landmarks, strict=True)
        ]

    def chips(self, image: ImageSource | Image, detections: Sequence[Detection]) -> np.ndarray:
        """Aligned chips for the embedder, one per detection (each aligned by its own landmark scheme)."""
        img = load_image(image)
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
        vectors = self.embedder.embed_chips(all_chips)
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

    def largest_face(self, image: ImageSource | Image) -> tuple[Faceprint, int]:
        """The faceprint of the largest face and how many faces the image holds; NoFaceFound if none."""
        img = load_image(image)
        detections = self.detect(img)
        if not detections:
            raise NoFaceFound(img.source)
        largest = max(detections, key=lambda d: d.area)
        return self.embed(img, [largest])[0], len(detections)


def _make_detector(config: PipelineConfig, registry: ModelRegistry) -> Detector:
    if config.detector == "hog":
        from faceprint.detect.hog import HOGDetector

        return HOGDetector(upsample=1 if config.upsample is None else config.upsample)
    if config.detector == "cascade" and config.upsample is None:
        from faceprint.detect.cascade import CascadeDetector

        options: dict[str, Any] = {"device": config.device, "threads": config.threads}
        if config.min_face is not None:
            options["min_face"] = config.min_face
        if config.min_score is not None:
            options["min_score"] = config.min_score
        return CascadeDetector(**options)
    if config.detector not in ("mmod", "cascade"):  # "cascade" with an explicit upsample: dlib's own scales
        from faceprint.models.families import load_onnx_detector

        return load_onnx_detector(
            registry, config.detector, device=config.device, threads=config.threads, min_score=config.min_score
        )
    from faceprint.detect.mmod import MMODDetector

    kwargs: dict[str, Any] = {"device": config.device, "threads": config.threads}
    if config.upsample is not None:
        kwargs["upsample"] = config.upsample
    else:
        kwargs["min_face"] = config.min_face
        kwargs["max_work_pixels"] = config.max_work_pixels
    if config.min_score is not None:
        kwargs["min_score"] = config.min_score
    return MMODDetector(**kwargs)
