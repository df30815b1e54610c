"""The pipeline as the routes use it: every stage off the event loop, timed, embedder calls batched."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

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


class Inference:
    def __init__(
        self, pipeline: Pipeline, batcher: EmbedBatcher, metrics: Metrics, *, workers: int, max_pixels: int
    ) -> None:
        self.pipeline = pipeline
        self.batcher = batcher
        self.metrics = metrics
        self.max_pixels = max_pixels
        # Detection and search are CPU-bound: more threads than cores only adds queueing inside them.
        self.limiter = CapacityLimiter(workers)

    async def run(self, stage: str | None, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        """``func(*args, **kwargs)`` in a worker thread (at most ``workers`` at once), timed as ``stage``."""
        call = functools.partial(func, *args, **kwargs)
        if stage is not None:
            call = functools.partial(self._timed, stage, call)
        return await to_thread.run_sync(call, limiter=self.limiter)

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
        return await self.run("decode", self.decode_sync, upload)

    async def detect(self, image: Image) -> list[Detection]:
        return await self.run("detect", self.pipeline.detect, image)

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return await self.batcher.embed(image, detections)

    async def largest_face(self, image: Image) -> tuple[Faceprint, int]:
        detections = await self.detect(image)
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

        return await self.run(None, work)


class BatchedPipeline:
    """What :func:`faceprint.gallery.enrol_images` needs from a pipeline, with embedding through the batcher.

    Used from a worker thread: ``embed`` blocks that thread, not the event loop.
    """

    def __init__(self, pipeline: Pipeline, batcher: EmbedBatcher) -> None:
        self._pipeline = pipeline
        self._batcher = batcher

    @property
    def model_id(self) -> str:
        return self._pipeline.model_id

    def detect(self, image: Image) -> list[Detection]:
        return self._pipeline.detect(image)

    def embed(self, image: Image, detections: Sequence[Detection] | None = None) -> list[Faceprint]:
        if detections is None:
            detections = self._pipeline.detect(image)
        return self._batcher.embed_sync(image, detections)

    def chips(self, image: Image, detections: Sequence[Detection]) -> np.ndarray:
        return self._pipeline.chips(image, detections)
