"""``POST /v1/verify``: are the largest faces of two photos the same person? (the CLI's verify JSON)

With ``liveness=require`` a face judged an attack makes the answer ``"decision": "not_live"`` (200, with
``same_person: false``, the reasons and no score: a refusal is a decision, not bad input, and an attacker
learns nothing about the similarity); ``flag`` adds each image's ``liveness`` to the usual answer."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import Field

from faceprint.errors import NoFaceFound
from faceprint.liveness import LivenessPolicy, LivenessResult, attack_reason
from faceprint.matching import decide
from faceprint.pipeline import Pipeline
from faceprint.service.auth import Recognize
from faceprint.service.deps import record, services
from faceprint.service.engines import Engine
from faceprint.service.errors import ApiError
from faceprint.service.inference import Inference
from faceprint.service.monitoring import face_observations, request_source
from faceprint.service.params import LivenessMode, Source, ThresholdParams
from faceprint.service.uploads import Upload, openapi_body, read_images, validate_params
from faceprint.types import Faceprint
from faceprint.verify import Verification

router = APIRouter(prefix="/v1", tags=["recognition"])


class VerifyParams(ThresholdParams):
    collection: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Compare with this collection's model (default: the service's model for new collections)",
    )
    liveness: LivenessMode = None
    source: Source = None


async def _largest_checked(
    inf: Inference, engine: Engine, upload: Upload, live_pipeline: Pipeline, policy: LivenessPolicy
) -> tuple[Faceprint | None, int, LivenessResult | None]:
    """The largest face's faceprint, the number of faces and its liveness; no faceprint (nothing embedded)
    when ``require`` refuses the face."""
    image, detections = await inf.decode_and_detect(engine, upload, then_embed=not policy.checks)
    if not detections:
        raise NoFaceFound(image.source)
    largest = max(detections, key=lambda d: d.area)
    (checked,) = await inf.check(live_pipeline, policy, image, [largest])
    if policy.refuses(checked):
        return None, len(detections), checked
    (fp,) = await inf.embed(engine, image, [largest])
    return fp, len(detections), checked


@router.post(
    "/verify",
    summary="1:1 verification of the largest face in each of two photos",
    openapi_extra=openapi_body({"image_a": "First photo", "image_b": "Second photo"}, VerifyParams),
)
async def verify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image_a", "image_b"), max_images=svc.settings.max_images_per_request)
    params = validate_params(VerifyParams, parsed.params)
    source = request_source(request, params.source)
    # A named collection: the model of the copy that answers for it (`faceprint canary promote`).
    engine = (
        svc.engines.default if params.collection is None else await svc.engine_for(svc.collection(params.collection))
    )
    calibration = svc.calibration_for(engine, params.threshold)
    policy = svc.liveness_policy(params.liveness)
    live_pipeline = svc.engines.default.pipeline
    inf = svc.inference
    fields = ("image_a", "image_b")
    results = await asyncio.gather(
        *(_largest_checked(inf, engine, parsed.images[f][0], live_pipeline, policy) for f in fields),
        return_exceptions=True,
    )
    collection = svc.collection(params.collection)
    for result in results:
        if isinstance(result, NoFaceFound):
            svc.metrics.photos.labels("verify", collection, "no_face").inc()
        elif not isinstance(result, BaseException):
            svc.metrics.photos.labels("verify", collection, "face").inc()
    for field, result in zip(fields, results, strict=True):
        if isinstance(result, NoFaceFound):
            raise ApiError(422, "no_face", f"{field}: no face found", field=field)
        if isinstance(result, BaseException):
            raise result
    (fa, na, la), (fb, nb, lb) = results  # type: ignore[misc]
    checks = {"image_a": la, "image_b": lb}
    svc.count_liveness("verify", [la, lb])
    liveness = {f: None if r is None else r.to_dict() for f, r in checks.items()}
    audit_liveness = {f: None if r is None else {"live": r.live, "score": round(r.score, 6)} for f, r in checks.items()}
    if fa is None or fb is None:  # require: an attack is refused, nothing is compared
        reasons = [f"{f}: {attack_reason(r)}" for f, r in checks.items() if r is not None and policy.refuses(r)]
        svc.metrics.decisions.labels("verify", "not_live", collection).inc()
        await record(
            request,
            principal,
            "verify",
            decision="not_live",
            detail={"liveness": audit_liveness, "reasons": reasons},
            model_id=engine.model_id,
        )
        return {"same_person": False, "decision": "not_live", "reasons": reasons, "liveness": liveness}
    await svc.observe(
        params.collection,
        source,
        face_observations([f.detection for f in (fa, fb) if f.detection is not None], [fa, fb], [la, lb]),
    )
    decision = decide(fa, fb, fmr=params.fmr, fpir=params.fpir, threshold=params.threshold, calibration=calibration)
    out = Verification(decision, fa, fb, na, nb).to_dict()
    if policy.checks:
        out["liveness"] = liveness
    svc.metrics.decisions.labels("verify", "same" if decision.same_person else "different", collection).inc()
    detail: dict[str, object] = {"rule": decision.rule, "fmr": decision.fmr, "fpir": decision.fpir}
    if policy.checks:
        detail["liveness"] = audit_liveness
    await record(
        request,
        principal,
        "verify",
        scores=(decision.score,),
        threshold=decision.threshold,
        decision="same" if decision.same_person else "different",
        detail=detail,
        model_id=engine.model_id,
    )
    return out
