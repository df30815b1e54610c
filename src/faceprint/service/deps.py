"""Small helpers the routers share: typed access to ``app.state`` and audit recording."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from faceprint.evaluation.drift import Observation
from faceprint.gallery import Gallery
from faceprint.liveness import LivenessPolicy, LivenessResult
from faceprint.matching import Calibration
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.auth import Principal
from faceprint.service.canary import ServingTable, Shadow
from faceprint.service.engines import Engine, Engines
from faceprint.service.erasures import ErasureLog
from faceprint.service.errors import ApiError
from faceprint.service.inference import Inference
from faceprint.service.metrics import Metrics
from faceprint.service.monitoring import DriftRecorder
from faceprint.service.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    inference: Inference
    engines: Engines
    gallery: Gallery
    audit: AuditLog
    metrics: Metrics
    serving: ServingTable
    drift: DriftRecorder
    shadow: Shadow | None
    erasures: ErasureLog

    def collection(self, name: str | None) -> str:
        """The gallery collection that answers for ``name`` (default: the default collection): itself, or
        the copy on another model that `faceprint canary promote` made serve it."""
        return self.serving.resolve(name or self.settings.default_collection)

    async def observe(self, collection: str | None, source: str, observations: list[Observation]) -> None:
        """Add a request's faces to the drift windows of its collection (the name clients use) and source."""
        if observations and self.drift.record(collection or self.settings.default_collection, source, observations):
            await self.inference.run(None, self.drift.save)

    async def engine_for(self, collection: str) -> Engine:
        """The engine of the model ``collection`` is pinned to (503 ``model_unavailable`` when this service
        cannot serve it); the default engine for a collection that does not exist yet."""
        return await self.inference.run(None, self.engines.for_collection, self.gallery, collection)

    def liveness_policy(self, mode: str | None) -> LivenessPolicy:
        """The request's ``liveness`` mode, else the server's (``FACEPRINT_LIVENESS``)."""
        return LivenessPolicy(mode or self.settings.liveness)

    def count_liveness(self, action: str, results: list[LivenessResult | None]) -> None:
        for r in results:
            if r is not None:
                self.metrics.liveness.labels(action, "live" if r.live else "attack").inc()

    def calibration_for(self, engine: Engine, threshold: float | None) -> Calibration | None:
        """The table to turn an fmr/fpir into a threshold; 503 when one is needed and the model has none."""
        if threshold is None and engine.calibration is None:
            raise ApiError(
                503,
                "no_calibration",
                f"this server has no calibration table for {engine.model_id}, so it cannot turn an fmr or fpir "
                "into a threshold: pass an explicit threshold, or have the operator set FACEPRINT_CALIBRATION to "
                "a table made by `faceprint calibrate`",
            )
        return engine.calibration


def services(request: Request) -> Services:
    state = request.app.state
    if not getattr(state, "ready", False):
        raise ApiError(503, "not_ready", "the service is starting or stopping; retry shortly")
    return Services(
        state.settings,
        state.inference,
        state.engines,
        state.gallery,
        state.audit,
        state.metrics,
        state.serving,
        state.drift,
        state.shadow,
        state.erasures,
    )


async def record(
    request: Request, principal: Principal, action: str, status: int = 200, *, model_id: str | None = None,
    **fields: Any,
) -> None:  # fmt: skip
    """Append an audit entry for this request (off the event loop); ``model_id``: the model that answered
    (default: the service's model for new collections), recorded with the sha256 of its weights."""
    svc: Services = services(request)
    route = request.scope.get("route")
    model = model_id or svc.engines.default.model_id
    entry = AuditEntry(
        action=action,
        endpoint=f"{request.method} {getattr(route, 'path', request.url.path)}",
        status=status,
        key_id=principal.key_id,
        request_id=getattr(request.state, "request_id", None),
        model_id=model,
        model_sha256=svc.engines.sha256(model),
        **fields,
    )
    await svc.inference.run(None, svc.audit.append, entry)


def audit_liveness(results: list[LivenessResult | None], checked: bool = True) -> dict[str, object]:
    """``{"liveness": [...]}``: each face's liveness decision and score for the audit log (never the image);
    empty when liveness was not checked."""
    if not checked:
        return {}
    return {"liveness": [None if r is None else {"live": r.live, "score": round(r.score, 6)} for r in results]}
