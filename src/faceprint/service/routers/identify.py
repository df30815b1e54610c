"""``POST /v1/identify``: who are the faces in this photo, or nobody we know? (the CLI's identify JSON)"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.params import StrictInt, ThresholdParams
from faceprint.service.uploads import openapi_body, read_images, validate_params

router = APIRouter(prefix="/v1", tags=["recognition"])


class IdentifyParams(ThresholdParams):
    top_k: StrictInt = Field(5, ge=1, le=100, description="Candidates returned per face")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")


@router.post(
    "/identify",
    summary="1:N identification of every face in a photo (open set: match is null for strangers)",
    openapi_extra=openapi_body({"image": "The photo"}, IdentifyParams),
)
async def identify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request)
    params = validate_params(IdentifyParams, parsed.params)
    collection = svc.collection(params.collection)
    engine = await svc.engine_for(collection)
    calibration = svc.calibration_for(engine, params.threshold)
    inf = svc.inference
    image, detections = await inf.decode_and_detect(engine, parsed.images["image"][0], then_embed=True)
    prints = await inf.embed(engine, image, detections)
    answers = await inf.run(
        "search",
        svc.gallery.identify,
        prints,
        collection=collection,
        top_k=params.top_k,
        fmr=params.fmr,
        fpir=params.fpir,
        threshold=params.threshold,
        calibration=calibration,
    )
    faces = [a.to_dict() for a in answers]
    threshold = answers[0].threshold if answers else None
    rule = {
        "rule": params.rule,
        "fmr": answers[0].fmr if answers else params.fmr,
        "fpir": answers[0].fpir if answers else params.fpir,
    }
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
        detail={"faces": len(answers), "rule": rule["rule"]},
        model_id=engine.model_id,
    )
    return {
        "image": image.source,
        "collection": collection,
        "model": engine.model_id,
        "threshold": threshold,
        **rule,
        "faces": faces,
    }
