"""Video commands: ``faceprint watch`` (track faces in a file, stream or camera and identify each track)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import typer

from faceprint.cli import app
from faceprint.cli.common import fail, handle_errors, progress_bar
from faceprint.cli.core import DetectorOpt, DeviceOpt, JsonOpt, ModelOpt, make_pipeline, resolve_model
from faceprint.cli.gallery import CollectionOpt, GalleryOpt, _collection_model, _open
from faceprint.gallery import default_gallery_path
from faceprint.gallery.base import Gallery
from faceprint.matching import check_one_rule

if TYPE_CHECKING:
    from faceprint.video.sources import SourceEvent
    from faceprint.video.watch import FrameResult, TrackSummary

EveryOpt = typer.Option(3, "--every", min=1, help="Run the detector on every Nth frame (the tracker bridges the gap).")


def _line(data: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class _Annotator:
    """Writes every frame with its tracks' boxes, ids and names (mp4v)."""

    def __init__(self, out: Path, fps: float, size: tuple[int, int]) -> None:
        self.out = out
        self.writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise fail(f"{out}: cannot write a video there (mp4v)")

    def __call__(self, result: FrameResult) -> None:
        bgr = np.ascontiguousarray(result.frame.pixels[:, :, ::-1])
        for face in result.faces:
            name = result.labels.get(face.track_id)
            colour = (0, 200, 0) if name else (0, 165, 255)
            x1, y1, x2, y2 = (round(v) for v in face.box)
            cv2.rectangle(bgr, (x1, y1), (x2, y2), colour, 2)
            label = f"#{face.track_id} {name or 'unknown'}"
            cv2.putText(bgr, label, (x1, max(12, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        self.writer.write(bgr)

    def close(self) -> None:
        self.writer.release()


@app.command()
@handle_errors
def watch(
    source: str = typer.Argument(..., help="Video file, stream URL (rtsp://, http://, …) or camera index (0)."),
    gallery: Path | None = GalleryOpt,
    collection: str = CollectionOpt,
    every: int = EveryOpt,
    annotate: Path | None = typer.Option(None, "--annotate", help="Write the video with boxes, track ids and names."),
    json_out: bool = JsonOpt,
    fmr: float | None = typer.Option(None, "--fmr", help="Target false-match rate per comparison (default 1e-3)."),
    fpir: float | None = typer.Option(None, "--fpir", help="Target false-positive identification rate instead."),
    threshold: float | None = typer.Option(None, "--threshold", help="Raw cosine-score threshold instead."),
    open_timeout: float = typer.Option(10.0, "--open-timeout", min=0.1, help="Seconds to wait for a stream's frame."),
    reconnects: int = typer.Option(5, "--reconnects", min=0, help="Reopen attempts when a stream drops."),
    max_lag: float | None = typer.Option(
        None, "--max-lag", min=0.1, help="Live sources: skip frames while more than this many seconds behind live."
    ),
    listen: bool = typer.Option(
        False, "--listen", help="Wait for a camera or encoder to push RTSP to this rtsp:// URL (server side)."
    ),
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
) -> None:
    """Track faces over frames and name each track once it has enough good frames; prints one JSON event per
    line (track_start, identity, track_end) and, for files, a final summary of every track (docs/video.md)."""
    # the tracker (trackers + supervision) loads only when the command runs, so `faceprint --help` stays fast
    from faceprint.video.decisions import TrackIdentifier
    from faceprint.video.sources import open_source
    from faceprint.video.watch import watch as run_watch

    check_one_rule(fmr=fmr, fpir=fpir, threshold=threshold)
    del json_out  # events are always JSON lines; the option is accepted for symmetry with other commands
    store: Gallery | None = None
    try:
        existing = None
        # No --gallery and no default gallery: faces are tracked, and every track stays unknown.
        if gallery is not None or (default_gallery_path() / "gallery.sqlite3").is_file():
            store = _open(gallery, create=False)
            existing = _collection_model(store, collection)
            if existing is None:
                raise fail(f"the gallery has no collection {collection!r}: enroll someone into it first")
        pipeline = make_pipeline(detector, device, resolve_model(model, existing))
        identifier = TrackIdentifier(store, pipeline.model_id, collection=collection, fmr=fmr, fpir=fpir,
                                     threshold=threshold, calibration=pipeline.calibration)  # fmt: skip

        def on_event(event: SourceEvent) -> None:
            _line(event.to_dict())

        with open_source(
            source,
            open_timeout_s=open_timeout,
            max_reconnects=reconnects,
            on_event=on_event,
            listen=listen,
            max_lag_s=max_lag,
        ) as src:
            annotator = None
            if annotate is not None:
                annotator = _Annotator(annotate, src.fps, (src.width, src.height))
            tracks: dict[int, TrackSummary] = {}
            try:
                with progress_bar(f"watching {src.name}") as advance:

                    def on_frame(result: FrameResult) -> None:
                        if annotator is not None:
                            annotator(result)
                        if src.frame_count is not None:
                            advance(result.frame.index + 1, src.frame_count)

                    for event in run_watch(src, pipeline, identifier, every=every, tracks=tracks, on_frame=on_frame):
                        _line(event.to_dict())
            finally:
                if annotator is not None:
                    annotator.close()
            if not src.live:
                _line(
                    {
                        "type": "summary",
                        "tracks": [t.to_dict() for t in sorted(tracks.values(), key=lambda t: t.track_id)],
                    }
                )
    finally:
        if store is not None:
            store.close()
