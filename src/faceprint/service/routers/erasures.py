"""``GET /v1/erasures/{receipt_id}``: a signed erasure receipt, exactly as issued (scope ``admin``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from faceprint.service.auth import Admin
from faceprint.service.deps import services

router = APIRouter(prefix="/v1/erasures", tags=["audit"])


@router.get("/{receipt_id}", summary="A signed erasure receipt (verify offline: faceprint audit verify-receipt)")
async def get_erasure(
    receipt_id: Annotated[str, Path(min_length=1, max_length=64)],
    request: Request,
    principal: Admin,
) -> dict[str, Any]:
    svc = services(request)
    return await svc.inference.run(None, svc.erasures.get, receipt_id)
