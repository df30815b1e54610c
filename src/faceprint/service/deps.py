"""Small helpers the routers share: typed access to ``app.state`` and audit recording."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from faceprint.gallery import EmbeddedGallery
from faceprint.matching import Calibration
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.auth import Principal
from faceprint.service.errors import ApiError
from faceprint.service.inference import Inference
from faceprint.service.metrics import Metrics
from faceprint.service.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    inference: Inference
    gallery: EmbeddedGallery
    audit: AuditLog
    metrics: Metrics
    calibration: Calibration | None

    def calibration_for(self, threshold: float | None) -> Calibration | None:
        """The table to turn an fmr into a threshold; 503 when one is needed and the server has none."""
        if threshold is None and self.calibration is None:
            raise ApiError(
                503,
                "no_calibration",
                f"this server has no calibration table for {self.inference.pipeline.model_id}, so it cannot turn "
                "an fmr into a threshold: pass an explicit threshold, or have the operator set "
                "FACEPRINT_CALIBRATION to a table made by `faceprint calibrate`",
            )
        return self.calibration


def services(request: Request) -> Services:
    state = request.app.state
    if not getattr(state, "ready", False):
        raise ApiError(503, "not_ready", "the service is starting or stopping; retry shortly")
    return Services(state.settings, state.inference, state.gallery, state.audit, state.metrics, state.calibration)


async def record(request: Request, principal: Principal, action: str, status: int = 200, **fields: Any) -> None:
    """Append an audit entry for this request (off the event loop)."""
    svc: Services = services(request)
    route = request.scope.get("route")
    entry = AuditEntry(
        action=action,
        endpoint=f"{request.method} {getattr(route, 'path', request.url.path)}",
        status=status,
        key_id=principal.key_id,
        request_id=getattr(request.state, "request_id", None),
        model_id=svc.inference.pipeline.model_id,
        **fields,
    )
    await svc.inference.run(None, svc.audit.append, entry)
