"""Video jobs and camera streams of one app: :mod:`faceprint.video`'s jobs and watchers wired to the service's
engines, gallery, metrics and audit log (the routers in ``routers/videos.py`` and ``routers/streams.py`` only
parse requests and call this).

Both run in their own threads beside the inference workers, on the local pipeline of the collection's model.
Registered streams are rows of the service database's ``streams`` table (:class:`StreamRegistrations`):
:meth:`VideoService.restore` restarts every one when the service starts (the watchers open their sources in
their own threads, so an unreachable camera never delays start-up), and ``DELETE`` removes the row.
Audit rows: ``video.create`` (upload accepted), ``video.done``/``video.failed`` (a job ended: the subjects
named and their scores), ``stream.create``, ``stream.delete``, ``stream.identity`` (every identity decision of
a stream) and ``stream.webhook_failed``. Metrics: ``faceprint_video_frames``, ``faceprint_video_events``,
``faceprint_video_tracks`` (by ``kind``: ``file`` or ``stream``) and ``faceprint_stream_lag_seconds``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from faceprint.errors import FaceprintError
from faceprint.gallery import Gallery
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.engines import Engine, Engines
from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics
from faceprint.service.settings import Settings
from faceprint.service.store import ServiceStore
from faceprint.video.decisions import TrackIdentifier
from faceprint.video.jobs import JobHooks, JobNotFound, TooManyJobs, VideoJob, VideoJobs
from faceprint.video.sources import VideoSourceError, open_source, redact_url
from faceprint.video.streams import (
    WEBHOOK_DEFAULT_TYPES,
    InvalidStream,
    StreamConfig,
    StreamHooks,
    StreamNotFound,
    StreamRegistry,
    StreamWatcher,
    TooManyStreams,
    WebhookConfig,
    WebhookSender,
)
from faceprint.video.watch import FrameResult, WatchEvent

log = logging.getLogger("faceprint.service")

#: ``Retry-After`` of a 429 ``too_many_jobs``: about one short clip's processing time.
JOB_RETRY_AFTER_S = 10


@dataclass(frozen=True)
class StreamRegistration:
    """One registered stream as ``POST /v1/streams`` accepted it (a row of the ``streams`` table)."""

    url: str  # as registered: may hold a password; shown and logged only through redact_url
    collection: str  # the name the client gave; the serving table resolves it when the watcher starts
    name: str = ""
    every: int = 3
    listen: bool = False
    open_timeout_s: float = 10.0
    max_lag_s: float | None = None
    fmr: float | None = None
    fpir: float | None = None
    threshold: float | None = None
    webhook_url: str | None = None  # may hold a token, like the URL
    webhook_events: tuple[str, ...] = WEBHOOK_DEFAULT_TYPES
    created_by: str | None = None  # the admin key's id
    id: str = ""
    created_at: str = ""

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            url=self.url, name=self.name, every=self.every, listen=self.listen, open_timeout_s=self.open_timeout_s,
            max_lag_s=self.max_lag_s,
        )  # fmt: skip

    def webhook_config(self) -> WebhookConfig | None:
        return None if self.webhook_url is None else WebhookConfig(self.webhook_url, self.webhook_events)


_COLUMNS = (
    "id, url, name, collection, every, listen, open_timeout_s, max_lag_s, fmr, fpir, threshold, webhook_url, "
    "webhook_events, created_at, created_by"
)


class StreamRegistrations:
    """The ``streams`` table of the service database: what to restart when the service starts."""

    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    def add(self, reg: StreamRegistration) -> None:
        with self.store.write() as conn:
            conn.execute(
                f"INSERT INTO streams ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reg.id, reg.url, reg.name, reg.collection, reg.every, int(reg.listen), reg.open_timeout_s,
                    reg.max_lag_s, reg.fmr, reg.fpir, reg.threshold, reg.webhook_url,
                    json.dumps(list(reg.webhook_events)), reg.created_at, reg.created_by,
                ),
            )  # fmt: skip

    def remove(self, stream_id: str) -> bool:
        """Delete the row; False when there was none."""
        with self.store.write() as conn:
            return conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,)).rowcount > 0

    def list(self) -> list[StreamRegistration]:
        rows = self.store.read().execute(f"SELECT {_COLUMNS} FROM streams ORDER BY created_at, id").fetchall()
        return [_registration(row) for row in rows]


def _registration(r: tuple) -> StreamRegistration:
    return StreamRegistration(
        id=r[0], url=r[1], name=r[2], collection=r[3], every=int(r[4]), listen=bool(r[5]),
        open_timeout_s=float(r[6]), max_lag_s=r[7], fmr=r[8], fpir=r[9], threshold=r[10], webhook_url=r[11],
        webhook_events=tuple(json.loads(r[12])) or WEBHOOK_DEFAULT_TYPES, created_at=r[13], created_by=r[14],
    )  # fmt: skip


class VideoService:
    def __init__(self, settings: Settings, metrics: Metrics, audit: AuditLog, store: ServiceStore) -> None:
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
        self.registrations = StreamRegistrations(store)
        #: registered streams that could not be restarted at start-up (their collection's model is not served
        #: here, …): listed with their reason until deleted
        self._not_started: dict[str, tuple[StreamRegistration, str]] = {}
        self.jobs = VideoJobs(
            workers=settings.video_workers,
            max_pending=settings.max_video_jobs,
            max_seconds=settings.max_video_seconds,
            hooks=JobHooks(on_frame=self._job_frame, on_event=self._job_event, on_end=self._job_end),
        )
        self.streams = StreamRegistry(settings.max_streams)
        self._job_open_tracks: dict[str, int] = {}

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(
        self,
        path: Path,
        name: str,
        engine: Engine,
        identifier: TrackIdentifier,
        *,
        every: int,
        meta: dict[str, object],
    ) -> VideoJob:
        """Check the uploaded file (a video, not too long, not too large per frame) and queue it; ``path`` is
        deleted when the job ends, or now when it is refused. Errors name the upload (``name``), never the
        temporary path."""
        try:
            try:
                source = open_source(path)
            except VideoSourceError as exc:
                raise ApiError(422, "invalid_video", f"{name}: {exc.reason}", source=name) from None
            try:
                try:
                    source.check_end()
                except VideoSourceError as exc:
                    raise ApiError(422, "invalid_video", f"{name}: {exc.reason}", source=name) from None
                self._check_size(source.width, source.height, source.frame_count, source.fps, name)
                job = self.jobs.submit(
                    source, engine.pipeline, identifier, name=name, every=every, delete_after=path, meta=meta
                )
            except BaseException:
                source.close()
                raise
        except TooManyJobs as exc:
            path.unlink(missing_ok=True)
            raise ApiError(
                429, "too_many_jobs", str(exc), headers={"Retry-After": str(JOB_RETRY_AFTER_S)}, limit=exc.limit
            ) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return job

    def _check_size(self, width: int, height: int, frames: int | None, fps: float, name: str) -> None:
        s = self.settings
        if width * height > s.max_pixels:
            raise ApiError(
                413, "too_many_pixels", f"{name}: {width}×{height} frames are over the limit of {s.max_pixels:,} "
                "pixels (FACEPRINT_MAX_PIXELS)", source=name,
            )  # fmt: skip
        if frames is not None and frames / fps > s.max_video_seconds:
            raise ApiError(
                422, "video_too_long", f"{name}: {frames / fps:.0f} s of video; the limit is "
                f"{s.max_video_seconds:g} s (FACEPRINT_MAX_VIDEO_SECONDS)", source=name,
            )  # fmt: skip

    def job(self, job_id: str) -> VideoJob:
        try:
            return self.jobs.get(job_id)
        except JobNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None

    def _job_frame(self, job: VideoJob, result: FrameResult) -> None:
        self.metrics.video_frames.labels("file").inc()

    def _job_event(self, job: VideoJob, event: WatchEvent) -> None:
        self.metrics.video_events.labels("file", event.type).inc()
        if event.type in ("track_start", "track_end"):
            step = 1 if event.type == "track_start" else -1
            self._job_open_tracks[job.id] = self._job_open_tracks.get(job.id, 0) + step
            self.metrics.video_tracks.labels("file").inc(step)

    def _job_end(self, job: VideoJob) -> None:
        left = self._job_open_tracks.pop(job.id, 0)  # tracks a failed job never ended
        if left:
            self.metrics.video_tracks.labels("file").dec(left)
        named = [t for t in job.tracks if t.get("subject")]
        subject_ids: dict[str, float] = {}
        for e in job.events:  # the last decision of each track names its subject id
            if e.get("type") == "identity" and e.get("subject_id"):
                subject_ids[str(e["subject_id"])] = float(e.get("score") or 0.0)
        threshold = next((e.get("threshold") for e in job.events if e.get("type") == "identity"), None)
        ok = job.status == "done"
        self.audit.append(
            AuditEntry(
                action="video.done" if ok else "video.failed",
                endpoint="POST /v1/videos",
                status=200 if ok else 422,
                key_id=_str(job.meta.get("key_id")),
                collection=_str(job.meta.get("collection")),
                subject_ids=tuple(subject_ids),
                scores=tuple(subject_ids.values()),
                threshold=float(threshold) if isinstance(threshold, int | float) else None,
                decision=f"{len(job.tracks)} tracks, {len(named)} named" if ok else "failed",
                model_id=_str(job.meta.get("model")),
                detail={"job": job.id, "frames": job.frames_done, "seconds": job.seconds, "error": job.error},
            )
        )

    # -- streams -------------------------------------------------------------------------------------------
    def register(self, reg: StreamRegistration, engine: Engine, identifier: TrackIdentifier) -> StreamWatcher:
        """Start watching a new stream and keep its registration: the row is written once the settings are
        known to be usable and before the watcher starts, so a stream that runs is one a restart brings back."""
        reg = replace(reg, id=reg.id or secrets.token_hex(8), created_at=reg.created_at or _now())
        try:
            self.streams.check_room()
            watcher = self._watcher(reg, engine, identifier)
        except InvalidStream as exc:
            raise ApiError(422, "invalid_stream", str(exc)) from None
        except TooManyStreams as exc:
            raise ApiError(429, "too_many_streams", str(exc), limit=exc.limit) from None
        try:
            self.registrations.add(reg)
        except BaseException:
            watcher.stop()  # never started: this closes its webhook sender
            raise
        try:
            return self.streams.add(watcher)
        except TooManyStreams as exc:  # another registration took the last place meanwhile
            watcher.stop()
            self.registrations.remove(reg.id)
            raise ApiError(429, "too_many_streams", str(exc), limit=exc.limit) from None

    def restore(self, engines: Engines, gallery: Gallery, resolve: Callable[[str], str]) -> int:
        """Restart every registered stream (at start-up; ``resolve``: the serving table's collection → the
        collection that answers for it). Returns how many were started. Nothing here opens a source: each
        watcher does in its own thread, and one that cannot open is reported in its state and retried with the
        usual back-off. A registration that cannot be watched at all here (its collection's model is not served,
        …) is logged and listed as ``not_started`` until deleted. Event ids continue above the previous
        process's (they start at the restart time in microseconds), so ``Last-Event-ID`` resumption works
        across the restart."""
        first_seq = time.time_ns() // 1000
        started = 0
        for reg in self.registrations.list():
            try:
                collection = resolve(reg.collection)
                engine = engines.for_collection(gallery, collection)
                if reg.threshold is None and engine.calibration is None:
                    raise ApiError(503, "no_calibration", f"no calibration table for {engine.model_id}")
                identifier = TrackIdentifier(
                    gallery, engine.model_id, collection=collection, fmr=reg.fmr, fpir=reg.fpir,
                    threshold=reg.threshold, calibration=engine.calibration,
                )  # fmt: skip
                watcher = self._watcher(reg, engine, identifier, first_seq=first_seq)
            except Exception as exc:  # whatever it is, the other streams and start-up go on
                if isinstance(exc, ApiError | FaceprintError):
                    reason = exc.detail if isinstance(exc, ApiError) else str(exc)
                else:
                    log.exception("stream %s (%s): restarting it failed", reg.id, redact_url(reg.url))
                    reason = f"internal error ({type(exc).__name__})"
                self._not_started[reg.id] = (reg, reason)
                log.warning("stream %s (%s) is registered but cannot be watched: %s", reg.id, redact_url(reg.url),
                            reason)  # fmt: skip
                continue
            self.streams.add(watcher, over_limit=True)  # registered under the limit of its day
            started += 1
            log.info("stream %s (%s) restarted (registered %s)", reg.id, redact_url(reg.url), reg.created_at)
        return started

    def _watcher(
        self, reg: StreamRegistration, engine: Engine, identifier: TrackIdentifier, *, first_seq: int = 0
    ) -> StreamWatcher:
        sender = None
        watcher_box: list[StreamWatcher] = []
        webhook = reg.webhook_config()
        if webhook is not None:

            def failed(event: dict[str, object], error: str) -> None:
                if watcher_box:
                    self._webhook_failed(watcher_box[0], event, error)

            sender = WebhookSender(webhook, on_failure=failed)
        hooks = StreamHooks(on_frame=self._stream_frame, on_event=self._stream_event)
        meta: dict[str, object] = {
            "collection": identifier.collection, "model": engine.model_id, "key_id": reg.created_by,
            "created_at": reg.created_at,
        }  # fmt: skip
        try:
            watcher = StreamWatcher(
                reg.stream_config(), engine.pipeline, identifier, webhook=sender, hooks=hooks, meta=meta,
                stream_id=reg.id, first_seq=first_seq,
            )  # fmt: skip
        except BaseException:
            if sender is not None:
                sender.close()
            raise
        watcher_box.append(watcher)
        return watcher

    def stream(self, stream_id: str) -> StreamWatcher:
        try:
            return self.streams.get(stream_id)
        except StreamNotFound as exc:
            found = self._not_started.get(stream_id)
            if found is not None:
                raise ApiError(409, "stream_not_started", f"stream {stream_id!r} is not watched: {found[1]}") from None
            raise ApiError(404, "not_found", str(exc)) from None

    def describe(self, stream_id: str) -> dict[str, object]:
        """One stream's state: a watcher's, or a registration that could not be started."""
        found = self._not_started.get(stream_id)
        return _not_started_dict(*found) if found is not None else self.stream(stream_id).to_dict()

    def describe_all(self) -> list[dict[str, object]]:
        return [w.to_dict() for w in self.streams.list()] + [
            _not_started_dict(*f) for f in list(self._not_started.values())
        ]

    def remove_stream(self, stream_id: str) -> StreamWatcher | None:
        """Forget a stream: its row first (a failed write leaves it watched and registered), then its watcher.
        ``None`` for a registration that was not being watched."""
        if stream_id in self._not_started:
            self.registrations.remove(stream_id)
            self._not_started.pop(stream_id, None)
            return None
        self.stream(stream_id)  # 404 before anything is changed
        self.registrations.remove(stream_id)
        try:
            watcher = self.streams.remove(stream_id)
        except StreamNotFound as exc:  # deleted meanwhile by another request
            raise ApiError(404, "not_found", str(exc)) from None
        with contextlib.suppress(KeyError):  # no frame was ever read
            self.metrics.stream_lag.remove(stream_id)
        if watcher.stats.open_tracks:
            self.metrics.video_tracks.labels("stream").dec(watcher.stats.open_tracks)
        return watcher

    def _stream_frame(self, watcher: StreamWatcher, result: FrameResult) -> None:
        self.metrics.video_frames.labels("stream").inc()
        if not watcher.stopped:
            self.metrics.stream_lag.labels(watcher.id).set(watcher.stats.lag_s)

    def _stream_event(self, watcher: StreamWatcher, event: dict[str, object]) -> None:
        kind = str(event.get("type"))
        self.metrics.video_events.labels("stream", kind).inc()
        if kind in ("track_start", "track_end") and not watcher.stopped:
            self.metrics.video_tracks.labels("stream").inc(1 if kind == "track_start" else -1)
        if kind != "identity":
            return
        subject_id, score = event.get("subject_id"), event.get("score")
        threshold = event.get("threshold")
        self.audit.append(
            AuditEntry(
                action="stream.identity",
                endpoint="POST /v1/streams",
                status=200,
                key_id=_str(watcher.meta.get("key_id")),
                collection=_str(watcher.meta.get("collection")),
                subject_ids=(str(subject_id),) if subject_id else (),
                scores=(float(score),) if isinstance(score, int | float) else (),
                threshold=float(threshold) if isinstance(threshold, int | float) else None,
                decision="match" if subject_id else "unknown",
                model_id=_str(watcher.meta.get("model")),
                detail={"stream": watcher.id, "track_id": event.get("track_id"), "frame": event.get("frame")},
            )
        )

    def _webhook_failed(self, watcher: StreamWatcher, event: dict[str, object], error: str) -> None:
        self.audit.append(
            AuditEntry(
                action="stream.webhook_failed",
                endpoint="POST /v1/streams",
                status=502,
                key_id=_str(watcher.meta.get("key_id")),
                decision=error[:200],
                model_id=_str(watcher.meta.get("model")),
                detail={"stream": watcher.id, "type": event.get("type"), "track_id": event.get("track_id")},
            )
        )

    def close(self) -> None:
        self.streams.close()
        self.jobs.close()


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _not_started_dict(reg: StreamRegistration, reason: str) -> dict[str, object]:
    out: dict[str, object] = {
        "id": reg.id, "name": reg.name, "url": redact_url(reg.url), "listen": reg.listen, "every": reg.every,
        "status": "not_started", "last_error": reason, "collection": reg.collection, "key_id": reg.created_by,
        "created_at": reg.created_at,
    }  # fmt: skip
    if reg.webhook_url is not None:
        out["webhook"] = {"url": redact_url(reg.webhook_url), "types": list(reg.webhook_events)}
    return out
