"""The video loop: frames → detection every Nth frame → tracks → per-track decisions → events.

Events (:class:`WatchEvent`): ``track_start`` (a track got its id), ``identity`` (a track was decided for the
first time, or its subject changed as evidence accumulated; ``subject`` ``None`` = unknown) and ``track_end``
(the tracker dropped the track, or the file ended). :func:`track_summaries` gives one line per track.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from faceprint.errors import InvalidArgument
from faceprint.image import load_image
from faceprint.pipeline import Pipeline
from faceprint.types import Box, Faceprint
from faceprint.video.decisions import TrackDecision, TrackIdentifier
from faceprint.video.sources import Frame, VideoSource
from faceprint.video.tracking import CutDetector, FaceTracker, TrackedFace


@dataclass(frozen=True)
class WatchEvent:
    type: str  # track_start | identity | track_end
    track_id: int
    frame: int
    time_s: float
    box: Box | None
    subject: str | None = None
    score: float | None = None
    extra: dict[str, object] | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "type": self.type,
            "track_id": self.track_id,
            "frame": self.frame,
            "time_s": round(self.time_s, 3),
            "box": None if self.box is None else [round(float(v), 1) for v in self.box],
            "subject": self.subject,
            "score": None if self.score is None else round(self.score, 6),
        }
        if self.extra:
            out.update(self.extra)
        return out


@dataclass
class TrackSummary:
    track_id: int
    first_frame: int
    last_frame: int
    frames_seen: int  # detection frames the face was found on
    subject: str | None = None
    score: float | None = None
    evidence_frames: int = 0
    last_box: Box | None = None
    ended: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "track_id": self.track_id,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames_seen": self.frames_seen,
            "subject": self.subject,
            "score": None if self.score is None else round(self.score, 6),
            "evidence_frames": self.evidence_frames,
        }


@dataclass(frozen=True)
class FrameResult:
    """What :func:`watch` hands ``on_frame`` for every frame: the frame and each live track's box and label."""

    frame: Frame
    faces: list[TrackedFace]
    labels: dict[int, str | None]
    detected: bool  # the detector ran on this frame


