"""Video files analysed in the background: a bounded queue of jobs, each with its progress, events and summary.

:class:`VideoJobs` runs :func:`~faceprint.video.watch.watch` over submitted files in its own worker threads
(``workers``, default 1: a clip is CPU-heavy, and more threads than cores only slow every job down). It holds
at most ``max_pending`` jobs queued or running — one more is refused with :class:`TooManyJobs` — and keeps
finished jobs for ``ttl_s`` seconds, at most ``max_kept`` of them (the oldest finished job is dropped first).
A job's file is deleted once the job ends, whatever the outcome; only the events and the per-track summary
are kept (never a frame, never an embedding).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from faceprint.errors import FaceprintError
from faceprint.pipeline import Pipeline
from faceprint.video.decisions import TrackIdentifier
from faceprint.video.sources import VideoSource
from faceprint.video.watch import FrameResult, TrackSummary, WatchEvent, watch

log = logging.getLogger("faceprint.video")

#: Events kept per job; a clip with more ends its event list with a ``truncated`` marker (the summary is whole).
MAX_EVENTS = 10_000


class VideoJobError(FaceprintError):
    """A video job cannot be submitted or found."""


class TooManyJobs(VideoJobError):
    """The job queue is full; retry once a job has finished."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} video jobs are already queued or running; retry when one has finished")
        self.limit = limit


class JobNotFound(VideoJobError):
    def __init__(self, job_id: str, ttl_s: float) -> None:
        super().__init__(
            f"no video job {job_id!r} (finished jobs are kept {ttl_s / 60:.0f} min, and a restart forgets them)"
        )
        self.job_id = job_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class VideoJob:
    """One uploaded clip: ``status`` is ``queued``, ``running``, ``done`` or ``failed`` (``error`` says why)."""

    id: str
    name: str
    every: int
    fps: float
    width: int
    height: int
    frame_count: int | None
    status: str = "queued"
    frames_done: int = 0
    events: list[dict[str, object]] = field(default_factory=list)
    tracks: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None  # processing time
    meta: dict[str, object] = field(default_factory=dict)  # the caller's (collection, rule, who asked)
    finished_mono: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        if not self.frame_count:
            return 0.0
        return min(1.0, self.frames_done / self.frame_count)

    def to_dict(self, *, events: bool = True) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frame_count": self.frame_count,
            "fps": round(self.fps, 3),
            "width": self.width,
            "height": self.height,
            "every": self.every,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
            "summary": {"tracks": list(self.tracks)} if self.finished else None,
            **self.meta,
        }
        if events:
            out["events"] = list(self.events)
        return out


@dataclass(frozen=True)
class JobHooks:
    """What the owner wants to know (metrics, audit): called from the job's worker thread."""

    on_frame: Callable[[VideoJob, FrameResult], None] | None = None
    on_event: Callable[[VideoJob, WatchEvent], None] | None = None
    on_end: Callable[[VideoJob], None] | None = None


class VideoJobs:
    """The background jobs of one owner (see the module docstring)."""

    def __init__(
        self,
        *,
        workers: int = 1,
        max_pending: int = 4,
        max_kept: int = 64,
        ttl_s: float = 3600.0,
        max_seconds: float | None = None,
        hooks: JobHooks | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.max_kept = max_kept
        self.ttl_s = ttl_s
        self.max_seconds = max_seconds  # longest video time analysed; a longer clip fails at that point
        self.hooks = hooks or JobHooks()
        self._jobs: OrderedDict[str, VideoJob] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faceprint-video-job")

    def submit(
        self,
        source: VideoSource,
        pipeline: Pipeline,
        identifier: TrackIdentifier,
        *,
        name: str,
        every: int = 3,
        delete_after: Path | None = None,
        meta: dict[str, object] | None = None,
    ) -> VideoJob:
        """Queue ``source`` (an open file; closed, and ``delete_after`` deleted, when the job ends)."""
        job = VideoJob(
            id=secrets.token_hex(16),
            name=name,
            every=every,
            fps=source.fps,
            width=source.width,
            height=source.height,
            frame_count=source.frame_count,
            meta=dict(meta or {}),
        )
        with self._lock:
            self._expire()
            pending = sum(not j.finished for j in self._jobs.values())
            if pending >= self.max_pending or self._stop.is_set():
                raise TooManyJobs(self.max_pending)
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, source, pipeline, identifier, delete_after)
        return job

    def get(self, job_id: str) -> VideoJob:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id, self.ttl_s)
        return job

    def list(self) -> list[VideoJob]:
        with self._lock:
            self._expire()
            return list(self._jobs.values())

    def pending(self) -> int:
        with self._lock:
            return sum(not j.finished for j in self._jobs.values())

    def close(self) -> None:
        """Stop every job at its next frame and wait for the workers."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _expire(self) -> None:
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.finished_mono is not None]
        for job in finished:
            if now - (job.finished_mono or now) > self.ttl_s:
                del self._jobs[job.id]
        finished = [j for j in self._jobs.values() if j.finished_mono is not None]
        for job in finished[: max(0, len(finished) - self.max_kept)]:
            del self._jobs[job.id]

    def _run(
        self,
        job: VideoJob,
        source: VideoSource,
        pipeline: Pipeline,
        identifier: TrackIdentifier,
        delete_after: Path | None,
    ) -> None:
        start = time.perf_counter()
        job.status, job.started_at = "running", _now()
        tracks: dict[int, TrackSummary] = {}
        hooks = self.hooks
        limit = None if self.max_seconds is None else int(self.max_seconds * source.fps)

        def on_frame(result: FrameResult) -> None:
            job.frames_done = result.frame.index + 1
            if hooks.on_frame is not None:
                hooks.on_frame(job, result)
            if self._stop.is_set():  # checked per frame: a clip without faces has no events
                raise VideoJobError("the service is shutting down; the job was stopped")
            if limit is not None and job.frames_done > limit:
                raise VideoJobError(f"{job.name}: longer than the limit of {self.max_seconds:g} s of video")

        try:
            for event in watch(source, pipeline, identifier, every=job.every, tracks=tracks, on_frame=on_frame):
                if len(job.events) < MAX_EVENTS:
                    job.events.append(event.to_dict())
                elif len(job.events) == MAX_EVENTS:
                    job.events.append({"type": "truncated", "message": f"more than {MAX_EVENTS} events"})
                if hooks.on_event is not None:
                    hooks.on_event(job, event)
            job.tracks = [t.to_dict() for t in sorted(tracks.values(), key=lambda t: t.track_id)]
            job.status = "done"
        except FaceprintError as exc:  # the clip's or the gallery's (a collection deleted meanwhile, …)
            job.error, job.status = str(exc), "failed"
        except Exception as exc:  # a bug: the job fails with a generic message; the log has the traceback
            log.exception("video job %s failed", job.id)
            job.error, job.status = f"internal error ({type(exc).__name__}); the server log has the details", "failed"
        finally:
            source.close()
            if delete_after is not None:
                delete_after.unlink(missing_ok=True)
            job.seconds = time.perf_counter() - start
            job.finished_at = _now()
            job.finished_mono = time.monotonic()
            if job.status == "failed":
                job.tracks = [t.to_dict() for t in sorted(tracks.values(), key=lambda t: t.track_id)]
            if hooks.on_end is not None:
                try:
                    hooks.on_end(job)
                except Exception:  # reporting must not break the job's bookkeeping
                    log.exception("video job %s: end hook failed", job.id)
