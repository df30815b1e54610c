"""``POST /v1/detect``: faces with boxes, scores, landmarks and quality."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from faceprint.service.auth import Recognize
from faceprint.service.deps import services
from faceprint.service.uploads import openapi_body, read_images, validate_params

router = APIRouter(prefix="/v1", tags=["recognition"])


class DetectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@router.post(
    "/detect",
    summary="Find faces: box, score, 5 landmarks and quality per face",
    openapi_extra=openapi_body({"image": "The photo"}, DetectParams),
)
async def detect(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request)
    validate_params(DetectParams, parsed.params)
    engine = svc.engines.default
    image, faces = await svc.inference.decode_and_detect(engine, parsed.images["image"][0])
    qualities = await svc.inference.quality(engine, image, faces)
    return {
        "image": image.source,
        "detector": engine.pipeline.detector_name,
        "width": image.width,
        "height": image.height,
        "faces": [{**face.to_dict(), "quality": q} for face, q in zip(faces, qualities, strict=True)],
    }
