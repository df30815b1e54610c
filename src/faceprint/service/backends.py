"""Where a model profile's networks run, as the service sees it: the :class:`InferenceBackend` protocol.

:class:`LocalBackend` runs them in this process (the embedder micro-batched across requests); Ray Serve
deployments are the other implementation (``faceprint.scale.backend.RayBackend``). :class:`BatchedPipeline`
adapts a backend to what enrolment needs from a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from faceprint.image import Image
from faceprint.liveness import LivenessResult
from faceprint.pipeline import Pipeline
from faceprint.service.batching import EmbedBatcher
from faceprint.types import Detection, Faceprint


class InferenceBackend(Protocol):
    """Detection and embedding for the service; ``detect``/``embed_sync`` are called from worker threads."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def detect(self, image: Image) -> list[Detection]: ...

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]: ...

    def embed_sync(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]: ...


class LocalBackend:
    """The models in this process: detection on the calling thread, embedding through the micro-batcher."""

    def __init__(self, pipeline: Pipeline, batcher: EmbedBatcher) -> None:
        self.pipeline = pipeline
        self.batcher = batcher

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @property
    def dim(self) -> int:
        return int(self.pipeline.embedder.dim)

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close()

    def detect(self, image: Image) -> list[Detection]:
        return self.pipeline.detect(image)

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return await self.batcher.embed(image, detections)

    def embed_sync(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return self.batcher.embed_sync(image, detections)


class BatchedPipeline:
    """What :func:`faceprint.gallery.enrol_images` needs from a pipeline, with the networks of the backend.

    Used from a worker thread: ``embed`` blocks that thread, not the event loop.
    """

    def __init__(self, pipeline: Pipeline, backend: InferenceBackend, *, liveness: Pipeline | None = None) -> None:
        self._pipeline = pipeline
        self._backend = backend
        self._liveness = liveness or pipeline  # the pipeline whose liveness model checks faces

    @property
    def model_id(self) -> str:
        return self._pipeline.model_id

    def detect(self, image: Image) -> list[Detection]:
        return self._backend.detect(image)

    def embed(self, image: Image, detections: Sequence[Detection] | None = None) -> list[Faceprint]:
        if detections is None:
            detections = self._backend.detect(image)
        return self._backend.embed_sync(image, detections)

    def chips(self, image: Image, detections: Sequence[Detection]) -> np.ndarray:
        return self._pipeline.chips(image, detections)

    def liveness(
        self,
        image: Image,
        detections: Sequence[Detection] | None = None,
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]:
        if detections is None:
            detections = self._backend.detect(image)
        return self._liveness.liveness(image, detections, threshold=threshold, apcer=apcer)
