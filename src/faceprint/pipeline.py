"""The pipeline: image → detections (box, score, 5 landmarks) → aligned chips → faceprints.

A :class:`Pipeline` owns its loaded models; create one and reuse it (loading costs a second or two, the
first use of an ONNX model converts and caches it). Inference is thread-safe: ONNX Runtime sessions accept
concurrent runs, and the components that are not (dlib's HOG detector) lock internally.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceprint.align.chips import ChipTemplate, dlib_template, extract_chips
from faceprint.detect.base import Detector
from faceprint.errors import FaceprintError, NoFaceFound
from faceprint.image import Image, ImageSource, load_image
from faceprint.quality import QualityPolicy, assess
from faceprint.types import Detection, Faceprint

DETECTORS = ("mmod", "hog")
EMBEDDERS = ("dlib-resnet-v1",)
DEFAULT_DETECTOR = "mmod"
DEFAULT_EMBEDDER = "dlib-resnet-v1"


@dataclass(frozen=True)
class PipelineConfig:
    detector: str = DEFAULT_DETECTOR
    embedder: str = DEFAULT_EMBEDDER
    device: str = "cpu"
    threads: int | None = None
    upsample: int | None = None  # None: the detector's own default
    min_score: float | None = None  # detections below are dropped; None: the detector's default
    quality: QualityPolicy = field(default_factory=QualityPolicy)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise FaceprintError(f"unknown detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if self.embedder not in EMBEDDERS:
            raise FaceprintError(f"unknown embedder {self.embedder!r}; choose one of {', '.join(EMBEDDERS)}")


class Pipeline:
    """Loads models on first use and keeps them; see the module docstring."""

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = PipelineConfig(**overrides)
        elif overrides:
            raise TypeError("give either a PipelineConfig or keyword overrides, not both")
        self.config = config
        self._lock = threading.Lock()
        self._detector: Detector | None = None
        self._landmarker: Any = None
        self._embedder: Any = None

    # -- components, loaded lazily so `faceprint detect` never loads the embedder -------------------------
    @property
    def detector(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = _make_detector(self.config)
            return self._detector

    @property
    def landmarker(self) -> Any:
        with self._lock:
            if self._landmarker is None:
                from faceprint.align.shape_predictor import ShapePredictor5

                self._landmarker = ShapePredictor5()
            return self._landmarker

    @property
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                from faceprint.embed.dlib_resnet import DlibResNetEmbedder

                self._embedder = DlibResNetEmbedder(device=self.config.device, threads=self.config.threads)
            return self._embedder

    @property
    def model_id(self) -> str:
        return self.config.embedder

    @property
    def template(self) -> ChipTemplate:
        return dlib_template(150, 0.25)

    # -- stages -------------------------------------------------------------------------------------------
    def detect(self, image: ImageSource | Image) -> list[Detection]:
        """All faces in ``image`` with boxes, scores and 5 landmarks, highest score first."""
        img = load_image(image)
        raw = self.detector.detect(img.pixels)
        if not raw:
            return []
        boxes = np.array([box for box, _ in raw], dtype=np.float64)
        landmarks = self.landmarker.predict(img.pixels, boxes)
        return [
            Detection(box=box, score=score, landmarks=np.asarray(points, dtype=np.float32))
            for (box, score), points in zip(raw, landmarks, strict=True)
        ]

    def chips(self, image: ImageSource | Image, detections: Sequence[Detection]) -> np.ndarray:
        img = load_image(image)
        return extract_chips(img.pixels, [d.landmarks for d in detections], self.template)

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


def _make_detector(config: PipelineConfig) -> Detector:
    if config.detector == "hog":
        from faceprint.detect.hog import HOGDetector

        return HOGDetector(upsample=1 if config.upsample is None else config.upsample)
    from faceprint.detect.mmod import MMODDetector

    kwargs: dict[str, Any] = {"device": config.device, "threads": config.threads}
    if config.upsample is not None:
        kwargs["upsample"] = config.upsample
    if config.min_score is not None:
        kwargs["min_score"] = config.min_score
    return MMODDetector(**kwargs)
