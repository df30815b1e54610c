"""Subjects and their enrolled faces: ``/v1/subjects`` and ``/v1/subjects/{subject_id}/faces``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from faceprint.errors import InvalidImage
from faceprint.gallery import UNSET, Consent, EnrolReport, Gallery, ImageOutcome, Subject, enrol_images
from faceprint.gallery.enrol import NO_FACE
from faceprint.gallery.model import Erasure
from faceprint.image import Image
from faceprint.liveness import LivenessPolicy
from faceprint.privacy import access
from faceprint.privacy.receipts import ReceiptFacts
from faceprint.service.auth import Admin, Enroll, Principal, Read
from faceprint.service.backends import BatchedPipeline
from faceprint.service.deps import audit_liveness, record, services
from faceprint.service.errors import ApiError
from faceprint.service.inference import Inference
from faceprint.service.params import SQL_INT_MAX, LivenessMode, SaneDatetime, StrictFloat, StrictInt
from faceprint.service.uploads import Upload, inline_schema, openapi_body, parse_json, read_images, validate_params

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

# Strict: a metadata value keeps the JSON type it was sent with (``true`` stays a boolean, ``1`` an int).
MetadataValue = str | StrictInt | StrictFloat | bool | None
CollectionParam = Annotated[
    str | None, Query(min_length=1, max_length=100, description="Collection (default: default)")
]


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    given_by: str = Field(..., min_length=1, max_length=200, description="Who consented")
    purposes: list[str] | None = Field(
        None, min_length=1, max_length=20, description="The purposes consented to (ones the collection knows)"
    )
    purpose: str | None = Field(None, min_length=1, max_length=64, description="One purpose (older clients)")
    given_at: SaneDatetime | None = Field(None, description="When (default: now; naive times are UTC)")

    def to_consent(self) -> Consent:
        purposes = self.purposes if self.purposes is not None else [self.purpose] if self.purpose else []
        if not purposes:
            raise ApiError(422, "validation_error", "consent: give the purposes consented to")
        return Consent(self.given_by, self.given_at or datetime.now(UTC), tuple(dict.fromkeys(purposes)))


class SubjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200)
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)
    consent: ConsentIn | None = None
    expires_at: SaneDatetime | None = Field(None, description="Retention: purged after this time")
    collection: str | None = Field(None, min_length=1, max_length=100)


class SubjectUpdate(BaseModel):
    """Fields left out stay as they are; ``null`` clears consent or expiry."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    metadata: dict[str, MetadataValue] | None = Field(None, max_length=64)
    consent: ConsentIn | None = None
    expires_at: SaneDatetime | None = None


class EnrolParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    liveness: LivenessMode = None


async def _json_body(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").split(";")[0].strip().lower().endswith("json"):
        raise ApiError(415, "unsupported_media_type", "send application/json")
    body = parse_json(await request.body())
    if not isinstance(body, dict):  # an array or a scalar: was a 500 (AttributeError) in validate_params
        raise ApiError(422, "malformed_json", "the JSON body must be an object")
    return body


def _subject_out(subject: Subject) -> dict[str, object]:
    return subject.to_dict()


@router.post(
    "",
    status_code=201,
    summary="Create a subject (then enrol faces with POST /v1/subjects/{id}/faces)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(SubjectCreate)}},
        }
    },
)
async def create_subject(request: Request, principal: Enroll) -> dict[str, object]:
    svc = services(request)
    body = validate_params(SubjectCreate, await _json_body(request))
    collection = svc.collection(body.collection)
    engine = await svc.engine_for(collection)  # a new collection gets the service's model for new collections
    await svc.inference.run(None, svc.gallery.ensure_collection, collection, engine.model_id, engine.dim)
    subject = await svc.inference.run(
        None,
        svc.gallery.add_subject,
        body.name,
        collection=collection,
        metadata=body.metadata,
        consent=None if body.consent is None else body.consent.to_consent(),
        expires_at=body.expires_at,
    )
    await record(request, principal, "subject.create", 201, collection=collection, subject_ids=(subject.id,))
    return _subject_out(subject)


