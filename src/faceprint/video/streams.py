"""Camera streams watched continuously: events to subscribers (Server-Sent Events) and to a webhook.

A :class:`StreamWatcher` owns one thread that opens the source, runs
:func:`~faceprint.video.watch.watch` over it and publishes every event with a sequence number. The source
itself reopens a dropped stream with back-off (:mod:`.sources`); when that gives up (:class:`StreamLost`),
or the stream cannot be opened at all, the watcher waits (exponential back-off capped at ``max_backoff_s``)
and starts again, for as long as it is registered: a camera that is off for an hour is picked up when it
comes back. Track ids continue across restarts.

Subscribers get events through a callback (from the watcher's thread; it must not block) and can first read
the last :data:`BACKLOG` events (``Last-Event-ID`` resumption). A :class:`WebhookSender` POSTs events as JSON
from its own thread, with retries and exponential back-off, so a slow or dead receiver never slows the video
loop; when its queue is full the oldest undelivered event is dropped and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faceprint.errors import FaceprintError
from faceprint.pipeline import Pipeline
from faceprint.tracing import inject, span
from faceprint.video.decisions import TrackIdentifier
from faceprint.video.sources import SourceEvent, VideoSource, VideoSourceError, open_source, redact_url, source_kind
from faceprint.video.watch import FrameResult, TrackSummary, WatchEvent, watch

log = logging.getLogger("faceprint.video")

#: Events a watcher keeps for subscribers that (re)connect.
BACKLOG = 1000
#: Event types a webhook receives unless told otherwise.
WEBHOOK_DEFAULT_TYPES = ("identity",)

Subscriber = Callable[[int, dict[str, object]], None]


class _Stopped(Exception):
    """Raised from the frame callback to leave the loop when the watcher is stopped."""


class StreamError(FaceprintError):
    """A stream cannot be registered or found."""


class StreamNotFound(StreamError):
    def __init__(self, stream_id: str) -> None:
        super().__init__(f"no stream {stream_id!r}")
        self.stream_id = stream_id


class TooManyStreams(StreamError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} streams are already registered; delete one first")
        self.limit = limit


class InvalidStream(StreamError):
    """The stream's URL or settings cannot be used."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    types: tuple[str, ...] = WEBHOOK_DEFAULT_TYPES
    attempts: int = 4  # tries per event
    backoff_s: tuple[float, float] = (0.5, 8.0)  # first delay and cap, doubling
    timeout_s: float = 5.0
    max_queue: int = 1000


@dataclass
class WebhookStats:
    delivered: int = 0
    failed: int = 0  # events given up after every attempt
    retries: int = 0
    dropped: int = 0  # events dropped because the queue was full
    last_error: str | None = None


class WebhookSender:
    """POSTs events as JSON to one URL from its own thread, with retries; see the module docstring.
    ``on_failure(event, error)`` is called for an event given up after every attempt."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        headers: dict[str, str] | None = None,
        on_failure: Callable[[dict[str, object], str], None] | None = None,
    ) -> None:
        self.config = config
        self.headers = {"Content-Type": "application/json", "User-Agent": "faceprint", **(headers or {})}
        self.on_failure = on_failure
        self.stats = WebhookStats()
        self._queue: queue.Queue[dict[str, object] | None] = queue.Queue(maxsize=config.max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faceprint-webhook", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, object]) -> None:
        if event.get("type") not in self.config.types:
            return
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            event = self._queue.get()
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: dict[str, object]) -> None:
        cfg = self.config
        body = json.dumps(event, ensure_ascii=False).encode()
        error = ""
        for attempt in range(1, cfg.attempts + 1):
            try:
                with span("webhook", attempt=attempt):  # the receiver gets this span as its W3C traceparent
                    request = urllib.request.Request(cfg.url, data=body, headers=inject(self.headers), method="POST")
                    with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                        response.read(1024)
                self.stats.delivered += 1
                return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                error = str(getattr(exc, "reason", exc))
            self.stats.last_error = error
            if attempt == cfg.attempts or self._stop.is_set():
                break
            self.stats.retries += 1
            delay = min(cfg.backoff_s[1], cfg.backoff_s[0] * 2 ** (attempt - 1))
            log.info("webhook %s: attempt %d failed (%s); retry in %g s", redact_url(cfg.url), attempt, error, delay)
            if self._stop.wait(delay):
                break
        self.stats.failed += 1
        log.warning("webhook %s: event given up after %d attempts: %s", redact_url(cfg.url), cfg.attempts, error)
        if self.on_failure is not None:
            self.on_failure(event, error)


@dataclass(frozen=True)
class StreamConfig:
    """What a watcher watches and how: the source, detection stride, the source's timeouts, listen mode."""

    url: str
    name: str = ""
    every: int = 3
    listen: bool = False
    open_timeout_s: float = 10.0
    max_reconnects: int = 5
    max_backoff_s: float = 30.0  # between whole restarts, after the source itself gave up
    max_lag_s: float | None = None  # skip frames while further behind live than this (None: never)


