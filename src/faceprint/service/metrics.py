"""Prometheus metrics, on a registry owned by one app (no process-global collectors).

Request counts and latency per route template (``/v1/subjects/{subject_id}``, never raw paths, so the label
set stays bounded), time per pipeline stage, embedder batch sizes, admission (requests in the CPU pipeline,
queue depth, 503 ``overloaded`` rejections), decisions, liveness decisions, and gallery size (read from the gallery when
``/metrics`` is scraped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGES = ("decode", "detect", "liveness", "embed", "search", "enrol")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "faceprint_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "faceprint_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "faceprint_stage_duration_seconds",
            "Time spent per pipeline stage (per call)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "faceprint_embed_batch_faces",
            "Faces per embedder run (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_waits = Counter(
            "faceprint_embed_batch_waits",
            "Why the embedder stopped gathering a batch and ran it",
            ["reason"],
            registry=r,
        )
        self.admitted = Gauge(
            "faceprint_admission_in_flight",
            "Requests admitted to the CPU pipeline (decode, detect, embed) and not yet through it",
            registry=r,
        )
        self.queue_depth = Gauge(
            "faceprint_admission_queue_depth",
            "Admitted requests beyond the worker count: waiting for a worker or for the embedder",
            registry=r,
        )
        self.rejected = Counter(
            "faceprint_admission_rejections",
            "Requests answered 503 overloaded because the admission queue was full (FACEPRINT_MAX_QUEUE)",
            registry=r,
        )
        self.decisions = Counter(
            "faceprint_decisions",
            "Verification and identification decisions, per collection (the SLIs' match and no-match rates)",
            ["action", "decision", "collection"],
            registry=r,
        )
        self.liveness = Counter(
            "faceprint_liveness_decisions",
            "Liveness decisions per checked face: live or attack, by the action that checked it",
            ["action", "decision"],
            registry=r,
        )
        self.gallery_subjects = Gauge(
            "faceprint_gallery_subjects", "Subjects in the collection", ["collection"], registry=r
        )
        self.gallery_templates = Gauge(
            "faceprint_gallery_templates", "Templates in the collection", ["collection"], registry=r
        )
        self.ready = Gauge("faceprint_ready", "1 when models are loaded and the gallery is open", registry=r)
        # Drift (issue 17): rolling distributions per collection and source against a baseline window.
        drift_labels = ["collection", "source", "feature"]
        self.drift_psi = Gauge(
            "faceprint_drift_psi",
            "Population stability index of a feature (face size, quality, liveness, best score) against its baseline",
            drift_labels,
            registry=r,
        )
        self.drift_ks_statistic = Gauge(
            "faceprint_drift_ks_statistic",
            "Two-sample Kolmogorov-Smirnov statistic against the baseline",
            drift_labels,
            registry=r,
        )
        self.drift_ks_pvalue = Gauge(
            "faceprint_drift_ks_pvalue",
            "Two-sample Kolmogorov-Smirnov p-value against the baseline",
            drift_labels,
            registry=r,
        )
        # Shadow and canary models (issue 17): a second embedder on a fraction of requests, never answering.
        shadow_labels = ["collection", "model", "shadow_model"]
        self.shadow_requests = Counter(
            "faceprint_shadow_requests", "Requests also run through the shadow model", shadow_labels, registry=r
        )
        self.shadow_decisions = Counter(
            "faceprint_shadow_decisions",
            "Shadow decisions by agreement with the serving model's decision (agree|disagree)",
            [*shadow_labels, "agreement"],
            registry=r,
        )
        self.shadow_score_shift = Histogram(
            "faceprint_shadow_score_shift",
            "Shadow best-match score minus serving best-match score, each over its own model's threshold",
            shadow_labels,
            buckets=(-0.5, -0.2, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
            registry=r,
        )
        self.shadow_latency = Histogram(
            "faceprint_shadow_duration_seconds",
            "Time the shadow model took per request",
            shadow_labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "faceprint_model_info",
            "1 for each model serving (role=serving) or shadowing (role=shadow) a collection, with its sha256",
            ["collection", "model", "sha256", "role"],
            registry=r,
        )
        # SLIs (issue 17): no-face and enrolment rejection rates per collection, and whether the gallery answers.
        self.photos = Counter(
            "faceprint_photos",
            "Photos searched for faces by identify, verify and enrolment, by whether a face was found (face|no_face)",
            ["action", "collection", "outcome"],
            registry=r,
        )
        self.enrolment_photos = Counter(
            "faceprint_enrolment_photos",
            "Enrolment photos by outcome (accepted|rejected: no face, quality, liveness, unreadable)",
            ["collection", "outcome"],
            registry=r,
        )
        self.gallery_up = Gauge(
            "faceprint_gallery_up", "1 when the gallery answered the last /metrics scrape, 0 when it failed", registry=r
        )
        # CPU seconds and memory of this process (process_cpu_seconds_total: the cost per 1,000 requests).
        ProcessCollector(registry=r)
        # Video files and camera streams (issue 16).
        self.video_frames = Counter(
            "faceprint_video_frames", "Frames read from video jobs and streams", ["kind"], registry=r
        )
        self.video_events = Counter(
            "faceprint_video_events",
            "Track events emitted (track_start, identity, track_end)",
            ["kind", "type"],
            registry=r,
        )
        self.video_tracks = Gauge("faceprint_video_tracks", "Tracks open now", ["kind"], registry=r)
        self.stream_lag = Gauge(
            "faceprint_stream_lag_seconds",
            "How far a camera stream's processing is behind live",
            ["stream"],
            registry=r,
        )

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)

    def timed(self, stage: str, func: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            with self.time_stage(stage):
                return func(*args, **kwargs)

        return wrapper

    def render(self) -> bytes:
        return generate_latest(self.registry)
