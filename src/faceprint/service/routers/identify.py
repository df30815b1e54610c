"""``POST /v1/identify``: who are the faces in this photo, or nobody we know? (the CLI's identify JSON)"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.uploads import openapi_body, read_images, validate_params

router = APIRouter(prefix="/v1", tags=["recognition"])


class IdentifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=100, description="Candidates returned per face")
    fmr: float | None = Field(None, gt=0, le=1, description="Target false-match rate (default 1e-3)")
    threshold: float | None = Field(None, ge=-1, le=1, description="Raw cosine-score threshold instead of fmr")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")

    @model_validator(mode="after")
    def _one_of(self) -> IdentifyParams:
        if self.fmr is not None and self.threshold is not None:
            raise ValueError("give fmr or threshold, not both")
        return self


@router.post(
    "/identify",
    summary="1:N identification of every face in a photo (open set: match is null for strangers)",
    openapi_extra=openapi_body({"image": "The photo"}, IdentifyParams),
)
async def identify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request)
    params = validate_params(IdentifyParams, parsed.params)
    collection = params.collection or svc.settings.default_collection
    calibration = svc.calibration_for(params.threshold)
    inf = svc.inference
    image, detections = await inf.decode_and_detect(parsed.images["image"][0])
    prints = await inf.embed(image, detections)
    answers = await inf.run(
        "search",
        svc.gallery.identify,
        prints,
        collection=collection,
        top_k=params.top_k,
        fmr=params.fmr,
        threshold=params.threshold,
        calibration=calibration,
    )
    faces = [a.to_dict() for a in answers]
    threshold = answers[0].threshold if answers else None
    matched = [a.match for a in answers if a.match is not None]
    for a in answers:
        svc.metrics.decisions.labels("identify", "match" if a.match else "no_match").inc()
    await record(
        request,
        principal,
        "identify",
        collection=collection,
        subject_ids=tuple(m.subject_id for m in matched),
        scores=tuple(m.score for m in matched),
        threshold=threshold,
        decision=f"{len(matched)}/{len(answers)} matched",
        detail={"faces": len(answers)},
    )
    return {"image": image.source, "collection": collection, "threshold": threshold, "faces": faces}
