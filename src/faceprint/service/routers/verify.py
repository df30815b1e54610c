"""``POST /v1/verify``: are the largest faces of two photos the same person? (the CLI's verify JSON)"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import Field

from faceprint.errors import NoFaceFound
from faceprint.matching import decide
from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.errors import ApiError
from faceprint.service.params import ThresholdParams
from faceprint.service.uploads import openapi_body, read_images, validate_params
from faceprint.verify import Verification

router = APIRouter(prefix="/v1", tags=["recognition"])


class VerifyParams(ThresholdParams):
    collection: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Compare with this collection's model (default: the service's model for new collections)",
    )


@router.post(
    "/verify",
    summary="1:1 verification of the largest face in each of two photos",
    openapi_extra=openapi_body({"image_a": "First photo", "image_b": "Second photo"}, VerifyParams),
)
async def verify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image_a", "image_b"), max_images=svc.settings.max_images_per_request)
    params = validate_params(VerifyParams, parsed.params)
    engine = svc.engines.default if params.collection is None else await svc.engine_for(params.collection)
    calibration = svc.calibration_for(engine, params.threshold)
    inf = svc.inference
    results = await asyncio.gather(
        inf.largest_face(engine, parsed.images["image_a"][0]),
        inf.largest_face(engine, parsed.images["image_b"][0]),
        return_exceptions=True,
    )
    for field, result in zip(("image_a", "image_b"), results, strict=True):
        if isinstance(result, NoFaceFound):
            raise ApiError(422, "no_face", f"{field}: no face found", field=field)
        if isinstance(result, BaseException):
            raise result
    (fa, na), (fb, nb) = results  # type: ignore[misc]
    decision = decide(fa, fb, fmr=params.fmr, fpir=params.fpir, threshold=params.threshold, calibration=calibration)
    out = Verification(decision, fa, fb, na, nb).to_dict()
    svc.metrics.decisions.labels("verify", "same" if decision.same_person else "different").inc()
    await record(
        request,
        principal,
        "verify",
        scores=(decision.score,),
        threshold=decision.threshold,
        decision="same" if decision.same_person else "different",
        detail={"rule": decision.rule, "fmr": decision.fmr, "fpir": decision.fpir},
        model_id=engine.model_id,
    )
    return out

