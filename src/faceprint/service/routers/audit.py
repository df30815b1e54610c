"""``GET /v1/audit``: recent audit entries, newest first (scope ``admin``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from faceprint.service.auth import Admin
from faceprint.service.deps import services
from faceprint.service.params import SQL_INT_MAX

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", summary="Audit entries, newest first (never images or vectors)")
async def list_audit(
    request: Request,
    principal: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    action: Annotated[str | None, Query(max_length=50)] = None,
    key_id: Annotated[str | None, Query(max_length=20)] = None,
    subject_id: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[str | None, Query(max_length=40, description="ISO-8601 UTC time")] = None,
    before_id: Annotated[
        int | None, Query(ge=1, le=SQL_INT_MAX, description="Page: entries older than this id")
    ] = None,
) -> dict[str, object]:
    svc = services(request)
    entries = await svc.inference.run(
        None,
        svc.audit.query,
        limit=limit,
        action=action,
        key_id=key_id,
        subject_id=subject_id,
        since=since,
        before_id=before_id,
    )
    return {"items": [e.to_dict() for e in entries]}
