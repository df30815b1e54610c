"""Video speed: frames/s end to end on the 640×360 test clip, the cost of each stage, and the lag behind a
live 30 fps stream, for several detection strides; and whether each stride names the same tracks as
detecting on every frame.

    python benchmarks/video.py                         # --every 1,2,3,5, default dlib profile, --fmr 0.01
    python benchmarks/video.py --every 3 --live-fps 30 --clip ../shared/data/video/short_hamilton_clip.mp4

What it does, per stride N (``--every``):

1. **Offline** (as fast as it goes): :func:`faceprint.video.watch` over the clip, the three reference people
   enrolled in a temporary gallery (``../shared/data/video/references``). Frames/s = frames / wall time of the
   loop (models loaded and warmed before). Stages, timed around the calls the loop makes: ``decode`` (reading
   and converting the next frame), ``detect`` (the detector, every Nth frame), ``embed`` (landmarks, chips and
   the embedder for the tracked faces of a detection frame), ``decide`` (evidence kept, aggregation, gallery
   search) and ``track`` (the rest of the loop: ByteTrack, shot-cut histograms, box prediction, events).
   Each is given as ms per frame of video (averaged over all frames), wall and process CPU.
2. **Live**: the same clip paced as a live stream at ``--live-fps`` (frame i becomes available at
   t0 + i / fps; the loop waits when it is ahead, as it would on a camera). Lag of a frame = when its
   processing ended − when it became available; p50, max and the lag at the last frame. It keeps up when the
   lag stays bounded: the last frame's lag under ``--keep-up-s`` (0.5 s).
   With ``--max-lag S`` frames more than S behind live are skipped, as ``VideoSource(max_lag_s=S)`` does on a
   stream (``skipped`` counts them; "live tracks" compares the live run's named tracks with stride 1's).
3. **Same tracks**: the named tracks (subject, first frame) against stride 1: the same subjects in the same
   order, each starting within 2N + 3 frames of stride 1's.

The machine is shared (the load average is printed): wall time includes waiting for a core; CPU time is the
cost. ``CPU/video-s`` = process CPU seconds per second of video: under the number of cores means the work fits
in real time if it were spread over them (the loop is one thread; ONNX Runtime and FFmpeg use more);
``frames/CPU-s`` = frames per second of process CPU, the rate on an otherwise idle core.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceprint.gallery import enrol_images, open_gallery
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.video import TrackIdentifier, open_source, watch
from faceprint.video.sources import Frame, VideoSource
from faceprint.video.watch import TrackSummary

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
REFERENCES = {
    "Lin-Manuel Miranda": "lin_manuel_miranda",
    "Alex Lacamoire": "alex_lacamoire",
    "Barack Obama": "barack_obama",
}
STAGES = ("decode", "detect", "track", "embed", "decide")


@dataclass
class Clock:
    """Wall and CPU seconds per stage."""

    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, stage: str, wall: float, cpu: float) -> None:
        self.wall[stage] += wall
        self.cpu[stage] += cpu


class Timed:
    """Wraps an object; the named methods are timed into ``clock`` under ``stage``, the rest pass through."""

    def __init__(self, inner: Any, clock: Clock, stages: dict[str, str]) -> None:
        self._inner, self._clock, self._stages = inner, clock, stages

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        stage = self._stages.get(name)
        if stage is None:
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return value(*args, **kwargs)
            finally:
                self._clock.add(stage, time.perf_counter() - w, time.process_time() - c)

        return timed


class PacedSource:
    """The clip's frames, timed as ``decode``; with ``live_fps`` each frame is released at t0 + i / fps and
    the lag of the previous frame is recorded when the loop asks for the next one."""

    def __init__(
        self, source: VideoSource, clock: Clock, live_fps: float | None, max_lag_s: float | None = None
    ) -> None:
        self.source, self.clock, self.live_fps, self.max_lag_s = source, clock, live_fps, max_lag_s
        self.lags: list[float] = []
        self.frames = 0
        self.skipped = 0
        self.t0 = 0.0
        self.last_index = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self.source)
        self.t0 = time.perf_counter()
        index = 0
        while True:
            if self.live_fps and self.frames:
                self.lags.append(time.perf_counter() - (self.t0 + self.last_index / self.live_fps))
            if self.live_fps:
                wait = self.t0 + index / self.live_fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            w, c = time.perf_counter(), time.process_time()
            frame = next(frames, None)
            self.clock.add("decode", time.perf_counter() - w, time.process_time() - c)
            if frame is None:
                return
            index += 1
            behind = time.perf_counter() - (self.t0 + frame.index / self.live_fps) if self.live_fps else 0.0
            if self.max_lag_s is not None and self.frames and behind > self.max_lag_s:
                self.skipped += 1  # as VideoSource(max_lag_s=…) does on a live stream
                continue
            self.frames += 1
            self.last_index = frame.index
            yield frame


@dataclass
class Run:
    every: int
    frames: int
    skipped: int
    wall_s: float
    cpu_s: float
    clock: Clock
    tracks: list[TrackSummary]
    lags: list[float]


def run_once(
    clip: Path,
    pipeline: Pipeline,
    gallery: Any,
    rule: dict[str, float],
    every: int,
    live_fps: float | None,
    max_lag_s: float | None = None,
) -> Run:
    clock = Clock()
    identifier = TrackIdentifier(gallery, pipeline.model_id, calibration=pipeline.calibration, **rule)
    timed_pipeline = Timed(pipeline, clock, {"detect": "detect", "embed_batch": "embed"})
    timed_identifier = Timed(identifier, clock, {"add": "decide", "decide": "decide"})
    tracks: dict[int, TrackSummary] = {}
    with open_source(clip) as source:
        paced = PacedSource(source, clock, live_fps, max_lag_s)
        w, c = time.perf_counter(), time.process_time()
        for _ in watch(paced, timed_pipeline, timed_identifier, every=every, tracks=tracks):  # type: ignore[arg-type]
            pass
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        if live_fps:
            paced.lags.append(time.perf_counter() - (paced.t0 + paced.last_index / live_fps))
    clock.wall["track"] = max(0.0, wall - sum(v for k, v in clock.wall.items() if k != "track"))
    clock.cpu["track"] = max(0.0, cpu - sum(v for k, v in clock.cpu.items() if k != "track"))
    ordered = sorted(tracks.values(), key=lambda t: t.first_frame)
    return Run(every, paced.frames, paced.skipped, wall, cpu, clock, ordered, paced.lags)


def named(tracks: list[TrackSummary]) -> list[tuple[str, int]]:
    return [(t.subject, t.first_frame) for t in tracks if t.subject]


def same_tracks(base: list[tuple[str, int]], other: list[tuple[str, int]], every: int) -> bool:
    if [s for s, _ in base] != [s for s, _ in other]:
        return False
    return all(abs(a - b) <= 2 * every + 3 for (_, a), (_, b) in zip(base, other, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=DATA / "short_hamilton_clip.mp4")
    parser.add_argument("--references", type=Path, default=DATA / "references")
    parser.add_argument("--every", default="1,2,3,5", help="Detection strides, comma-separated (1 is the baseline)")
    parser.add_argument("--live-fps", type=float, default=30.0, help="Pace of the simulated live stream")
    parser.add_argument("--keep-up-s", type=float, default=0.5, help="Last-frame lag under which it keeps up")
    parser.add_argument("--fmr", type=float, default=None, help="Decision rule: false-match rate (default 0.01)")
    parser.add_argument("--threshold", type=float, default=None, help="Decision rule: a raw score threshold instead")
    parser.add_argument("--detector", default=None, help="Detector (default: the model's own)")
    parser.add_argument("--no-live", action="store_true", help="Skip the paced (live) runs")
    parser.add_argument(
        "--max-lag", type=float, default=None, help="Live runs: skip frames while more than this behind (max_lag_s)"
    )
    args = parser.parse_args(argv)
    if args.fmr is not None and args.threshold is not None:
        parser.error("give --fmr or --threshold, not both")
    rule = {"threshold": args.threshold} if args.threshold is not None else {"fmr": args.fmr or 0.01}
    strides = sorted({int(v) for v in args.every.split(",")} | {1})
    os.environ.setdefault("FACEPRINT_KEY", secrets.token_hex(32))  # a throw-away gallery's key

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs visible")
    t = time.perf_counter()
    pipeline = Pipeline(PipelineConfig(detector=args.detector))
    warm = np.full((360, 640, 3), 128, np.uint8)
    pipeline.detect(warm)
    print(f"models {pipeline.model_id} (detector {pipeline.detector_name}) loaded in {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory() as tmp, open_gallery(Path(tmp) / "gallery") as gallery:
        for name, folder in REFERENCES.items():
            enrol_images(gallery, pipeline, name, sorted((args.references / folder).iterdir()))
        with open_source(args.clip) as probe:
            fps, size = probe.fps, f"{probe.width}×{probe.height}"
        run_once(args.clip, pipeline, gallery, rule, 3, None)  # warm-up (thread pools, caches)
        offline = {n: run_once(args.clip, pipeline, gallery, rule, n, None) for n in strides}
        live = {} if args.no_live else {
            n: run_once(args.clip, pipeline, gallery, rule, n, args.live_fps, args.max_lag) for n in strides
        }  # fmt: skip

    print(
        f"\nclip {args.clip.name}: {size}, {fps:.2f} fps, {offline[1].frames} frames ({offline[1].frames / fps:.1f} s)"
    )
    print("\nOffline (as fast as it goes): ms per video frame, wall / CPU")
    head = f"{'every':>5} {'frames/s':>9} {'frames/CPU-s':>12} {'CPU/video-s':>11} " + " ".join(
        f"{s:>13}" for s in STAGES
    )
    print(head)
    for n, r in offline.items():
        stages = " ".join(
            f"{1000 * r.clock.wall[s] / r.frames:6.1f}/{1000 * r.clock.cpu[s] / r.frames:<6.1f}" for s in STAGES
        )
        print(
            f"{n:>5} {r.frames / r.wall_s:9.1f} {r.frames / r.cpu_s:12.1f} {r.cpu_s / (r.frames / fps):11.2f} {stages}"
        )
    base = named(offline[1].tracks)
    print(f"\nNamed tracks with --every 1: {', '.join(f'{s} from frame {f}' for s, f in base)}")
    ok = True
    if live:
        skip = "" if args.max_lag is None else f", frames skipped while more than {args.max_lag:g} s behind"
        print(f"\nLive at {args.live_fps:g} fps: lag behind live (s){skip}")
        print(f"{'every':>5} {'p50':>7} {'max':>7} {'last':>7} {'skipped':>8} {'keeps up':>9} {'same tracks':>12} "
              f"{'live tracks':>12}")  # fmt: skip
    else:
        print(f"\n{'every':>5} {'same tracks':>12}")
    for n in strides:
        same = same_tracks(base, named(offline[n].tracks), n)
        ok &= same
        if live:
            lags = np.asarray(live[n].lags)
            keeps = bool(lags[-1] < args.keep_up_s)
            live_same = same_tracks(base, named(live[n].tracks), n)
            verdicts = " ".join(f"{'yes' if v else 'NO':>{w}}" for v, w in ((keeps, 9), (same, 12), (live_same, 12)))
            print(f"{n:>5} {np.median(lags):7.3f} {lags.max():7.3f} {lags[-1]:7.3f} {live[n].skipped:8d} {verdicts}")
            if not live_same and live[n].skipped:
                print(f"      live --every {n}: {named(live[n].tracks)}")
        else:
            print(f"{n:>5} {'yes' if same else 'NO':>12}")
        if not same:
            print(f"      --every {n}: {named(offline[n].tracks)}")
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
