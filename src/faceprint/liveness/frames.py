"""Liveness over several frames of one person (a folder of frames or a video): the largest face of each
frame is scored and the decision is taken on the **median** P(live) of the frames with a face.

Why the median: P(live) is close to 0 or 1 on nearly every frame, so the median crossing the threshold means
that more than half of the usable frames were judged live, a majority vote that a few frames cannot swing
either way (a blurred live frame, or an attack frame that happens to score high). The mean of such bimodal
scores is instead pulled by each extreme frame, and its value (e.g. 0.4 for 2 live frames of 5) says little.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from faceprint.errors import InvalidArgument, InvalidImage
from faceprint.image import Image, load_image
from faceprint.liveness.base import LivenessResult
from faceprint.types import Detection

#: At most this many frames are sampled (evenly) from a video.
MAX_VIDEO_FRAMES = 30
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}


class LivenessPipeline(Protocol):
    """What frame liveness needs from :class:`faceprint.pipeline.Pipeline`."""

    def detect(self, image: Image) -> list[Detection]: ...

    def liveness(
        self,
        image: Image,
        detections: Sequence[Detection] | None = None,
        *,
        threshold: float | None = None,
        apcer: float | None = None,
    ) -> list[LivenessResult]: ...


@dataclass(frozen=True)
class FramesLiveness:
    """The decision over a sequence of frames of one person."""

    source: str
    live: bool
    score: float  # the median P(live) of the usable frames
    threshold: float
    model: str
    apcer: float | None
    bpcer: float | None
    frames: int  # frames read
    usable: int  # frames with a face (scored)
    no_face: int  # frames without a face
    scores: tuple[float, ...]  # P(live) of each usable frame, in order

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "live": self.live,
            "score": round(self.score, 6),
            "aggregate": "median",
            "threshold": round(self.threshold, 6),
            "apcer": self.apcer,
            "bpcer": self.bpcer,
            "model": self.model,
            "frames": self.frames,
            "usable": self.usable,
            "no_face": self.no_face,
            "scores": [round(s, 6) for s in self.scores],
        }


def frames_liveness(
    pipeline: LivenessPipeline,
    frames: Iterable[Image],
    *,
    source: str,
    threshold: float | None = None,
    apcer: float | None = None,
) -> FramesLiveness:
    """Score the largest face of each frame and decide on their median; :class:`InvalidArgument` when no
    frame holds a face (nothing to decide on)."""
    results: list[LivenessResult] = []
    total = no_face = 0
    for img in frames:
        total += 1
        detections = pipeline.detect(img)
        if not detections:
            no_face += 1
            continue
        largest = max(detections, key=lambda d: d.area)
        results.extend(pipeline.liveness(img, [largest], threshold=threshold, apcer=apcer))
    if total == 0:
        raise InvalidArgument(f"{source}: no frames to check")
    if not results:
        raise InvalidArgument(f"{source}: none of the {total} frame(s) holds a face")
    scores = tuple(r.score for r in results)
    median = float(np.median(scores))
    first = results[0]
    return FramesLiveness(
        source, bool(median >= first.threshold), median, first.threshold, first.model, first.apcer, first.bpcer,
        total, len(results), no_face, scores,
    )  # fmt: skip


def folder_frames(folder: Path) -> Iterator[Image]:
    """Every image in ``folder`` (not recursed), by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgument(f"{folder}: no image files in the folder")
    for path in files:
        yield load_image(path)


def video_frames(path: Path, max_frames: int = MAX_VIDEO_FRAMES) -> list[Image]:
    """At most ``max_frames`` frames sampled evenly from a video (OpenCV); :class:`InvalidImage` naming the
    file when it cannot be opened or decoded."""
    if not path.is_file():
        raise InvalidImage(str(path), "file not found")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InvalidImage(str(path), "cannot be decoded as a video")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        frames: list[np.ndarray] = []
        if count > 0:
            for index in np.unique(np.linspace(0, count - 1, num=min(count, max_frames)).round().astype(int)):
                capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
                ok, frame = capture.read()
                if ok and frame is not None:
                    frames.append(frame)
        else:  # no frame count (some streams): read them all, then sample
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                frames.append(frame)
            if len(frames) > max_frames:
                keep = np.linspace(0, len(frames) - 1, num=max_frames).round().astype(int)
                frames = [frames[i] for i in keep]
    finally:
        capture.release()
    if not frames:
        raise InvalidImage(str(path), "no frame could be decoded from the video")
    return [
        load_image(np.ascontiguousarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)), name=f"{path}#{i}")
        for i, f in enumerate(frames)
    ]


def frames_from(path: Path) -> Iterable[Image]:
    """A folder's images, or a video's sampled frames."""
    if path.is_dir():
        return folder_frames(path)
    return video_frames(path)
