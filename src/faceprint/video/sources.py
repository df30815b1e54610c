"""Frames from video files, network streams and local cameras, through OpenCV's FFmpeg backend.

``open_source(spec)`` picks the kind from the spec: an integer (or a string of digits) is a local camera
index; ``scheme://…`` (``rtsp``, ``rtsps``, ``rtmp``, ``http``, ``https`` — MJPEG and HLS as far as FFmpeg
reads them —, ``udp``, ``tcp``) is a network stream; anything else is a file (mp4, webm, mkv, avi, animated
GIF, …). Frames come out as :class:`Frame`: RGB uint8 pixels, the frame index and a timestamp (files: index
/ fps; live sources: seconds since the first frame).

Failures are :class:`VideoSourceError` (a :class:`~faceprint.errors.FaceprintError`, exit 2 in the CLI) that
name the source: a file that does not exist or cannot be decoded (:class:`VideoDecodeError`, also when it
ends far before the frame count its header states: a truncated file), a stream that delivers no frame within
the open timeout (:class:`StreamTimeout`), a stream that dropped and could not be reopened after the
reconnect attempts (:class:`StreamLost`). A live source that drops is reopened with exponential back-off;
each attempt is reported as a :class:`SourceEvent` (``on_event`` callback and the ``faceprint.video`` log).

Live timestamps come from the stream's own presentation times where FFmpeg reports them (RTSP, HLS, files
served as streams), so a loop that falls behind still sees the frames' real spacing, and
:attr:`VideoSource.lag_s` says how far behind live the last frame read is (wall time since the first frame
minus the frame's stream time). ``listen=True`` receives a pushed RTSP stream: FFmpeg's RTSP demuxer waits,
as the server side, for an encoder or camera to connect and ``ANNOUNCE``/``RECORD`` (``ffmpeg -re -i clip.mp4
-c copy -f rtsp rtsp://host:8554/cam``); OpenCV passes it the ``rtsp_flags=listen`` option through the
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` variable, set for the duration of the open only. ``max_lag_s`` bounds the lag
of a live source whose consumer is slower than the stream: frames more than that behind live are grabbed and
skipped (:attr:`VideoSource.skipped` counts them) until it has caught up.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from faceprint.errors import FaceprintError

log = logging.getLogger("faceprint.video")

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
#: A file that yields fewer than this fraction of the frames its header states is reported as truncated.
TRUNCATED_FRACTION = 0.9
#: OpenCV reads FFmpeg's demuxer options from this variable when it opens a capture.
CAPTURE_OPTIONS_VAR = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# Stream opens hold this lock while the variable may carry the listen options, so no other stream opened in
# the meantime listens by mistake (files ignore RTSP options).
_OPTIONS_LOCK = threading.Lock()
_SECRET_PARAMS = re.compile(
    r"([?&;](?:password|passwd|pass|pwd|token|access_token|key|apikey|api_key|secret|auth|sig|signature)=)[^&;#]*",
    re.IGNORECASE,
)


class VideoSourceError(FaceprintError):
    """A video source cannot be used; the message names it."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class VideoDecodeError(VideoSourceError):
    """A video file is missing, not a video, or cannot be decoded (to its end)."""


class StreamTimeout(VideoSourceError):
    """A stream or camera delivered no frame within the open timeout."""


class StreamLost(VideoSourceError):
    """A live source dropped and could not be reopened within the reconnect attempts."""


@dataclass(frozen=True)
class Frame:
    index: int
    time_s: float
    pixels: np.ndarray  # H×W×3 RGB uint8


@dataclass(frozen=True)
class SourceEvent:
    """Something that happened to a live source: ``dropped``, ``reconnecting``, ``reconnected``."""

    kind: str
    source: str
    attempt: int = 0
    delay_s: float = 0.0
    message: str = ""
    frame: int | None = None  # the index the next frame will get

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "type": f"source_{self.kind}",
            "source": self.source,
            "attempt": self.attempt,
            "delay_s": round(self.delay_s, 3),
            "message": self.message,
        }
        if self.frame is not None:
            out["frame"] = self.frame
        return out


