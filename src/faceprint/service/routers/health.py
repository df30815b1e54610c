"""Operations: liveness, readiness, Prometheus metrics, service information, and the web UI's page."""

from __future__ import annotations

import logging

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from faceprint import __version__
from faceprint.service.auth import authenticate_request
from faceprint.service.errors import ApiError
from faceprint.service.monitoring import export_model_info
from faceprint.service.paths import STATIC_DIR

router = APIRouter()
log = logging.getLogger("faceprint.service")


@router.get("/healthz", tags=["operations"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], summary="Models loaded, gallery open, storage writable (503 otherwise)")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {"models": bool(getattr(state, "ready", False)), "gallery": False, "storage": True}
    gallery = getattr(state, "gallery", None)
    if gallery is not None:
        try:
            gallery.get_collection(state.settings.default_collection)
            checks["gallery"] = True
        except Exception:
            checks["gallery"] = False
    # Disk full or read-only (the gallery's or the service database's): cheap, probed every few seconds.
    for store in (gallery, getattr(state, "store", None)):
        probe = getattr(store, "check_storage", None)
        if probe is not None and await to_thread.run_sync(probe) is not None:
            checks["storage"] = False
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics (scope `read` unless FACEPRINT_METRICS_PUBLIC)",
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if not state.settings.metrics_public:
        principal = await authenticate_request(request)
        if not principal.allows("read"):
            raise ApiError(403, "forbidden", "metrics need a key with the 'read' scope", required_scope="read")
    if getattr(state, "ready", False):
        try:
            collections = await to_thread.run_sync(state.gallery.list_collections)
            for coll in collections:
                stats = await to_thread.run_sync(state.gallery.stats, coll.name)
                state.metrics.gallery_subjects.labels(coll.name).set(stats.subjects)
                state.metrics.gallery_templates.labels(coll.name).set(stats.templates)
        except Exception:  # the scrape still answers: faceprint_gallery_up 0 is what alerts
            log.exception("reading the gallery for /metrics failed")
            state.metrics.gallery_up.set(0)
        else:
            state.metrics.gallery_up.set(1)
            shadow = state.settings.shadow
            await to_thread.run_sync(
                export_model_info, state.metrics, collections, state.engines, state.serving, shadow
            )
        await to_thread.run_sync(state.drift.export, state.metrics)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get(
    "/v1/info", tags=["operations"], summary="Version, loaded models (with detectors), and whether keys are required"
)
async def info(request: Request) -> dict[str, object]:
    """``model_id``/``detector``: the model new collections get; ``models``: every model loaded, each with
    its detector and landmarks; ``unavailable``: models that collections are pinned to but that cannot be
    served here, with the reason."""
    state = request.app.state
    settings = state.settings
    engines = getattr(state, "engines", None)
    default = None if engines is None else engines.default
    return {
        "version": __version__,
        "auth": settings.auth,
        "ready": bool(getattr(state, "ready", False)),
        "model_id": None if default is None else default.model_id,
        "detector": None if default is None else default.pipeline.detector_name,
        "models": [] if engines is None else [e.describe() for e in engines.loaded],
        "unavailable": {} if engines is None else engines.refused(),
        "collection": settings.default_collection,
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_images_per_request": settings.max_images_per_request,
            "inference_workers": settings.inference_workers,
            "max_queue": settings.queue_limit,
        },
    }


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=UI_HEADERS)


# The UI is one page of our own script: forbid everything else (framing, inline script, other origins).
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class UiStaticFiles(StaticFiles):
    """``/static``: the UI's files, each with the page's security headers (``/static/index.html`` is the
    page too, and ``nosniff`` keeps a browser from running a file as another type)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(UI_HEADERS)
        return response
