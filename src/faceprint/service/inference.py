"""The pipeline as the routes use it: every stage off the event loop, timed, embedder calls batched.

Each call names the :class:`~faceprint.service.engines.Engine` (model profile) it runs on; where that
engine's networks run is its :class:`~faceprint.service.backends.InferenceBackend`. Decoding, chips, quality
and search stay in the service either way, and all engines share one pool of CPU workers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from anyio import CapacityLimiter, to_thread

from faceprint.errors import ImageTooLarge, NoFaceFound
from faceprint.image import Image, header_pixels, load_image
from faceprint.liveness import LivenessPolicy, LivenessResult
from faceprint.pipeline import Pipeline
from faceprint.quality import assess
from faceprint.service.admission import Admission
from faceprint.service.batching import Arrivals, EmbedBatcher
from faceprint.service.engines import Engine
from faceprint.service.errors import ApiError
from faceprint.service.memory import MemoryReleaser
from faceprint.service.metrics import Metrics
from faceprint.service.settings import QUEUE_PER_WORKER
from faceprint.service.uploads import Upload
from faceprint.types import Detection, Faceprint

T = TypeVar("T")


class Inference:
    def __init__(
        self,
        metrics: Metrics,
        *,
        workers: int,
        max_pixels: int,
        max_queue: int | None = None,
        decode_max_pixels: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_pixels = max_pixels
        # Larger photos are decoded reduced (their detections still refer to the photo's own pixels).
        self.decode_max_pixels = decode_max_pixels
        self.memory = MemoryReleaser()
        # Decoding, detection and enrolment are CPU-bound: more threads than cores only adds queueing inside
        # them. Short jobs (gallery reads and writes, search, audit) get their own threads, so they never wait
        # behind a queue of detections.
        self.limiter = CapacityLimiter(workers)
        self.io_limiter = CapacityLimiter(max(8, 2 * workers))
        # At most workers + max_queue requests in the CPU pipeline; the next gets 503 overloaded (admission.py).
        queue = QUEUE_PER_WORKER * workers if max_queue is None else max_queue
        self.admission = Admission(workers, queue, metrics)

    async def compute(self, stage: str | None, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A CPU-heavy ``func(*args, **kwargs)`` in a worker thread (at most ``workers`` at once), once the
        request is admitted (503 ``overloaded`` at once when the admission queue is full)."""
        async with self.admission.admitted():
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
            return load_image(
                upload.data, name=upload.name, max_pixels=self.max_pixels, decode_max_pixels=self.decode_max_pixels
            )
        except ImageTooLarge as exc:
            raise ApiError(413, "too_many_pixels", str(exc), source=exc.source, reason=exc.reason) from None
        finally:
            # A large decode leaves freed buffers in glibc's arenas: hand them back once the request is done.
            self.memory.note(header_pixels(upload.data) or 0)

    async def decode(self, upload: Upload) -> Image:
        return await self.compute("decode", self.decode_sync, upload)

    async def detect(self, engine: Engine, image: Image) -> list[Detection]:
        return await self.compute("detect", engine.backend.detect, image)

    async def decode_and_detect(
        self, engine: Engine, upload: Upload, *, then_embed: bool = False
    ) -> tuple[Image, list[Detection]]:
        """Both in one worker-thread job: a request queues for the CPU once, not twice. ``then_embed``: the
        caller embeds the faces next, so the engine's micro-batcher is told they are on their way (it waits
        for them when they will come soon; see batching.py)."""
        arrivals = _arrivals(engine) if then_embed else None
        job = arrivals.queued() if arrivals is not None else 0

        def work() -> tuple[Image, list[Detection]]:
            if arrivals is not None:
                arrivals.started(job)
            image = self._timed("decode", functools.partial(self.decode_sync, upload))
            return image, self._timed("detect", functools.partial(engine.backend.detect, image))

        try:
            return await self.compute(None, work)
        finally:
            if arrivals is not None:
                # Once this task next yields: after the caller has submitted the faces (it does so without an
                # await in between), so the batcher always sees the job either on its way or in its queue.
                asyncio.get_running_loop().call_soon(arrivals.done, job)

    async def liveness(
        self,
        pipeline: Pipeline,
        image: Image,
        detections: Sequence[Detection],
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]:
        """Liveness of each detection, in the worker pool like detection (no faces: nothing to check). Without
        an installed model: :class:`~faceprint.liveness.LivenessUnavailable` (answered 503)."""
        if not detections:
            return []
        return await self.compute(
            "liveness", pipeline.liveness, image, list(detections), threshold=threshold, apcer=apcer
        )

    async def check(
        self, pipeline: Pipeline, policy: LivenessPolicy, image: Image, detections: Sequence[Detection]
    ) -> list[LivenessResult | None]:
        """Each detection's liveness under ``policy`` (``None`` for each when it is off)."""
        if not policy.checks:
            return [None] * len(detections)
        return list(await self.liveness(pipeline, image, detections, threshold=policy.threshold, apcer=policy.apcer))

    async def embed(self, engine: Engine, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return await engine.backend.embed(image, detections)

    async def largest_face(self, engine: Engine, upload: Upload) -> tuple[Faceprint, int]:
        image, detections = await self.decode_and_detect(engine, upload, then_embed=True)
        if not detections:
            raise NoFaceFound(image.source)
        largest = max(detections, key=lambda d: d.area)
        (fp,) = await self.embed(engine, image, [largest])
        return fp, len(detections)

    async def quality(self, engine: Engine, image: Image, detections: Sequence[Detection]) -> list[dict[str, object]]:
        """Quality of each detected face (needs the aligned chips, not the embedder)."""
        pipeline = engine.pipeline

        def work() -> list[dict[str, object]]:
            if not detections:
                return []
            chips: np.ndarray = pipeline.chips(image, detections)
            return [assess(d, c, pipeline.config.quality).to_dict() for d, c in zip(detections, chips, strict=True)]

        return await self.compute(None, work)


def _arrivals(engine: Engine) -> Arrivals | None:
    """The engine's micro-batcher's arrival board, when its embedder runs in this process."""
    batcher = getattr(engine.backend, "batcher", None)
    return batcher.arrivals if isinstance(batcher, EmbedBatcher) else None
