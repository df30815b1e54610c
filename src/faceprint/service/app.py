"""The composition root: ``create_app(settings)`` wires settings, pipeline, gallery, keys, audit, metrics.

Nothing is created at import time. The lifespan loads the models (before the first request, so ``/readyz``
means it), opens the gallery and the service database, starts the embedder batcher, and closes all of it
on shutdown. Everything lives on ``app.state``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
from anyio import to_thread
from fastapi import FastAPI

from faceprint import __version__
from faceprint.evaluation.drift import DriftMonitor
from faceprint.factory import CalibrationFileError, load_calibration
from faceprint.gallery import open_gallery
from faceprint.gallery.location import display_location
from faceprint.matching import Calibration
from faceprint.pipeline import Pipeline
from faceprint.service.audit import AuditLog
from faceprint.service.auth import KeyStore
from faceprint.service.backends import InferenceBackend, LocalBackend
from faceprint.service.batching import EmbedBatcher
from faceprint.service.canary import ServingTable, Shadow
from faceprint.service.clusters import ClusterStore
from faceprint.service.engines import Engine, Engines
from faceprint.service.erasures import ErasureLog, purge_expired
from faceprint.service.errors import PROBLEM_RESPONSES, PROBLEM_SCHEMA, ApiError, install_error_handlers
from faceprint.service.inference import Inference
from faceprint.service.metrics import Metrics
from faceprint.service.middleware import ServiceMiddleware
from faceprint.service.monitoring import DriftRecorder
from faceprint.service.paths import STATIC_DIR
from faceprint.service.routers import audit, clusters, detect, drift, health, identify, liveness, subjects, verify
from faceprint.service.routers import erasures as erasures_router
from faceprint.service.routers import streams as stream_routes
from faceprint.service.routers import videos as video_routes
from faceprint.service.settings import Settings, SettingsError
from faceprint.service.store import ServiceStore
from faceprint.service.videos import VideoService
from faceprint.tracing import TracingUnavailable, configure_from_env, enabled
from faceprint.tracing import shutdown as shutdown_tracing

log = logging.getLogger("faceprint.service")

OPENAPI_TAGS = [
    {"name": "recognition", "description": "Detect, verify (1:1) and identify (1:N). Scope `recognize`."},
    {"name": "subjects", "description": "The gallery: subjects and their enrolled faces. Scopes `read`/`enroll`."},
    {
        "name": "clusters",
        "description": "Group the faces of uploaded photos into people; correct and name clusters. Scopes "
        "`recognize`/`enroll`.",
    },
    {"name": "audit", "description": "The append-only audit log. Scope `admin`."},
    {"name": "operations", "description": "Health, readiness, metrics and service information."},
    {
        "name": "video",
        "description": "Uploaded clips as background jobs (scope `recognize`) and camera streams with Server-Sent "
        "Events and webhooks (registered with scope `admin`); see docs/video.md.",
    },
]


def create_app(
    settings: Settings, *, pipeline: Pipeline | None = None, backend: InferenceBackend | None = None
) -> FastAPI:
    """The FastAPI app. ``pipeline`` lets a caller share already loaded models (tests, embedding hosts) for
    the service's own model; ``backend`` runs the networks elsewhere (``faceprint.scale``: Ray Serve), started
    in the lifespan. Collections pinned to other models get their own engines (:mod:`.engines`)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(_start, app, settings, pipeline, backend, metrics)
        try:
            async with anyio.create_task_group() as tasks:
                if settings.purge_interval_s > 0:
                    tasks.start_soon(_purge_on_schedule, app, settings.purge_interval_s)
                yield
                tasks.cancel_scope.cancel()
        finally:
            if getattr(app.state, "shadow", None) is not None:
                await app.state.shadow.drain()
            await to_thread.run_sync(_stop, app)

    app = FastAPI(
        title="faceprint",
        version=__version__,
        summary="Offline face detection, verification and identification.",
        description=(
            "Authenticate with `Authorization: Bearer KEY` or `X-API-Key: KEY` (keys: `faceprint keys create`). "
            "Errors are RFC 7807 `application/problem+json`. Images are multipart file uploads or base64 strings "
            "in JSON under the same field names."
        ),
        openapi_tags=OPENAPI_TAGS,
        responses=PROBLEM_RESPONSES,
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: useless offline, so only /openapi.json is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    app.state.clusters = ClusterStore()  # clusterings made over HTTP: in memory, bounded, expiring
    install_error_handlers(app)
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        max_body=settings.max_upload_bytes,
        trust_request_id=settings.trust_request_id,
        body_limits={"/v1/videos": (settings.max_video_bytes, "FACEPRINT_MAX_VIDEO_BYTES")},
    )
    for router in (
        health.router,
        detect.router,
        liveness.router,
        verify.router,
        identify.router,
        subjects.router,
        clusters.router,
        audit.router,
        drift.router,
        erasures_router.router,
        video_routes.router,
        stream_routes.router,
    ):
        app.include_router(router)
    app.mount("/static", health.UiStaticFiles(directory=STATIC_DIR), name="static")
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # the error body every route's `default` response refers to
        spec = generate_openapi()  # FastAPI's cached document: the component is added once
        spec.setdefault("components", {}).setdefault("schemas", {}).setdefault("Problem", PROBLEM_SCHEMA)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _start(
    app: FastAPI, settings: Settings, pipeline: Pipeline | None, backend: InferenceBackend | None, metrics: Metrics
) -> None:
    # Traces over OTLP when FACEPRINT_OTEL_ENDPOINT (or OTEL_EXPORTER_OTLP_*) is set; a caller's own set-up wins.
    try:
        app.state.owns_tracing = not enabled() and configure_from_env() is not None
    except (TracingUnavailable, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    store = ServiceStore(settings.service_db)
    app.state.store = store
    app.state.keys = KeyStore(store)
    app.state.audit = AuditLog(store)
    app.state.erasures = ErasureLog(store)
    if pipeline is None:
        pipeline = Pipeline(settings.pipeline_config())
    local = backend is None
    calibration = _calibration(settings, pipeline.model_id)
    if backend is None:
        default = _local_engine(pipeline, settings, metrics, calibration)
    else:
        backend.start()  # a remote backend waits here until its models answer
        default = Engine(pipeline, backend, calibration)
    # Other models are loaded for the collections pinned to them; a remote backend serves one model only.
    engines = Engines(default, (lambda model: _load_engine(model, settings, metrics)) if local else None)
    app.state.engines = engines
    gallery = open_gallery(settings.gallery)
    app.state.gallery = gallery
    engines.serve_collections(gallery.list_collections())
    if all(c.name != settings.default_collection for c in gallery.list_collections()):
        gallery.ensure_collection(settings.default_collection, default.model_id, default.dim)
    app.state.inference = Inference(
        metrics,
        workers=settings.inference_workers,
        max_pixels=settings.max_pixels,
        max_queue=settings.queue_limit,
        decode_max_pixels=settings.decode_max_pixels,
    )
    _start_monitoring(app, settings, metrics)
    videos = VideoService(settings, metrics, app.state.audit, store)
    app.state.videos = videos
    restored = videos.restore(engines, gallery, app.state.serving.resolve)  # watchers open in their threads
    if restored:
        log.info("%d registered stream(s) restarted", restored)
    app.state.ready = True
    metrics.ready.set(1)
    if settings.auth and not app.state.keys.list(include_revoked=False):
        log.warning("no API keys exist yet: every request will get 401; create one with `faceprint keys create`")
    log.info(
        "faceprint service ready: models %s, gallery %s",
        ", ".join(f"{e.model_id} (detector {e.pipeline.detector_name})" for e in engines.loaded),
        display_location(settings.gallery),
    )
    for model, why in engines.refused().items():
        log.warning("collections on %s are not served: %s", model, why)


def _start_monitoring(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Drift windows (read back from the last run), the canary serving table and the shadow model."""
    app.state.drift = DriftRecorder(DriftMonitor(settings.drift_file, window=settings.drift_window))
    app.state.serving = ServingTable(app.state.store)
    app.state.shadow = None
    if settings.shadow is None:
        return
    try:
        app.state.engines.for_model(settings.shadow)
    except ApiError as exc:
        raise SettingsError(f"FACEPRINT_SHADOW: {exc.detail}") from None
    app.state.shadow = Shadow(
        settings.shadow,
        settings.shadow_fraction,
        engines=app.state.engines,
        gallery=app.state.gallery,
        serving=app.state.serving,
        metrics=metrics,
        store=app.state.store,
        limiter=app.state.inference.limiter,
    )
    log.info("shadow model %s on %.0f%% of identify requests", settings.shadow, 100 * settings.shadow_fraction)


def _purge_round(app: FastAPI) -> list[dict[str, Any]]:
    state = app.state
    return purge_expired(state.gallery, state.audit, state.erasures, actor="retention-schedule")


async def _purge_on_schedule(app: FastAPI, interval_s: float) -> None:
    """Delete expired subjects now and every ``interval_s`` seconds, each with a receipt and an audit entry
    (searches never return them anyway: this removes their data). A failed round is logged and retried."""
    while True:
        try:
            receipts = await to_thread.run_sync(_purge_round, app)
            if receipts:
                log.info("retention: purged %d expired subject(s)", len(receipts))
        except Exception:  # a full disk, a lost database: keep serving, try again next round
            log.exception("the scheduled purge of expired subjects failed")
        await anyio.sleep(interval_s)


def _load_engine(model_id: str, settings: Settings, metrics: Metrics) -> Engine:
    """An engine for a collection pinned to ``model_id``: that model's whole profile, loaded and warmed."""
    pipeline = Pipeline(settings.pipeline_config(model_id))
    return _local_engine(pipeline, settings, metrics, pipeline.calibration)


def _calibration(settings: Settings, model_id: str) -> Calibration | None:
    """The operator's table (FACEPRINT_CALIBRATION) for the service's model, else the shipped one, else none."""
    try:
        table = load_calibration(model_id, settings.calibration)
    except CalibrationFileError as exc:
        raise SettingsError(f"FACEPRINT_CALIBRATION: {exc}") from None
    if table is None:
        log.warning("no calibration table for %s: requests must pass an explicit threshold", model_id)
    return table


def _local_engine(pipeline: Pipeline, settings: Settings, metrics: Metrics, calibration: Calibration | None) -> Engine:
    # Load every model now: the first request should not pay for it, and /readyz should mean "ready".
    _warm_up(pipeline)
    batcher = EmbedBatcher(
        pipeline, max_faces=settings.batch_max_faces, max_wait_s=settings.batch_max_wait_ms / 1000, metrics=metrics
    )
    engine = Engine(pipeline, LocalBackend(pipeline, batcher), calibration)
    engine.backend.start()
    return engine


def _warm_up(pipeline: Pipeline) -> None:
    blank = np.full((160, 160, 3), 128, dtype=np.uint8)
    pipeline.detect(blank)
    _ = pipeline.landmarker
    size = int(pipeline.embedder.chip_size)
    pipeline.embedder.embed_chips(np.zeros((1, size, size, 3), dtype=np.uint8))


def _stop(app: FastAPI) -> None:
    app.state.ready = False
    app.state.metrics.ready.set(0)
    drift = getattr(app.state, "drift", None)
    if drift is not None:
        drift.save()
    for name in ("videos", "engines", "gallery", "store"):
        thing = getattr(app.state, name, None)
        if thing is not None:
            try:
                thing.close()
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("closing %s failed", name)
    if getattr(app.state, "owns_tracing", False):
        shutdown_tracing()  # export the spans still buffered
