"""``POST /v1/identify``: who are the faces in this photo, or nobody we know? (the CLI's identify JSON)

With ``liveness=require`` a face judged an attack is not searched: its ``match`` is ``null`` with the reason
in ``refused``; ``flag`` (and ``require``) add each face's ``liveness``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from faceprint.liveness import refused_match
from faceprint.service.auth import Recognize
from faceprint.service.deps import audit_liveness, record, services
from faceprint.service.errors import ApiError
from faceprint.service.monitoring import face_observations, request_source
from faceprint.service.params import LivenessMode, Source, StrictInt, ThresholdParams
from faceprint.service.uploads import openapi_body, read_images, validate_params

router = APIRouter(prefix="/v1", tags=["recognition"])


class IdentifyParams(ThresholdParams):
    top_k: StrictInt = Field(5, ge=1, le=100, description="Candidates returned per face")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")
    liveness: LivenessMode = None
    source: Source = None
    purpose: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Consider only subjects who consented to this purpose (a key bound to a purpose always does)",
    )


@router.post(
    "/identify",
    summary="1:N identification of every face in a photo (open set: match is null for strangers)",
    openapi_extra=openapi_body({"image": "The photo"}, IdentifyParams),
)
async def identify(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request)
    params = validate_params(IdentifyParams, parsed.params)
    source = request_source(request, params.source)
    collection = svc.collection(params.collection)
    purpose = principal.purpose or params.purpose
    if principal.purpose is not None and params.purpose not in (None, principal.purpose):
        raise ApiError(
            403,
            "purpose_bound",
            f"this key is bound to the purpose {principal.purpose!r}; it cannot identify for {params.purpose!r}",
        )
    engine = await svc.engine_for(collection)
    calibration = svc.calibration_for(engine, params.threshold)
    policy = svc.liveness_policy(params.liveness)
    inf = svc.inference
    image, detections = await inf.decode_and_detect(engine, parsed.images["image"][0], then_embed=not policy.checks)
    checks = await inf.check(svc.engines.default.pipeline, policy, image, detections)
    svc.count_liveness("identify", checks)
    searched = [d for d, c in zip(detections, checks, strict=True) if not policy.refuses(c)]
    prints = await inf.embed(engine, image, searched) if searched else []
    answers = (
        await inf.run(
            "search",
            svc.gallery.identify,
            prints,
            collection=collection,
            top_k=params.top_k,
            fmr=params.fmr,
            fpir=params.fpir,
            threshold=params.threshold,
            calibration=calibration,
            purpose=purpose,
        )
        if prints
        else []
    )
    faces: list[dict[str, object]] = []
    pending = iter(answers)
    for det, check in zip(detections, checks, strict=True):
        if check is not None and policy.refuses(check):
            faces.append(refused_match(det.box, check))
            continue
        face = next(pending).to_dict()
        if check is not None:
            face["liveness"] = check.to_dict()
        faces.append(face)
    searched_prints = iter(prints)
    searched_answers = iter(answers)
    refused = [c is not None and policy.refuses(c) for c in checks]
    await svc.observe(
        params.collection,
        source,
        face_observations(
            detections,
            [None if r else next(searched_prints) for r in refused],
            checks,
            [None if r else next(searched_answers) for r in refused],
        ),
    )
    if svc.shadow is not None:
        svc.shadow.maybe_run(
            params.collection or svc.settings.default_collection,
            image,
            answers,
            engine.model_id,
            fmr=params.fmr,
            fpir=params.fpir,
            request_id=getattr(request.state, "request_id", None),
        )
    threshold = answers[0].threshold if answers else None
    rule = {
        "rule": params.rule,
        "fmr": answers[0].fmr if answers else params.fmr,
        "fpir": answers[0].fpir if answers else params.fpir,
    }
    matched = [a.match for a in answers if a.match is not None]
    svc.metrics.photos.labels("identify", collection, "face" if detections else "no_face").inc()
    for a in answers:
        svc.metrics.decisions.labels("identify", "match" if a.match else "no_match", collection).inc()
    for _ in range(len(faces) - len(answers)):
        svc.metrics.decisions.labels("identify", "not_live", collection).inc()
    await record(
        request,
        principal,
        "identify",
        collection=collection,
        subject_ids=tuple(m.subject_id for m in matched),
        scores=tuple(m.score for m in matched),
        threshold=threshold,
        decision=f"{len(matched)}/{len(faces)} matched",
        detail={
            "faces": len(faces),
            "rule": rule["rule"],
            **({"purpose": purpose} if purpose else {}),
            **audit_liveness(checks, policy.checks),
        },
        model_id=engine.model_id,
    )
    return {
        "image": image.source,
        "collection": collection,
        "model": engine.model_id,
        "threshold": threshold,
        **rule,
        "purpose": purpose,
        "faces": faces,
    }
