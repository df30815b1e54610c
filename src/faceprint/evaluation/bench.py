"""Per-stage latency and throughput of the pipeline on given photos.

Stages, timed separately on each photo: ``decode`` (file → RGB array), ``detect`` (detector boxes),
``landmarks`` (5 points), ``align`` (chips), ``embed`` (the embedding network on this photo's faces) and
``total`` (all of it). Each photo is run ``warmup`` times untimed, then ``repeat`` times.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.align.chips import extract_chips
from faceprint.image import load_image
from faceprint.pipeline import Pipeline

STAGES = ("decode", "detect", "landmarks", "align", "embed", "total")


@dataclass(frozen=True)
class StageStats:
    stage: str
    runs: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "runs": self.runs,
            "mean_ms": round(self.mean_ms, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "per_second": round(self.per_second, 2),
        }


@dataclass(frozen=True)
class BenchResult:
    stages: tuple[StageStats, ...]
    photos: int
    faces: int
    repeat: int
    environment: dict

    @property
    def throughput(self) -> float:
        """Photos per second through the whole pipeline, one at a time on this thread."""
        total = next(s for s in self.stages if s.stage == "total")
        return total.per_second

    def to_dict(self) -> dict:
        return {
            "photos": self.photos,
            "faces": self.faces,
            "repeat": self.repeat,
            "throughput_photos_per_s": round(self.throughput, 2),
            "stages": [s.to_dict() for s in self.stages],
            "environment": self.environment,
        }


def environment(pipeline: Pipeline) -> dict:
    """Hardware and thread settings that the timings depend on."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "device": pipeline.config.device,
        "detector": pipeline.detector_name,
        "embedder": pipeline.model_id,
        "threads": pipeline.config.threads if pipeline.config.threads is not None else "runtime default",
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "FACEPRINT_THREADS") if k in os.environ},
    }


def _stats(stage: str, ms: Sequence[float]) -> StageStats:
    a = np.asarray(ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return StageStats(stage, a.size, float(a.mean()), float(p50), float(p95), float(p99))


def run_bench(
    photos: Sequence[Path],
    pipeline: Pipeline,
    *,
    repeat: int = 5,
    warmup: int = 1,
    progress: Callable[[list[Path]], Iterable[Path]] | None = None,
) -> BenchResult:
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    clock = time.perf_counter
    faces = 0
    # Load every model before timing, so the first photo does not pay for it.
    _ = pipeline.detector, pipeline.landmarker, pipeline.embedder
    for photo in progress(list(photos)) if progress else photos:
        for run in range(warmup + repeat):
            t0 = clock()
            image = load_image(photo)
            t1 = clock()
            raw = pipeline.detector.detect(image.pixels)
            t2 = clock()
            boxes = np.array([b for b, _ in raw], dtype=np.float64).reshape(-1, 4)
            points = pipeline.landmarker.predict(image.pixels, boxes) if len(boxes) else []
            t3 = clock()
            if len(boxes):
                chips = extract_chips(image.pixels, list(points), pipeline.template)
                t4 = clock()
                pipeline.embedder.embed_chips(chips)
            else:
                t4 = clock()
            t5 = clock()
            if run < warmup:
                continue
            for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True):
                times[stage].append(dt * 1000.0)
        faces += len(boxes)
    stats = tuple(_stats(s, times[s]) for s in STAGES if times[s])
    return BenchResult(stats, len(photos), faces, repeat, environment(pipeline))
