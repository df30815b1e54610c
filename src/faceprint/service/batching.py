"""Micro-batching of embedder calls across concurrent requests.

Requests detect their faces on their own (in worker threads) and hand ``(image, detections)`` to the
batcher. One embedder thread takes the first waiting item, gathers whatever else arrives within
``max_wait`` (or until ``max_faces``), and runs one network pass for all of them. Under load the queue fills
while a batch runs, so batches grow by themselves; with one client the extra wait is ``max_wait``.

The event loop never blocks: :meth:`EmbedBatcher.embed` awaits a future that the thread resolves.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from faceprint.image import Image
from faceprint.pipeline import Pipeline
from faceprint.service.metrics import Metrics
from faceprint.types import Detection, Faceprint

log = logging.getLogger("faceprint.service")


@dataclass
class _Job:
    image: Image
    detections: list[Detection]
    future: Future[list[Faceprint]]


_STOP = object()


class EmbedBatcher:
    def __init__(
        self, pipeline: Pipeline, *, max_faces: int = 32, max_wait_s: float = 0.004, metrics: Metrics | None = None
    ) -> None:
        self.pipeline = pipeline
        self.max_faces = max_faces
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="faceprint-embed-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, image: Image, detections: Sequence[Detection]) -> Future[list[Faceprint]]:
        future: Future[list[Faceprint]] = Future()
        if not detections:
            future.set_result([])
            return future
        if self._thread is None:
            raise RuntimeError("the embed batcher is not running")
        self._queue.put(_Job(image, list(detections), future))
        return future

    async def embed(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        return await asyncio.wrap_future(self.submit(image, detections))

    def embed_sync(self, image: Image, detections: Sequence[Detection]) -> list[Faceprint]:
        """For code already running in a worker thread (enrolment)."""
        return self.submit(image, detections).result()

    # -- the embedder thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            batch = [first]
            faces = len(first.detections)
            deadline = time.monotonic() + self.max_wait_s
            while faces < self.max_faces:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Job)
                batch.append(item)
                faces += len(item.detections)
            self._run_batch(batch)
        # Whatever is still queued at shutdown gets an answer rather than hanging its request.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the service is shutting down"))

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            results = self.pipeline.embed_batch([(job.image, job.detections) for job in live])
        except BaseException as exc:  # hand the error to every waiting request; the thread lives on
            log.warning("embedding batch of %d image(s) failed: %s", len(live), exc)
            for job in live:
                job.future.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.stage.labels("embed").observe(time.perf_counter() - start)
            self.metrics.batch_size.observe(sum(len(job.detections) for job in live))
        for job, prints in zip(live, results, strict=True):
            job.future.set_result(prints)
