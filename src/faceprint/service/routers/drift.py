"""``GET /v1/drift``: the drift report of ``faceprint drift`` as JSON, from the running service (scope ``read``).

Per collection and source: the summary in words and, per feature, the baseline and current medians, PSI,
KS statistic and p-value (:mod:`faceprint.evaluation.drift`). Numbers only: never images or vectors."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from faceprint.evaluation.drift import report_dict
from faceprint.service.auth import Read
from faceprint.service.deps import services
from faceprint.service.params import SaneDatetime

router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/drift", summary="Input drift per collection and source against the baseline window")
async def drift(
    request: Request,
    principal: Read,
    source: Annotated[
        str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$", description="Only this source")
    ] = None,
    since: Annotated[
        SaneDatetime | None, Query(description="Only current-window faces recorded since then (ISO-8601; naive: UTC)")
    ] = None,
) -> dict[str, object]:
    svc = services(request)
    after = since.timestamp() if since is not None else None
    items = await svc.inference.run(None, report_dict, svc.drift.monitor, since=after, source=source)
    return {"window": svc.drift.monitor.window, "items": items}