@router.get("", summary="List subjects (paged; filter by name substring or metadata key=value)")
async def list_subjects(
    request: Request,
    principal: Read,
    collection: CollectionParam = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page")] = None,
    name: Annotated[str | None, Query(max_length=200, description="Case-insensitive substring of the name")] = None,
    metadata: Annotated[list[str] | None, Query(description="key=value; repeat to require several")] = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    wanted: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ApiError(422, "validation_error", f"metadata filter {item!r} must read key=value")
        wanted[key] = value

    def matches(subject: Subject) -> bool:
        if name and name.lower() not in subject.name.lower():
            return False
        return all(k in subject.metadata and _as_text(subject.metadata[k]) == v for k, v in wanted.items())

    # Filters scan the gallery's pages in name order; a filtered page may hold fewer than `limit` items
    # (never more), and `next_cursor` continues the scan.
    page = await svc.inference.run(None, svc.gallery.list_subjects, collection=coll, limit=limit, cursor=cursor)
    items = [s for s in page.items if matches(s)]
    while not items and page.next_cursor and (name or wanted):
        page = await svc.inference.run(
            None, svc.gallery.list_subjects, collection=coll, limit=limit, cursor=page.next_cursor
        )
        items = [s for s in page.items if matches(s)]
    return {"items": [_subject_out(s) for s in items], "next_cursor": page.next_cursor, "total": page.total}


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@router.get("/{subject_id}", summary="A subject and its templates")
async def get_subject(
    subject_id: str,
    request: Request,
    principal: Read,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    subject = await svc.inference.run(None, svc.gallery.get_subject, subject_id, collection=coll)
    templates = await svc.inference.run(None, svc.gallery.list_templates, subject.id, collection=coll)
    return {**_subject_out(subject), "faces": [t.to_dict() for t in templates]}


@router.patch(
    "/{subject_id}",
    summary="Change name, metadata, consent or expiry",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(SubjectUpdate)}},
        }
    },
)
async def update_subject(
    subject_id: str,
    request: Request,
    principal: Enroll,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    body = validate_params(SubjectUpdate, await _json_body(request))
    given = body.model_fields_set
    if "name" in given and body.name is None:
        raise ApiError(422, "validation_error", "name: cannot be null")
    if "metadata" in given and body.metadata is None:
        raise ApiError(422, "validation_error", "metadata: cannot be null (send {} to clear)")
    changes: dict[str, Any] = {
        "name": body.name if "name" in given else UNSET,
        "metadata": body.metadata if "metadata" in given else UNSET,
        "consent": (None if body.consent is None else body.consent.to_consent()) if "consent" in given else UNSET,
        "expires_at": body.expires_at if "expires_at" in given else UNSET,
    }
    subject = await svc.inference.run(None, svc.gallery.update_subject, subject_id, collection=coll, **changes)
    await record(
        request,
        principal,
        "subject.update",
        collection=coll,
        subject_ids=(subject.id,),
        detail={"fields": sorted(given)},
    )
    return _subject_out(subject)


@router.delete("/{subject_id}", summary="Delete a subject, its faces and consent record; returns a signed receipt")
async def delete_subject(
    subject_id: str,
    request: Request,
    principal: Enroll,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    subject = await svc.inference.run(None, svc.gallery.get_subject, subject_id, collection=coll)
    erasure = await svc.inference.run(None, svc.gallery.delete_subject, subject.id, collection=coll)
    signed = await _receipt(request, principal, erasure, "subject")
    await record(
        request, principal, "subject.delete", 200, collection=coll, subject_ids=(subject.id,),
        detail={"receipt": signed["receipt"]["id"]},
    )  # fmt: skip
    return signed


async def _receipt(request: Request, principal: Principal, erasure: Erasure, kind: str) -> dict[str, Any]:
    """Sign and store the receipt of an erasure this request made."""
    svc = services(request)
    facts = ReceiptFacts(
        kind,
        actor=principal.key_id or "auth-off",
        request_id=getattr(request.state, "request_id", None),
        template_key_id=svc.gallery.template_key_id,
    )
    return await svc.inference.run(None, svc.erasures.issue, erasure, facts)


@router.delete("/{subject_id}/consent", summary="Withdraw the subject's consent: matched for no purpose from now on")
async def withdraw_consent(
    subject_id: str,
    request: Request,
    principal: Enroll,
    collection: CollectionParam = None,
    delete_faces: Annotated[
        bool | None, Query(description="Also delete the faces (default: FACEPRINT_WITHDRAWAL_DELETES_TEMPLATES)")
    ] = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    delete = svc.settings.withdrawal_deletes_templates if delete_faces is None else delete_faces
    subject, erased = await svc.inference.run(
        None, svc.gallery.withdraw_consent, subject_id, collection=coll, delete_templates=delete
    )
    receipts = [await _receipt(request, principal, e, "consent-withdrawal") for e in erased]
    await record(
        request, principal, "consent.withdraw", 200, collection=coll, subject_ids=(subject.id,),
        detail={"faces_deleted": len(erased), "receipts": [r["receipt"]["id"] for r in receipts]},
    )  # fmt: skip
    return {**_subject_out(subject), "receipts": receipts}


@router.get("/{subject_id}/personal-data", summary="Everything stored about the subject (never vectors), as JSON")
async def personal_data(
    subject_id: str,
    request: Request,
    principal: Admin,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    subject = await svc.inference.run(None, svc.gallery.get_subject, subject_id, collection=coll)
    entries = await svc.inference.run(None, svc.audit.query, limit=10_000, subject_id=subject.id)
    receipts = await svc.inference.run(None, svc.erasures.for_subject, subject.id)
    out = await svc.inference.run(
        None,
        access.personal_data,
        svc.gallery,
        subject.id,
        collection=coll,
        audit=[e.to_dict() for e in entries],
        erasures=receipts,
    )
    await record(request, principal, "subject.access", collection=coll, subject_ids=(subject.id,))
    return out


@router.post(
    "/{subject_id}/faces",
    status_code=201,
    summary="Enrol photos of the subject (quality-gated; each photo accepted or rejected with reasons)",
    openapi_extra=openapi_body({"image": "One or more photos of the subject"}, EnrolParams, multi=True),
)
async def enrol_faces(
    subject_id: str,
    request: Request,
    response: Response,
    principal: Enroll,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    subject = await svc.inference.run(None, svc.gallery.get_subject, subject_id, collection=coll)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request, multi=True)
    params = validate_params(EnrolParams, parsed.params)
    policy = svc.liveness_policy(params.liveness)
    uploads = parsed.images["image"]
    inf = svc.inference
    engine = await svc.engine_for(coll)
    pipeline = BatchedPipeline(engine.pipeline, engine.backend, liveness=svc.engines.default.pipeline)
    outcomes = await inf.compute("enrol", _enrol, inf, svc.gallery, pipeline, subject.id, uploads, coll, policy)
    svc.count_liveness("enrol", [o.liveness for o in outcomes])
    for o in outcomes:
        svc.metrics.enrolment_photos.labels(coll, "accepted" if o.accepted else "rejected").inc()
        if o.accepted or o.faces or NO_FACE in o.reasons:  # a decoded photo (not an unreadable one)
            svc.metrics.photos.labels("enrol", coll, "face" if o.faces else "no_face").inc()
    report = EnrolReport(subject, tuple(outcomes))
    out = report.to_dict()
    accepted = [o.template_id for o in report.accepted]
    await record(
        request,
        principal,
        "enrol",
        201 if accepted else 422,
        collection=coll,
        subject_ids=(subject.id,),
        decision=f"{len(accepted)}/{len(uploads)} accepted",
        detail={
            "template_ids": accepted,
            "rejected": [_audit_reasons(o, u) for o, u in zip(report.outcomes, uploads, strict=True) if not o.accepted],
            **audit_liveness([o.liveness for o in report.outcomes], policy.checks),
        },
        model_id=engine.model_id,
    )
    if not accepted:
        raise ApiError(422, "no_usable_face", "no photo could be enrolled; see images[].reasons", images=out["images"])
    return out


def _audit_reasons(outcome: ImageOutcome, upload: Upload) -> list[str]:
    """A rejected photo's reasons for the append-only audit log, which never holds client file names (the
    HTTP answer names the photo; a JSON upload's label is only its field name, which may stay)."""
    name = upload.name
    if not name or name == upload.field or name.startswith(f"{upload.field}["):
        return list(outcome.reasons)
    return [r.removeprefix(f"{name}: ").replace(name, "<file>") for r in outcome.reasons]


def _enrol(
    inf: Inference,
    gallery: Gallery,
    pipeline: BatchedPipeline,
    subject_id: str,
    uploads: list[Upload],
    collection: str,
    liveness: LivenessPolicy | None = None,
) -> list[ImageOutcome]:
    """Decode each upload (an undecodable one is a rejected photo, not a failed request), enrol the rest
    with the gallery's own enrolment, and give the outcomes back in upload order, named as uploaded."""
    decoded: dict[int, Image] = {}
    outcomes: dict[int, ImageOutcome] = {}
    for i, upload in enumerate(uploads):
        try:
            decoded[i] = inf.decode_sync(upload)
        except (InvalidImage, ApiError) as exc:
            # The reason without the upload's name: the outcome names the image, and the audit keeps reasons.
            reason = exc.reason if isinstance(exc, InvalidImage) else str(exc.extensions.get("reason", exc.detail))
            outcomes[i] = ImageOutcome(upload.name, False, (reason,))
    if decoded:
        report = enrol_images(
            gallery,
            pipeline,
            subject_id,
            list(decoded.values()),
            collection=collection,
            create=False,
            liveness=liveness,
        )
        for i, outcome in zip(decoded, report.outcomes, strict=True):
            outcomes[i] = replace(outcome, source=uploads[i].name)
    return [outcomes[i] for i in range(len(uploads))]


@router.delete("/{subject_id}/faces/{template_id}", summary="Delete one enrolled face; returns a signed receipt")
async def delete_face(
    subject_id: str,
    template_id: Annotated[int, Path(ge=1, le=SQL_INT_MAX)],
    request: Request,
    principal: Enroll,
    collection: CollectionParam = None,
) -> dict[str, object]:
    svc = services(request)
    coll = svc.collection(collection)
    subject = await svc.inference.run(None, svc.gallery.get_subject, subject_id, collection=coll)
    templates = await svc.inference.run(None, svc.gallery.list_templates, subject.id, collection=coll)
    if template_id not in {t.id for t in templates}:
        raise ApiError(404, "not_found", f"subject {subject.id} has no face {template_id}")
    erasure = await svc.inference.run(None, svc.gallery.delete_template, template_id)
    signed = await _receipt(request, principal, erasure, "face")
    await record(
        request,
        principal,
        "template.delete",
        200,
        collection=coll,
        subject_ids=(subject.id,),
        detail={"template_id": template_id, "receipt": signed["receipt"]["id"]},
    )
    return signed