def watch(
    source: VideoSource,
    pipeline: Pipeline,
    identifier: TrackIdentifier,
    *,
    every: int = 1,
    cut_threshold: float | None = 0.3,
    tracks: dict[int, TrackSummary] | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
    on_faceprint: Callable[[int, Frame, Faceprint], None] | None = None,
    first_track_id: int = 0,
) -> Iterator[WatchEvent]:
    """Run the loop over ``source`` and yield events; ``tracks`` (pass a dict) collects :class:`TrackSummary`.
    ``first_track_id``: the first id to give (a watcher that restarts the loop on the same feed continues its
    ids, so no two tracks of one feed share an id).

    At a shot cut (``cut_threshold``, :class:`CutDetector`; ``None``: never) every track ends and tracking
    starts afresh, so one person's track never continues onto another's face in the next shot."""
    if every < 1:
        raise InvalidArgument(f"--every must be at least 1, got {every}")
    tracker = FaceTracker(fps=source.fps, first_id=first_track_id)
    cuts = None if cut_threshold is None else CutDetector(cut_threshold)
    tracks = {} if tracks is None else tracks
    last: Frame | None = None
    since_cut = 0
    for frame in source:
        if cuts is not None and cuts.is_cut(frame.pixels):
            for summary in tracks.values():
                if not summary.ended:
                    identifier.forget(summary.track_id)
                    yield _end(summary, last or frame)
            tracker = FaceTracker(fps=source.fps, first_id=max(max(tracks, default=-1) + 1, first_track_id))
            since_cut = 0
        last = frame
        detected = since_cut % every == 0
        since_cut += 1
        if detected:
            img = load_image(frame.pixels, name=f"{source.name} frame {frame.index}")
            faces = tracker.update(pipeline.detect(img), frame.time_s)
            dets = [f.detection for f in faces if f.detection is not None]
            prints = pipeline.embed_batch([(img, dets)])[0] if dets else []
            for face, fp in zip(faces, prints, strict=True):
                summary = tracks.get(face.track_id)
                if summary is None or summary.ended:
                    summary = tracks[face.track_id] = TrackSummary(face.track_id, frame.index, frame.index, 0)
                    yield WatchEvent("track_start", face.track_id, frame.index, frame.time_s, face.box)
                summary.last_frame, summary.last_box = frame.index, face.box
                summary.frames_seen += 1
                if on_faceprint is not None:
                    on_faceprint(face.track_id, frame, fp)
                if not identifier.add(face.track_id, fp):
                    continue
                decision = identifier.decide(face.track_id, rivals={f.track_id for f in faces})
                if decision is None:
                    continue
                for moved in identifier.displaced:  # one-to-one: another live track lost its subject to this one
                    other = tracks.get(moved.track_id)
                    if other is not None and not other.ended and moved.subject != other.subject:
                        other.subject, other.score = moved.subject, moved.score
                        yield WatchEvent(
                            "identity", moved.track_id, frame.index, frame.time_s, other.last_box, moved.subject,
                            moved.score, {**_details(moved), "reason": "one_to_one"},
                        )  # fmt: skip
                summary.evidence_frames = decision.frames
                changed = summary.evidence_frames == identifier.policy.min_frames or decision.subject != summary.subject
                summary.score = decision.score
                if changed:
                    summary.subject = decision.subject
                    yield WatchEvent(
                        "identity", face.track_id, frame.index, frame.time_s, face.box, decision.subject,
                        decision.score, _details(decision),
                    )  # fmt: skip
            alive = tracker.alive_ids()
            for track_id, summary in tracks.items():
                if not summary.ended and track_id not in alive:
                    identifier.forget(track_id)
                    yield _end(summary, frame)
        else:
            faces = tracker.predict(frame.time_s, (frame.pixels.shape[1], frame.pixels.shape[0]))
        if on_frame is not None:
            labels = {tid: s.subject for tid, s in tracks.items() if not s.ended}
            on_frame(FrameResult(frame, faces, labels, detected))
    if last is not None:
        for summary in tracks.values():
            if not summary.ended:
                yield _end(summary, last)


def _details(decision: TrackDecision) -> dict[str, object]:
    return {k: v for k, v in decision.to_dict().items() if k not in ("subject", "score")}


def _end(summary: TrackSummary, frame: Frame) -> WatchEvent:
    summary.ended = True
    return WatchEvent(
        "track_end", summary.track_id, summary.last_frame, frame.time_s, summary.last_box, summary.subject,
        summary.score, {"frames_seen": summary.frames_seen},
    )  # fmt: skip


def best_track_faceprints(
    source: VideoSource, pipeline: Pipeline, *, every: int = 1, max_frames: int = 5
) -> tuple[list[Faceprint], int]:
    """The faceprints of the best frames (by quality, passing the enrolment quality gate) of the source's
    largest track (the one with the widest median face), and that track's id; ``([], -1)`` without faces."""
    identifier = TrackIdentifier(None, pipeline.model_id)
    collected: dict[int, list[Faceprint]] = {}

    def keep(track_id: int, frame: Frame, fp: Faceprint) -> None:
        collected.setdefault(track_id, []).append(fp)

    for _ in watch(source, pipeline, identifier, every=every, on_faceprint=keep):
        pass
    if not collected:
        return [], -1
    widths = {
        tid: float(np.median([fp.detection.width for fp in fps if fp.detection is not None]))
        for tid, fps in collected.items()
    }
    best = max(widths, key=lambda tid: widths[tid])
    good = [fp for fp in collected[best] if not _rejected(fp)]
    good.sort(key=lambda fp: fp.quality or 0.0, reverse=True)
    return good[:max_frames], best


def _rejected(fp: Faceprint) -> bool:
    quality = fp.extra.get("quality")
    return quality is not None and not quality.acceptable
