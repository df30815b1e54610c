"""``POST /v1/verify``: are the largest faces of two photos the same person? (the CLI's verify JSON)"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faceprint.errors import NoFaceFound
from faceprint.matching import Decision, check_compatible, cosine_scores, decide, score_to_distance
from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.errors import ApiError
from faceprint.service.uploads import openapi_body, read_images, validate_params
from faceprint.types import Faceprint
from faceprint.verify import Verification

router = APIRouter(prefix="/v1", tags=["recognition"])


class VerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fmr: float | None = Field(None, gt=0, le=1, description="Target false-match rate (default 1e-3)")
    threshold: float | None = Field(None, ge=-1, le=1, description="Raw cosine-score threshold instead of fmr")

    @model_validator(mode="after")
    def _one_of(self) -> VerifyParams:
        if self.fmr is not None and self.threshold is not None:
            raise ValueError("give fmr or threshold, not both")
        return self


@router.post(
    "/verify",
    summary="1:1 verification of the largest face in each of two photos",
    openapi_extra=openapi_body({"image_a": "First photo", "image_b": "Second photo"}, VerifyParams),
)
async def verify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image_a", "image_b"), max_images=svc.settings.max_images_per_request)
    params = validate_params(VerifyParams, parsed.params)
    calibration = svc.calibration_for(params.threshold)
    inf = svc.inference
    results = await asyncio.gather(
        inf.largest_face(parsed.images["image_a"][0]),
        inf.largest_face(parsed.images["image_b"][0]),
        return_exceptions=True,
    )
    for field, result in zip(("image_a", "image_b"), results, strict=True):
        if isinstance(result, NoFaceFound):
            raise ApiError(422, "no_face", f"{field}: no face found", field=field)
        if isinstance(result, BaseException):
            raise result
    (fa, na), (fb, nb) = results  # type: ignore[misc]
    if calibration is None:
        decision = _decide_uncalibrated(fa, fb, params.threshold)  # type: ignore[arg-type]
    else:
        decision = decide(fa, fb, fmr=params.fmr, threshold=params.threshold, calibration=calibration)
    out = Verification(decision, fa, fb, na, nb).to_dict()
    svc.metrics.decisions.labels("verify", "same" if decision.same_person else "different").inc()
    await record(
        request,
        principal,
        "verify",
        scores=(decision.score,),
        threshold=decision.threshold,
        decision="same" if decision.same_person else "different",
        detail={"fmr": decision.fmr},
    )
    return out


def _decide_uncalibrated(a: Faceprint, b: Faceprint, threshold: float) -> Decision:
    """An explicit threshold on a server without a calibration table: the FMR is unknown (``null``).

    (``matching.decide`` looks the shipped table up even for an explicit threshold, to report its FMR.)
    """
    check_compatible(a, b)
    score = float(cosine_scores(a.vector, b.vector)[0, 0])
    return Decision(
        same_person=score >= threshold,
        score=score,
        distance=float(score_to_distance(score)),
        threshold=float(threshold),
        fmr=None,  # type: ignore[arg-type]
        model=a.model_id,
    )
