"""The pipeline as the routes use it: every stage off the event loop, timed, embedder calls batched.

Where the networks run is an :class:`InferenceBackend`: :class:`LocalBackend` (this process, the embedder
micro-batched) by default, or ``faceprint.scale.backend.RayBackend`` (Ray Serve deployments). Decoding,
chips, quality and search stay in the service either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
from anyio import CapacityLimiter, to_thread

from faceprint.errors import InvalidImage, NoFaceFound
from faceprint.image import Image, load_image
from faceprint.pipeline import Pipeline
from faceprint.service.batching import EmbedBatcher
from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics
from faceprint.service.uploads import Upload
from faceprint.types import Detection, Faceprint

T = TypeVar("T")


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


class Inference:
    def __init__(
        self, pipeline: Pipeline, backend: InferenceBackend, metrics: Metrics, *, workers: int, max_pixels: int
    ) -> None:
        self.pipeline = pipeline  # chips and quality policy; its networks are used only through the backend
        self.backend = backend
        self.metrics = metrics
        self.max_pixels = max_pixels
        # Decoding, detection and enrolment are CPU-bound: more threads than cores only adds queueing inside
        # them. Short jobs (gallery reads and writes, search, audit) get their own threads, so they never wait
        # behind a queue of detections.
        self.limiter = CapacityLimiter(workers)
        self.io_limiter = CapacityLimiter(max(8, 2 * workers))

    async def compute(self, stage: str | None, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A CPU-heavy ``func(*args, **kwargs)`` in a worker thread (at most ``workers`` at once)."""
        return await to_thread.run_sync(self._call(stage, func, args, kwargs), limiter=self.limiter)

    async def run(self, stage: str | None, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A short ``func(*args, **kwargs)`` (storage, search) in a worker thread, timed as ``stage``."""
        return await to_thread.run_sync(self._call(stage, func, args, kwargs), limiter=self.io_limiter)

    def _call(self, stage: str | None, func: Callable[..., T], args: tuple, kwargs: dict) -> Callable[[], T]:
        call = functools.partial(func, *args, **kwargs)
        return call if stage is None else functools.partial(self._timed, stage, call)

    def _timed(self, stage: str, call: Callable[[], T]) -> T:
        with self.metrics.time_stage(stage):
            return call()

    def decode_sync(self, upload: Upload) -> Image:
        try:
            return load_image(upload.data, name=upload.name, max_pixels=self.max_pixels)
        except InvalidImage as exc:
            if "decompression bomb" in exc.reason:
                raise ApiError(413, "too_many_pixels", str(exc), source=exc.source) from None
            raise

    async def decode(self, upload: Upload) -> Image:
        return await self.compute("decode", self.decode_sync, upload)

    async def detect(self, image: Image) -> list[Detection]:
        return await self.compute("detect", self.backend.detect, image)

    async def decode_and_detect(self, upload: Upload) -> tuple[Image, list[Detection]]:
        """Both in one worker-thread job: a request queues for the CPU once, not twice."""

        def work() -> tuple[Image, list[Detection]]:
            image = self._timed("decode", functools.partial(self.decode_sync, upload))
            return image, self._timed("detect", functools.partial(self.backend.detect, image))

        return await self.compute(None, work)

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return await self.backend.embed(image, detections)

    async def largest_face(self, upload: Upload) -> tuple[Faceprint, int]:
        image, detections = await self.decode_and_detect(upload)
        if not detections:
            raise NoFaceFound(image.source)
        largest = max(detections, key=lambda d: d.area)
        (fp,) = await self.embed(image, [largest])
        return fp, len(detections)

    async def quality(self, image: Image, detections: Sequence[Detection]) -> list[dict[str, object]]:
        """Quality of each detected face (needs the aligned chips, not the embedder)."""
        from faceprint.quality import assess

        def work() -> list[dict[str, object]]:
            if not detections:
                return []
            chips: np.ndarray = self.pipeline.chips(image, detections)
            return [
                assess(d, c, self.pipeline.config.quality).to_dict() for d, c in zip(detections, chips, strict=True)
            ]

        return await self.compute(None, work)


class BatchedPipeline:
    """What :func:`faceprint.gallery.enrol_images` needs from a pipeline, with the networks of the backend.

    Used from a worker thread: ``embed`` blocks that thread, not the event loop.
    """

    def __init__(self, pipeline: Pipeline, backend: InferenceBackend) -> None:
        self._pipeline = pipeline
        self._backend = backend

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