def source_kind(spec: str | int | Path) -> str:
    """``"camera"``, ``"stream"`` or ``"file"`` for a source spec (see the module docstring)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return "camera"
    text = str(spec)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.lower() in STREAM_SCHEMES:
        return "stream"
    return "file"


def redact_url(text: str) -> str:
    """A stream URL without its secrets: the password (``rtsp://user:secret@host`` → ``rtsp://user:***@host``)
    and the values of query parameters that carry credentials (``?token=…``, ``&password=…``)."""
    text = _SECRET_PARAMS.sub(r"\1***", text)
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return text
    creds, host = rest.split("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class VideoSource:
    """An open video source; iterate it for :class:`Frame` objects. Use :func:`open_source` to make one."""

    def __init__(
        self,
        spec: str | int | Path,
        *,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        max_reconnects: int = 5,
        backoff_s: tuple[float, float] = (0.5, 8.0),
        on_event: Callable[[SourceEvent], None] | None = None,
        listen: bool = False,
        max_lag_s: float | None = None,
    ) -> None:
        self.kind = source_kind(spec)
        self.spec = int(spec) if self.kind == "camera" else str(spec)
        self.name = f"camera {self.spec}" if self.kind == "camera" else redact_url(str(spec))
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_reconnects = max_reconnects
        self.backoff_s = backoff_s
        self.on_event = on_event
        self.listen = listen
        if listen and not str(spec).lower().startswith("rtsp://"):
            raise VideoSourceError(self.name, "listen mode receives pushed RTSP only: give an rtsp:// URL")
        self.lag_s = 0.0  # live sources: how far the last frame read is behind live
        self.max_lag_s = max_lag_s  # live sources: frames further behind live are skipped (None: never)
        self.skipped = 0
        self._pts_base: float | None = None  # stream time (s) of frame time 0
        self._wall_base: float | None = None  # monotonic time of frame time 0
        self._last_t: float | None = None
        self._next_index = 0
        if self.kind == "file":
            path = Path(self.spec)
            if not path.is_file():
                raise VideoDecodeError(self.name, "file not found")
        self._capture = self._open()
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(self.fps) or self.fps <= 0 or self.fps > 1000:
            self.fps = 30.0 if self.kind != "file" else 25.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = count if self.kind == "file" and count > 0 else None
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def _open(self) -> cv2.VideoCapture:
        if self.kind == "camera":
            capture = cv2.VideoCapture(int(self.spec))
        else:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                int(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                int(self.read_timeout_s * 1000),
            ]
            capture = (
                self._open_stream(params)
                if self.kind == "stream"
                else cv2.VideoCapture(str(self.spec), cv2.CAP_FFMPEG, params)
            )
        if not capture.isOpened():
            capture.release()
            if self.kind == "file":
                raise VideoDecodeError(self.name, "not a video OpenCV/FFmpeg can decode (or a damaged file)")
            raise StreamTimeout(self.name, f"no stream could be opened within {self.open_timeout_s:g} s")
        return capture

    def _open_stream(self, params: list[int]) -> cv2.VideoCapture:
        """A network stream's capture; in listen mode with FFmpeg's RTSP server-side options for this open."""
        with _OPTIONS_LOCK:
            previous = os.environ.get(CAPTURE_OPTIONS_VAR)
            if self.listen:
                wait = max(1, round(self.open_timeout_s))
                ours = f"rtsp_flags;listen|listen_timeout;{wait}"
                os.environ[CAPTURE_OPTIONS_VAR] = f"{previous}|{ours}" if previous else ours
            try:
                return cv2.VideoCapture(str(self.spec), cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop(CAPTURE_OPTIONS_VAR, None)
                else:
                    os.environ[CAPTURE_OPTIONS_VAR] = previous

    def _live_time(self, index: int, now: float) -> float:
        """A live frame's time: its stream timestamp when FFmpeg reports one (rebased when the stream's clock
        restarts, e.g. after a reconnect), else the wall clock since the first frame; updates :attr:`lag_s`."""
        step = 1.0 / self.fps
        pos = float(self._capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
        last = self._last_t
        if pos > 0 and np.isfinite(pos):
            t = pos - self._pts_base if self._pts_base is not None else -1.0
            if self._pts_base is None or (last is not None and t <= last):  # first stamp, or the clock restarted
                t = 0.0 if last is None else last + step
                self._pts_base = pos - t
                self._wall_base = now - t
        elif last is None:
            t = 0.0
        elif self._pts_base is not None:  # an unstamped frame within a stamped stream
            t = last + step
        else:  # no stream clock at all: the wall clock
            t = max(last + 1e-6, now - (self._wall_base or now))
        if self._wall_base is None:
            self._wall_base = now - t
        self._last_t = t
        self.lag_s = max(0.0, (now - self._wall_base) - t)
        return t

    def _emit(self, event: SourceEvent) -> None:
        log.warning("%s: %s %s", event.source, event.kind, event.message)
        if self.on_event is not None:
            self.on_event(event)

    def _reconnect(self) -> bool:
        """Reopen a live source with exponential back-off; ``False`` when every attempt failed."""
        self._capture.release()
        base, cap = self.backoff_s
        for attempt in range(1, self.max_reconnects + 1):
            delay = min(cap, base * 2 ** (attempt - 1))
            self._emit(SourceEvent("reconnecting", self.name, attempt, delay, f"retry in {delay:g} s"))
            time.sleep(delay)
            try:
                self._capture = self._open()
            except VideoSourceError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.name, attempt, exc.reason)
                continue
            self._emit(SourceEvent("reconnected", self.name, attempt, delay, frame=self._next_index))
            return True
        return False

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        start = time.monotonic()
        first_deadline = start + self.open_timeout_s
        while True:
            if self.kind == "file":
                ok, bgr = self._capture.read()
                t = index / self.fps
            else:
                ok, bgr, t = self._capture.grab(), None, 0.0
                if ok:
                    t = self._live_time(index, time.monotonic())
                    if self.max_lag_s is not None and index and self.lag_s > self.max_lag_s:
                        self.skipped += 1  # behind live: decoded, never converted or processed
                        index += 1
                        continue
                    ok, bgr = self._capture.retrieve()
            if ok and bgr is not None and bgr.size:
                if bgr.ndim == 2:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                elif bgr.shape[2] == 4:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
                else:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(index, float(t), rgb)
                index += 1
                continue
            if self.kind == "file":
                self._check_complete(index)
                return
            if index == 0 and time.monotonic() < first_deadline:
                continue
            if index == 0:
                raise StreamTimeout(self.name, f"no frame received within {self.open_timeout_s:g} s")
            self._next_index = index
            self._emit(SourceEvent("dropped", self.name, message=f"no frame after frame {index - 1}", frame=index))
            if not self._reconnect():
                raise StreamLost(self.name, f"stream dropped and {self.max_reconnects} reconnect attempts failed")

    def check_end(self) -> None:
        """For a file whose header states its frame count: that the frame at :data:`TRUNCATED_FRACTION` of it
        decodes, read through a second capture (this one stays at its start). A file cut after its index (a
        "fast start" mp4 cut in its data) opens fine and fails here, before any work is spent on it."""
        if self.kind != "file" or not self.frame_count:
            return
        target = int(TRUNCATED_FRACTION * self.frame_count) - 1
        probe = cv2.VideoCapture(str(self.spec), cv2.CAP_FFMPEG)
        try:
            ok = probe.isOpened() and probe.set(cv2.CAP_PROP_POS_FRAMES, max(0, target)) and probe.grab()
        finally:
            probe.release()
        if not ok:
            raise VideoDecodeError(
                self.name, f"frame {target} of the {self.frame_count} its header states cannot be decoded: the file "
                "is truncated or damaged",
            )  # fmt: skip

    def _check_complete(self, read: int) -> None:
        if read == 0:
            raise VideoDecodeError(self.name, "no frame could be decoded (not a video, or a damaged file)")
        if self.frame_count is not None and read < TRUNCATED_FRACTION * self.frame_count:
            raise VideoDecodeError(
                self.name, f"decoding stopped at frame {read} of {self.frame_count}: the file is truncated or damaged"
            )

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(
    spec: str | int | Path,
    *,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 10.0,
    max_reconnects: int = 5,
    backoff_s: tuple[float, float] = (0.5, 8.0),
    on_event: Callable[[SourceEvent], None] | None = None,
    listen: bool = False,
    max_lag_s: float | None = None,
) -> VideoSource:
    """Open a file, stream URL or camera index (see the module docstring); errors name the source.
    ``listen``: wait for an RTSP stream pushed to ``spec`` instead of pulling one. ``max_lag_s``: a live
    source skips frames (grabbed, not converted nor handed out) while the loop is more than this behind live."""
    return VideoSource(
        spec,
        open_timeout_s=open_timeout_s,
        read_timeout_s=read_timeout_s,
        max_reconnects=max_reconnects,
        backoff_s=backoff_s,
        on_event=on_event,
        listen=listen,
        max_lag_s=max_lag_s,
    )
