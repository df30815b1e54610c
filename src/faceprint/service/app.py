"""The composition root: ``create_app(settings)`` wires settings, pipeline, gallery, keys, audit, metrics.

Nothing is created at import time. The lifespan loads the models (before the first request, so ``/readyz``
means it), opens the gallery and the service database, starts the embedder batcher, and closes all of it
on shutdown. Everything lives on ``app.state``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from anyio import to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from faceprint import __version__
from faceprint.errors import FaceprintError
from faceprint.matching import Calibration, shipped_calibration
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.service.audit import AuditLog
from faceprint.service.auth import KeyStore
from faceprint.service.batching import EmbedBatcher
from faceprint.service.errors import install_error_handlers
from faceprint.service.inference import Inference, InferenceBackend, LocalBackend
from faceprint.service.metrics import Metrics
from faceprint.service.middleware import ServiceMiddleware
from faceprint.service.settings import Settings, SettingsError
from faceprint.service.store import ServiceStore

log = logging.getLogger("faceprint.service")
STATIC_DIR = Path(__file__).with_name("static")

OPENAPI_TAGS = [
    {"name": "recognition", "description": "Detect, verify (1:1) and identify (1:N). Scope `recognize`."},
    {"name": "subjects", "description": "The gallery: subjects and their enrolled faces. Scopes `read`/`enroll`."},
    {"name": "audit", "description": "The append-only audit log. Scope `admin`."},
    {"name": "operations", "description": "Health, readiness, metrics and service information."},
]


def create_app(
    settings: Settings, *, pipeline: Pipeline | None = None, backend: InferenceBackend | None = None
) -> FastAPI:
    """The FastAPI app. ``pipeline`` lets a caller share already loaded models (tests, embedding hosts);
    ``backend`` runs the networks elsewhere (``faceprint.scale``: Ray Serve), started in the lifespan."""
    from faceprint.service.routers import audit, detect, health, identify, subjects, verify

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await to_thread.run_sync(_start, app, settings, pipeline, backend, metrics)
        try:
            yield
        finally:
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
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: useless offline, so only /openapi.json is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.ready = False
    install_error_handlers(app)
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        max_body=settings.max_upload_bytes,
        trust_request_id=settings.trust_request_id,
    )
    for router in (health.router, detect.router, verify.router, identify.router, subjects.router, audit.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _start(
    app: FastAPI, settings: Settings, pipeline: Pipeline | None, backend: InferenceBackend | None, metrics: Metrics
) -> None:
    from faceprint.gallery import open_gallery
    from faceprint.gallery.location import display_location

    store = ServiceStore(settings.service_db)
    app.state.store = store
    app.state.keys = KeyStore(store)
    app.state.audit = AuditLog(store)
    if pipeline is None:
        pipeline = Pipeline(
            PipelineConfig(
                detector=settings.detector,
                device=settings.device,
                threads=settings.threads,
                upsample=settings.upsample,
            )
        )
    if backend is None:
        # Load every model now: the first request should not pay for it, and /readyz should mean "ready".
        _warm_up(pipeline)
        batcher = EmbedBatcher(
            pipeline, max_faces=settings.batch_max_faces, max_wait_s=settings.batch_max_wait_ms / 1000, metrics=metrics
        )
        backend = LocalBackend(pipeline, batcher)
    backend.start()  # a remote backend waits here until its models answer
    app.state.backend = backend
    app.state.pipeline = pipeline
    app.state.calibration = _calibration(settings, backend.model_id)
    gallery = open_gallery(settings.gallery)
    gallery.ensure_collection(settings.default_collection, backend.model_id, backend.dim)
    app.state.gallery = gallery
    app.state.inference = Inference(
        pipeline, backend, metrics, workers=settings.inference_workers, max_pixels=settings.max_pixels
    )
    app.state.ready = True
    metrics.ready.set(1)
    if settings.auth and not app.state.keys.list(include_revoked=False):
        log.warning("no API keys exist yet: every request will get 401; create one with `faceprint keys create`")
    log.info(
        "faceprint service ready: detector %s, model %s, gallery %s",
        settings.detector,
        pipeline.model_id,
        display_location(settings.gallery),
    )


def _calibration(settings: Settings, model_id: str) -> Calibration | None:
    """The operator's table (FACEPRINT_CALIBRATION), else the one shipped for the model, else none: then
    requests must give an explicit threshold (503 ``no_calibration`` otherwise)."""
    if settings.calibration is not None:
        try:
            table = Calibration.load(settings.calibration)
        except (OSError, ValueError, TypeError) as exc:
            raise SettingsError(f"FACEPRINT_CALIBRATION: cannot read {settings.calibration}: {exc}") from None
        if table.model_id != model_id:
            raise SettingsError(
                f"FACEPRINT_CALIBRATION: {settings.calibration} calibrates {table.model_id}, not {model_id}"
            )
        return table
    try:
        return shipped_calibration(model_id)
    except FaceprintError:
        log.warning("no calibration table for %s: requests must pass an explicit threshold", model_id)
        return None


def _warm_up(pipeline: Pipeline) -> None:
    blank = np.full((160, 160, 3), 128, dtype=np.uint8)
    pipeline.detect(blank)
    _ = pipeline.landmarker
    size = int(pipeline.embedder.chip_size)
    pipeline.embedder.embed_chips(np.zeros((1, size, size, 3), dtype=np.uint8))


def _stop(app: FastAPI) -> None:
    app.state.ready = False
    app.state.metrics.ready.set(0)
    for name in ("backend", "gallery", "store"):
        thing = getattr(app.state, name, None)
        if thing is not None:
            try:
                thing.close()
            except Exception:  # shutting down: report, keep closing the rest
                log.exception("closing %s failed", name)
