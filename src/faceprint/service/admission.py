"""Admission control: a bounded queue in front of the CPU-heavy work (decode, detect, embed).

Without a bound, a server past its saturation rate queues requests in its worker limiter and its embedder
queue until every answer is seconds late. Instead, a request is *admitted* when its first CPU-heavy job
starts (:meth:`Inference.compute`) and holds its place until the request ends; at most ``workers +
max_queue`` requests are admitted at once, and one more gets 503 ``overloaded`` with ``Retry-After`` at
once, without waiting and without touching a worker. Requests that do no CPU work (health, metrics,
listings) never reach admission. The count lives on the event loop thread only, so it needs no lock.

A request's place is tied to the request, not to one job: the middleware opens a :func:`request_scope`
around every HTTP request, the first CPU job of the request admits it into that scope (later jobs of the
same request, including concurrent ones such as verify's two photos, share the place and are never
refused half-way), and the scope's end releases it — whether the request succeeded, failed or was cancelled,
so nothing leaks.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from starlette.routing import compile_path
from starlette.types import Scope

from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics

#: Bounds of the ``Retry-After`` answer, in seconds.
RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 30


class _Place:
    """One request's admission: the :class:`Admission` that admitted it (``None`` until then)."""

    __slots__ = ("admission", "since")

    def __init__(self) -> None:
        self.admission: Admission | None = None
        self.since = 0.0

    def release(self) -> None:
        if self.admission is not None:
            admission, self.admission = self.admission, None
            admission._leave(self.since)


_current: ContextVar[_Place | None] = ContextVar("faceprint_admission_place", default=None)


@contextmanager
def request_scope() -> Iterator[None]:
    """Around one HTTP request: the admission the request obtains (if any) is released when it ends.

    The place object is shared by reference with tasks the request spawns (``asyncio.gather``), so they see
    the request as admitted too."""
    place = _Place()
    token = _current.set(place)
    try:
        yield
    finally:
        _current.reset(token)
        place.release()


#: Routes whose requests do CPU-heavy work: refused by the middleware before anything else when the queue
#: is full (:func:`early_refusal`). Only a fast path: every CPU job is admitted in ``Inference.compute``
#: whatever its route, so a route missing here is still bounded, its refusals just cost a little more.
CPU_ROUTES = (
    ("POST", "/v1/detect"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/liveness"),
    ("POST", "/v1/subjects/{subject_id}/faces"),
    ("POST", "/v1/clusters"),
    ("POST", "/v1/clusters/{clustering_id}/merge"),
    ("POST", "/v1/clusters/{clustering_id}/split"),
    ("POST", "/v1/clusters/{clustering_id}/move"),
    ("POST", "/v1/clusters/{clustering_id}/not-this-person"),
    ("POST", "/v1/clusters/{clustering_id}/name"),
)
_CPU_PATHS = [(method, compile_path(template)[0]) for method, template in CPU_ROUTES]


def early_refusal(scope: Scope) -> tuple[str, ApiError] | None:
    """(route template, 503) for a request to a CPU route while the queue is full, answered before
    authentication, parsing or any thread hop: under overload a refusal must cost the server next to nothing.
    (Measured on a saturated 2-core machine: a refusal after authentication and the route's gallery lookup
    took 4 ms at the median but 77 ms at p99, each thread hop waiting for the GIL; here: 0.1 and 18 ms.)
    So during overload an unauthenticated request to a CPU route gets 503, not 401."""
    app = scope.get("app")
    admission = getattr(getattr(getattr(app, "state", None), "inference", None), "admission", None)
    if not isinstance(admission, Admission) or not admission.full():
        return None
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    method = scope.get("method")
    for (m, regex), (_, template) in zip(_CPU_PATHS, CPU_ROUTES, strict=True):
        if method == m and regex.match(path):
            return template, admission.refuse()
    return None


class Admission:
    """At most ``workers + max_queue`` requests in the CPU pipeline; the next one is refused with 503."""

    def __init__(self, workers: int, max_queue: int, metrics: Metrics | None = None) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError(f"workers must be >= 1 and max_queue >= 0, got {workers}, {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self.metrics = metrics
        self.in_flight = 0
        self.rejected = 0
        self._hold_s: float | None = None  # moving average of how long a request stays admitted

    @property
    def capacity(self) -> int:
        return self.workers + self.max_queue

    @property
    def queue_depth(self) -> int:
        """Admitted requests beyond the worker count (waiting for a worker or for the embedder)."""
        return max(0, self.in_flight - self.workers)

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Admit the current request for the block, or raise 503 ``overloaded`` at once.

        Inside an HTTP request (a :func:`request_scope`), the first call admits the request and every later
        one is a no-op: the place is released when the request ends. Outside one, the place lasts for the
        block."""
        place = _current.get()
        if place is not None and place.admission is not None:
            yield
            return
        since = self._enter()
        if place is not None:
            place.admission, place.since = self, since
            yield
            return
        try:
            yield
        finally:
            self._leave(since)

    def full(self) -> bool:
        """Whether a request not yet admitted would be refused now."""
        place = _current.get()
        return (place is None or place.admission is None) and self.in_flight >= self.capacity

    def retry_after(self) -> int:
        """Seconds after which the queue has turned over once (the mean time a request stays admitted)."""
        hold = self._hold_s or 0.0
        return int(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(hold))))

    # -- bookkeeping (event loop thread only) --------------------------------------------------------------
    def refuse(self) -> ApiError:
        """Count a refusal and give the 503 ``overloaded`` to raise."""
        self.rejected += 1
        retry = self.retry_after()
        if self.metrics is not None:
            self.metrics.rejected.inc()
        return ApiError(
            503,
            "overloaded",
            f"the server is at capacity ({self.workers} worker(s) busy and {self.max_queue} request(s) queued, "
            f"FACEPRINT_MAX_QUEUE); retry after {retry} s",
            headers={"Retry-After": str(retry)},
            retry_after=retry,
        )

    def _enter(self) -> float:
        if self.in_flight >= self.capacity:
            raise self.refuse()
        self.in_flight += 1
        self._report()
        return time.monotonic()

    def _leave(self, since: float) -> None:
        self.in_flight -= 1
        held = time.monotonic() - since
        self._hold_s = held if self._hold_s is None else 0.9 * self._hold_s + 0.1 * held
        self._report()

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.admitted.set(self.in_flight)
            self.metrics.queue_depth.set(self.queue_depth)
