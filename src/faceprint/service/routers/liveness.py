"""``POST /v1/liveness``: is each face in the photo a live person, or a printed photo or a screen?"""

from __future__ import annotations

from fastapi import APIRouter, Request

from faceprint.liveness import LivenessResult
from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.params import LivenessParams
from faceprint.service.uploads import openapi_body, read_images, validate_params

router = APIRouter(prefix="/v1", tags=["recognition"])


@router.post(
    "/liveness",
    summary="Liveness (presentation-attack detection) of every face: P(live), the decision, APCER/BPCER",
    openapi_extra=openapi_body({"image": "The photo"}, LivenessParams),
)
async def liveness(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request)
    params = validate_params(LivenessParams, parsed.params)
    engine = svc.engines.default  # its pipeline holds the liveness model (loaded on first use)
    inf = svc.inference
    image, detections = await inf.decode_and_detect(engine, parsed.images["image"][0])
    results = await inf.liveness(engine.pipeline, image, detections, threshold=params.threshold, apcer=params.apcer)
    svc.count_liveness("liveness", list(results))
    live = sum(r.live for r in results)
    await record(
        request,
        principal,
        "liveness",
        scores=tuple(r.score for r in results),
        threshold=results[0].threshold if results else None,
        decision=f"{live}/{len(results)} live",
        detail={"faces": len(results), "live": [r.live for r in results], "liveness_model": _model(results)},
        model_id=engine.model_id,
    )
    return {
        "image": image.source,
        "model": _model(results),
        "faces": [r.to_dict() for r in results],
    }


def _model(results: list[LivenessResult]) -> str | None:
    return results[0].model if results else None
