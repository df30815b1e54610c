"""Video files, network streams and cameras: faces tracked over frames and identified per track
(see docs/video.md). A layer above :mod:`faceprint.pipeline`, beside :mod:`faceprint.gallery`.

>>> from faceprint.video import open_source, watch            # doctest: +SKIP
>>> with open_source("clip.mp4") as source:
...     for event in watch(source, pipeline, gallery, every=3):
...         print(event.to_dict())
"""

from __future__ import annotations

from faceprint.video.decisions import DecisionPolicy, TrackDecision, TrackIdentifier, aggregate_vectors
from faceprint.video.sources import (
    Frame,
    SourceEvent,
    StreamLost,
    StreamTimeout,
    VideoDecodeError,
    VideoSource,
    VideoSourceError,
    open_source,
)
from faceprint.video.tracking import FaceTracker, TrackedFace
from faceprint.video.watch import TrackSummary, WatchEvent, best_track_faceprints, watch

__all__ = [
    "DecisionPolicy",
    "FaceTracker",
    "Frame",
    "SourceEvent",
    "StreamLost",
    "StreamTimeout",
    "TrackDecision",
    "TrackIdentifier",
    "TrackSummary",
    "TrackedFace",
    "VideoDecodeError",
    "VideoSource",
    "VideoSourceError",
    "WatchEvent",
    "aggregate_vectors",
    "best_track_faceprints",
    "open_source",
    "watch",
]
