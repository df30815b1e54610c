"""Micro-batching of embedder calls across concurrent requests.

Requests detect their faces on their own (in worker threads) and hand ``(image, detections)`` to the
batcher. One embedder thread takes the first waiting item, adds whatever else is already queued, and then
decides whether to wait for more before it runs one network pass for all of them.

Why it waits, and for how long: detection (tens to hundreds of ms a photo) is what paces requests, and at
most ``workers`` detections run at once, so handovers reach the batcher one by one, tens of ms apart. A
blind window of a few ms (the old rule) therefore almost never caught a second request — the mean batch was
1.0 under 16 clients — while a longer blind window would delay every lone request. So the batcher waits only
for work that is actually on its way: :class:`Arrivals` knows which detections whose faces will be embedded
are running (and since when) and how many are queued for a worker, and keeps a moving average of how long
one takes. The batcher waits only while such a detection is expected to finish before its deadline:
``max_wait`` after the first job arrived, stretched to one detection's duration when detections are queued
for a worker (the service is saturated: the CPU is busy anyway, waiting costs the batch's requests a little
latency and saves embedder runs, i.e. CPU that the queued detections need). With nothing on its way the
batch runs at once: a lone request no longer pays the window.

Until a caller has announced any arrival (direct use, e.g. tests), the old rule applies: wait up to
``max_wait`` for whatever comes. Under load the queue also fills while a batch runs, so batches grow by
themselves when the embedder is the slower stage.

The event loop never blocks: :meth:`EmbedBatcher.embed` awaits a future that the thread resolves.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from faceprint.image import Image
from faceprint.pipeline import Pipeline
from faceprint.service.metrics import Metrics
from faceprint.tracing import current, resume
from faceprint.types import Detection, Faceprint

log = logging.getLogger("faceprint.service")


@dataclass
class _Job:
    image: Image
    detections: list[Detection]
    future: Future[list[Faceprint]]
    submitted: float = field(default_factory=time.monotonic)
    trace: Any = field(default_factory=current)  # the submitting request's trace context (None: tracing off)


_STOP = object()
_WAKE = object()  # an announced detection is done: re-decide whether to keep waiting


class Arrivals:
    """Detections on their way to the batcher: queued for a worker, or running since a known time.

    ``queued()`` when a request asks for a worker (event loop), ``started(job)`` when its detection starts
    (worker thread), ``done(job)`` once the request has submitted its faces (or failed, or was cancelled, so
    nothing stays announced). Thread-safe. ``on_done`` wakes a batcher that is waiting for this job.
    """

    def __init__(self, on_done: Callable[[], None] | None = None) -> None:
        self.on_done = on_done
        self._lock = threading.Lock()
        self._ids = 0
        self._queued: set[int] = set()
        self._running: dict[int, float] = {}
        self._duration: float | None = None  # moving average of one detection, started → done
        self.announced = False  # set by the first queued(): from then on the batcher waits only for these

    def queued(self) -> int:
        with self._lock:
            self._ids += 1
            self._queued.add(self._ids)
            self.announced = True
            return self._ids

    def started(self, job: int) -> None:
        with self._lock:
            if job in self._queued:
                self._queued.discard(job)
                self._running[job] = time.monotonic()

    def done(self, job: int) -> None:
        with self._lock:
            self._queued.discard(job)
            start = self._running.pop(job, None)
            if start is not None:
                took = time.monotonic() - start
                self._duration = took if self._duration is None else 0.8 * self._duration + 0.2 * took
        if start is not None and self.on_done is not None:
            self.on_done()

    def outlook(self, now: float) -> tuple[float | None, int, float]:
        """(seconds until the soonest running detection is expected to hand over, ``None`` when none runs;
        how many are queued for a worker; the average duration of one detection, 0 before the first)."""
        with self._lock:
            duration = self._duration or 0.0
            eta = min((max(0.0, start + duration - now) for start in self._running.values()), default=None)
            return eta, len(self._queued), duration


class EmbedBatcher:
    def __init__(
        self, pipeline: Pipeline, *, max_faces: int = 32, max_wait_s: float = 0.004, metrics: Metrics | None = None
    ) -> None:
        self.pipeline = pipeline
        self.max_faces = max_faces
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.arrivals = Arrivals(on_done=lambda: self._queue.put(_WAKE))
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
            if first is _WAKE:
                continue
            if first is _STOP:
                break
            assert isinstance(first, _Job)
            batch, stopping = self._gather(first)
            self._run_batch(batch)
        # Whatever is still queued at shutdown gets an answer rather than hanging its request.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(RuntimeError("the service is shutting down"))

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch that starts with ``first`` (see the module docstring for when it waits); and whether a
        stop was requested meanwhile."""
        batch = [first]
        faces = len(first.detections)
        arrived = first.submitted
        reason = "full"
        while faces < self.max_faces:
            timeout = self._wait_for_more(arrived)
            if isinstance(timeout, str):
                reason = timeout
                break
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                reason = "window"
                break
            if item is _WAKE:
                continue
            if item is _STOP:
                return batch, True
            assert isinstance(item, _Job)
            batch.append(item)
            faces += len(item.detections)
        if self.metrics is not None:
            self.metrics.batch_waits.labels(reason).inc()
        return batch, False

    def _wait_for_more(self, arrived: float) -> float | str:
        """How long to wait for the next job (0: take only what is queued), or why not to wait."""
        if not self._queue.empty():
            return 0.0
        now = time.monotonic()
        if not self.arrivals.announced:  # nobody announces its detections: the plain window
            return max(0.0, arrived + self.max_wait_s - now) or "window"
        eta, queued, duration = self.arrivals.outlook(now)
        if eta is None:
            return "none_coming"
        window = max(self.max_wait_s, duration) if queued else self.max_wait_s
        remaining = arrived + window - now
        if eta > remaining:
            return "not_in_time"
        return remaining

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.perf_counter()
        try:
            # The batch's spans (align, embed) join the trace of its first request.
            with resume(live[0].trace):
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
