"""Video jobs and camera streams of one app: :mod:`faceprint.video`'s jobs and watchers wired to the service's
engines, gallery, metrics and audit log (the routers in ``routers/videos.py`` and ``routers/streams.py`` only
parse requests and call this).

Both run in their own threads beside the inference workers, on the local pipeline of the collection's model.
Audit rows: ``video.create`` (upload accepted), ``video.done``/``video.failed`` (a job ended: the subjects
named and their scores), ``stream.create``, ``stream.delete``, ``stream.identity`` (every identity decision of
a stream) and ``stream.webhook_failed``. Metrics: ``faceprint_video_frames``, ``faceprint_video_events``,
``faceprint_video_tracks`` (by ``kind``: ``file`` or ``stream``) and ``faceprint_stream_lag_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.engines import Engine
from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics
from faceprint.service.settings import Settings
from faceprint.video.decisions import TrackIdentifier
from faceprint.video.jobs import JobHooks, JobNotFound, TooManyJobs, VideoJob, VideoJobs
from faceprint.video.sources import VideoSourceError, open_source
from faceprint.video.streams import (
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


class VideoService:
    def __init__(self, settings: Settings, metrics: Metrics, audit: AuditLog) -> None:
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
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
    def add_stream(
        self,
        config: StreamConfig,
        engine: Engine,
        identifier: TrackIdentifier,
        *,
        webhook: WebhookConfig | None,
        meta: dict[str, object],
    ) -> StreamWatcher:
        try:
            self.streams.check_room()
            sender = None
            watcher_box: list[StreamWatcher] = []
            if webhook is not None:

                def failed(event: dict[str, object], error: str) -> None:
                    if watcher_box:
                        self._webhook_failed(watcher_box[0], event, error)

                sender = WebhookSender(webhook, on_failure=failed)
            hooks = StreamHooks(on_frame=self._stream_frame, on_event=self._stream_event)
            try:
                watcher = StreamWatcher(config, engine.pipeline, identifier, webhook=sender, hooks=hooks, meta=meta)
            except BaseException:
                if sender is not None:
                    sender.close()
                raise
            watcher_box.append(watcher)
            return self.streams.add(watcher)
        except InvalidStream as exc:
            raise ApiError(422, "invalid_stream", str(exc)) from None
        except TooManyStreams as exc:
            raise ApiError(429, "too_many_streams", str(exc), limit=exc.limit) from None

    def stream(self, stream_id: str) -> StreamWatcher:
        try:
            return self.streams.get(stream_id)
        except StreamNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None

    def remove_stream(self, stream_id: str) -> StreamWatcher:
        try:
            watcher = self.streams.remove(stream_id)
        except StreamNotFound as exc:
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