@dataclass
class StreamStats:
    status: str = "starting"  # starting | running | reconnecting | stopped
    frames: int = 0
    events: int = 0
    open_tracks: int = 0
    fps: float = 0.0  # frames processed per second, over the last few seconds
    lag_s: float = 0.0
    restarts: int = 0
    skipped: int = 0  # frames skipped to catch up with live (max_lag_s)
    last_error: str | None = None
    started_at: str = field(default_factory=_now)
    last_frame_at: str | None = None


@dataclass(frozen=True)
class StreamHooks:
    """The owner's callbacks (metrics, audit), from the watcher's thread."""

    on_frame: Callable[[StreamWatcher, FrameResult], None] | None = None
    on_event: Callable[[StreamWatcher, dict[str, object]], None] | None = None


class StreamWatcher:
    """Watches one stream in a thread until :meth:`stop`; see the module docstring."""

    def __init__(
        self,
        config: StreamConfig,
        pipeline: Pipeline,
        identifier: TrackIdentifier,
        *,
        webhook: WebhookSender | None = None,
        hooks: StreamHooks | None = None,
        meta: dict[str, object] | None = None,
        stream_id: str | None = None,
        first_seq: int = 0,
    ) -> None:
        if source_kind(config.url) != "stream":
            raise InvalidStream(
                f"{redact_url(config.url)}: not a stream URL (rtsp://, rtsps://, rtmp://, http(s)://, udp://, tcp://, "
                "srt://)"
            )
        if config.listen and not config.url.lower().startswith("rtsp://"):
            raise InvalidStream(
                f"{redact_url(config.url)}: listen mode receives pushed RTSP only (rtsp://host:port/path)"
            )
        if not 1 <= config.every <= 100:
            raise InvalidStream(f"every must be 1 to 100, got {config.every}")
        self.id = stream_id or secrets.token_hex(8)
        self.config = config
        self.display_url = redact_url(config.url)
        self.pipeline = pipeline
        self.identifier = identifier
        self.webhook = webhook
        self.hooks = hooks or StreamHooks()
        self.meta = dict(meta or {})
        self.stats = StreamStats()
        self._seq = first_seq  # events are numbered from first_seq + 1 (a restored stream continues above)
        self._backlog: deque[tuple[int, dict[str, object]]] = deque(maxlen=BACKLOG)
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rate: deque[float] = deque(maxlen=90)
        self._skipped_before = 0  # skipped by earlier sources of this watcher (restarts)
        self._thread = threading.Thread(target=self._loop, name=f"faceprint-stream-{self.id}", daemon=True)

    def start(self) -> StreamWatcher:
        self._thread.start()
        return self

    def stop(self, wait_s: float = 0.0) -> None:
        """Ask the thread to end (it does within the source's read timeout); subscribers get ``None``."""
        self._stop.set()
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
        for callback in subscribers:
            callback(-1, {})
        if self.webhook is not None:
            self.webhook.close(timeout_s=min(wait_s, 2.0))
        if wait_s:
            self._thread.join(wait_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def subscribe(self, callback: Subscriber, after: int | None = None) -> tuple[list[tuple[int, dict]], Callable]:
        """Register ``callback(seq, event)`` (``seq`` -1: the stream was deleted) and return the kept events
        after sequence number ``after`` (all kept ones when ``None``) and a function that unsubscribes."""
        with self._lock:
            backlog = [(s, e) for s, e in self._backlog if after is None or s > after]
            if not self._stop.is_set():
                self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return backlog, unsubscribe

    def to_dict(self) -> dict[str, object]:
        s = self.stats
        out: dict[str, object] = {
            "id": self.id,
            "name": self.config.name,
            "url": self.display_url,
            "listen": self.config.listen,
            "every": self.config.every,
            "status": "stopped" if self.stopped else s.status,
            "frames": s.frames,
            "events": s.events,
            "open_tracks": s.open_tracks,
            "fps": round(s.fps, 2),
            "lag_s": round(s.lag_s, 3),
            "max_lag_s": self.config.max_lag_s,
            "skipped": s.skipped,
            "restarts": s.restarts,
            "last_error": s.last_error,
            "started_at": s.started_at,
            "last_frame_at": s.last_frame_at,
            **self.meta,
        }
        if self.webhook is not None:
            w = self.webhook.stats
            out["webhook"] = {
                "url": redact_url(self.webhook.config.url),
                "types": list(self.webhook.config.types),
                "delivered": w.delivered,
                "failed": w.failed,
                "retries": w.retries,
                "dropped": w.dropped,
                "last_error": w.last_error,
            }
        return out

    # -- the thread ----------------------------------------------------------------------------------------
    def _publish(self, event: dict[str, object]) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._backlog.append((seq, event))
            subscribers = list(self._subscribers)
            self.stats.events += 1
        for callback in subscribers:
            try:
                callback(seq, event)
            except Exception:  # one broken subscriber must not stop the others or the loop
                log.exception("stream %s: subscriber failed", self.id)
        if self.webhook is not None:
            self.webhook.send(event)
        if self.hooks.on_event is not None:
            self.hooks.on_event(self, event)

    def _on_source_event(self, event: SourceEvent) -> None:
        self.stats.status = "running" if event.kind == "reconnected" else "reconnecting"
        self._publish(event.to_dict())

    def _on_frame(self, lag_s: float, result: FrameResult) -> None:
        now = time.monotonic()
        s = self.stats
        s.frames += 1
        s.status = "running"
        s.lag_s = lag_s
        s.last_frame_at = _now()
        self._rate.append(now)
        if len(self._rate) > 1 and self._rate[-1] > self._rate[0]:
            s.fps = (len(self._rate) - 1) / (self._rate[-1] - self._rate[0])
        if self.hooks.on_frame is not None:
            self.hooks.on_frame(self, result)

    def _loop(self) -> None:
        cfg = self.config
        tracks: dict[int, TrackSummary] = {}
        failures = 0
        while not self._stop.is_set():
            try:
                with open_source(
                    cfg.url,
                    open_timeout_s=cfg.open_timeout_s,
                    max_reconnects=cfg.max_reconnects,
                    on_event=self._on_source_event,
                    listen=cfg.listen,
                    max_lag_s=cfg.max_lag_s,
                ) as source:
                    failures = 0
                    self.stats.status = "running"

                    def on_frame(result: FrameResult, source: VideoSource = source) -> None:
                        if self._stop.is_set():  # per frame: a feed without faces has no events
                            raise _Stopped
                        self.stats.skipped = self._skipped_before + source.skipped
                        self._on_frame(source.lag_s, result)

                    first = max(tracks, default=-1) + 1
                    for event in watch(
                        source, self.pipeline, self.identifier, every=cfg.every, tracks=tracks,
                        on_frame=on_frame, first_track_id=first,
                    ):  # fmt: skip
                        self._count_track(event)
                        self._publish(event.to_dict())
                        if self._stop.is_set():
                            break
            except _Stopped:
                break
            except VideoSourceError as exc:
                self.stats.last_error = str(exc)
                self._publish({"type": "source_error", "source": self.display_url, "message": exc.reason})
            except FaceprintError as exc:  # e.g. the collection was deleted: reported, retried after back-off
                self.stats.last_error = str(exc)
                self._publish({"type": "error", "message": str(exc)})
            except Exception as exc:  # a bug: reported, and the watcher restarts like after a failure
                log.exception("stream %s failed", self.id)
                self.stats.last_error = f"internal error ({type(exc).__name__})"
            self._end_open_tracks(tracks)
            self._skipped_before = self.stats.skipped
            if self._stop.is_set():
                break
            failures += 1
            self.stats.restarts += 1
            self.stats.status = "reconnecting"
            self._stop.wait(min(cfg.max_backoff_s, 0.5 * 2 ** min(failures, 10)))
        self.stats.status = "stopped"

    def _count_track(self, event: WatchEvent) -> None:
        if event.type == "track_start":
            self.stats.open_tracks += 1
        elif event.type == "track_end":
            self.stats.open_tracks -= 1

    def _end_open_tracks(self, tracks: dict[int, TrackSummary]) -> None:
        """Tracks left open when the source failed mid-way end now (so every track_start has its track_end)."""
        for summary in tracks.values():
            if not summary.ended:
                summary.ended = True
                self.identifier.forget(summary.track_id)
                event = WatchEvent(
                    "track_end", summary.track_id, summary.last_frame, 0.0, summary.last_box, summary.subject,
                    summary.score, {"frames_seen": summary.frames_seen, "reason": "source_lost"},
                )  # fmt: skip
                self._count_track(event)
                self._publish(event.to_dict())


class StreamRegistry:
    """The registered watchers of one owner, at most ``max_streams``."""

    def __init__(self, max_streams: int = 4) -> None:
        self.max_streams = max_streams
        self._watchers: dict[str, StreamWatcher] = {}
        self._lock = threading.Lock()

    def add(self, watcher: StreamWatcher, *, over_limit: bool = False) -> StreamWatcher:
        """Register and start ``watcher``; ``over_limit``: even beyond ``max_streams`` (a stream registered
        before a restart under a higher limit is restarted, new ones wait until fewer are registered)."""
        with self._lock:
            if len(self._watchers) >= self.max_streams and not over_limit:
                raise TooManyStreams(self.max_streams)
            self._watchers[watcher.id] = watcher
        return watcher.start()

    def check_room(self) -> None:
        with self._lock:
            if len(self._watchers) >= self.max_streams:
                raise TooManyStreams(self.max_streams)

    def get(self, stream_id: str) -> StreamWatcher:
        with self._lock:
            watcher = self._watchers.get(stream_id)
        if watcher is None:
            raise StreamNotFound(stream_id)
        return watcher

    def list(self) -> list[StreamWatcher]:
        with self._lock:
            return list(self._watchers.values())

    def remove(self, stream_id: str) -> StreamWatcher:
        with self._lock:
            watcher = self._watchers.pop(stream_id, None)
        if watcher is None:
            raise StreamNotFound(stream_id)
        watcher.stop()
        return watcher

    def close(self, wait_s: float = 5.0) -> None:
        for watcher in self.list():
            watcher.stop()
        deadline = time.monotonic() + wait_s
        for watcher in self.list():
            watcher._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._watchers.clear()
