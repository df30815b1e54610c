"""Face clustering over HTTP: ``/v1/clusters`` groups the faces of uploaded photos into people, takes
corrections (merge, split, move, not this person) and names a cluster (enrols it as a subject).

The clustering is kept in this process's memory (:mod:`faceprint.service.clusters`): faces, faceprints and
small thumbnails, never the photos; see docs/clustering.md ("HTTP API")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faceprint.cluster import Clustering, Face, cluster, face_id, feedback
from faceprint.image import Image
from faceprint.service.auth import Enroll, Recognize
from faceprint.service.clusters import ClusterStore, Photo, ReplayPipeline, StoredClustering, thumbnail
from faceprint.service.deps import Services, record, services
from faceprint.service.engines import Engine
from faceprint.service.errors import ApiError
from faceprint.service.params import StrictInt, ThresholdParams
from faceprint.service.routers.subjects import _json_body
from faceprint.service.uploads import Upload, inline_schema, openapi_body, read_images, validate_params
from faceprint.types import Faceprint

router = APIRouter(prefix="/v1/clusters", tags=["clusters"])

ClusteringId = Annotated[
    str, Path(min_length=1, max_length=64, description="The clustering's id (from POST /v1/clusters)")
]
ClusterNumber = Annotated[StrictInt, Field(ge=1, le=1_000_000, description="A cluster number (1 = largest)")]
FaceId = Annotated[str, Field(min_length=1, max_length=200, description="A face id (`<photo sha256>@x1,y1,x2,y2`)")]


class ClusterParams(ThresholdParams):
    min_faces: StrictInt = Field(2, ge=1, le=10_000, description="Smallest cluster; smaller groups are outliers")

    @model_validator(mode="after")
    def _no_fpir(self) -> ClusterParams:
        if self.fpir is not None:
            raise ValueError("clustering takes fmr or threshold (an fpir is for identification)")
        return self


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: ClusterNumber
    b: ClusterNumber


class SplitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: ClusterNumber
    faces: list[FaceId] = Field(..., min_length=1, max_length=10_000, description="The faces that are someone else")


class FaceClusterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    face: FaceId
    cluster: ClusterNumber


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: ClusterNumber
    subject: str = Field(..., min_length=1, max_length=200, description="Subject name or id (created when missing)")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")


def _store(request: Request) -> ClusterStore:
    store = getattr(request.app.state, "clusters", None)
    if not isinstance(store, ClusterStore):
        raise ApiError(503, "not_ready", "the service is starting or stopping; retry shortly")
    return store


def _photo_job(svc: Services, engine: Engine, upload: Upload) -> tuple[Image, list[Faceprint], list[str]]:
    """Decode, detect and embed one photo and cut its faces' thumbnails (one worker-thread job)."""
    image = svc.inference.decode_sync(upload)
    detections = engine.backend.detect(image)
    if not detections:
        raise ApiError(
            422, "no_face", f"{upload.name}: no face found (send only photos with faces)", source=upload.name
        )
    prints = engine.backend.embed_sync(image, detections)
    thumbs = [thumbnail(image, fp.detection.box) for fp in prints if fp.detection is not None]
    return image, prints, thumbs


def _unique(name: str, taken: Mapping[str, object]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name} ({n})" in taken:
        n += 1
    return f"{name} ({n})"


def _answer(stored: StoredClustering) -> dict[str, object]:
    c = stored.clustering

    def face(i: int) -> dict[str, object]:
        f = c.faces[i]
        return {
            "id": f.id,
            "photo": f.path,
            "box": None if f.box is None else [round(float(v), 1) for v in f.box],
            "quality": None if f.quality is None else round(float(f.quality), 3),
            "thumbnail": stored.thumbnails.get(f.id),
        }

    return {
        "id": stored.id,
        "model": c.model_id,
        "threshold": round(c.threshold, 6),
        "rule": c.rule,
        "min_faces": c.min_faces,
        "photos": len(stored.photos),
        "faces": len(c.faces),
        "clusters": [
            {
                "id": cl.id,
                "size": cl.size,
                "cohesion": round(cl.cohesion, 4),
                "representative": c.faces[cl.representative].id,
                "faces": [face(i) for i in cl.members],
            }
            for cl in c.clusters
        ],
        "outliers": [face(i) for i in c.outliers],
        "constraints": {k: len(v) for k, v in c.constraints.to_dict().items()},
    }


@router.post(
    "",
    summary="Cluster the faces of several photos into people (kept for corrections; photos are not stored)",
    openapi_extra=openapi_body({"image": "The photos (repeat the field)"}, ClusterParams, multi=True),
)
async def create_clustering(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    store = _store(request)
    parsed = await read_images(request, ("image",), max_images=svc.settings.max_images_per_request, multi=True)
    params = validate_params(ClusterParams, parsed.params)
    engine = svc.engines.default
    calibration = svc.calibration_for(engine, params.threshold)
    photos: dict[str, Photo] = {}
    thumbs: dict[str, str] = {}
    faces: list[Face] = []
    seen: set[str] = set()
    for upload in parsed.images["image"]:
        image, prints, crops = await svc.inference.compute("cluster_photo", _photo_job, svc, engine, upload)
        sha = str(image.sha256)
        if sha in seen:  # the same photo twice: its faces once
            continue
        seen.add(sha)
        name = _unique(image.source, photos)
        photos[name] = Photo(name, sha, tuple(prints))
        for fp, crop in zip(prints, crops, strict=True):
            box = None if fp.detection is None else tuple(float(v) for v in fp.detection.box)
            fid = face_id(sha, box)
            thumbs[fid] = crop
            faces.append(Face(fid, sha, np.asarray(fp.vector, np.float32), name, box, fp.quality))  # type: ignore[arg-type]
    clustering: Clustering = await svc.inference.compute(
        "cluster",
        cluster,
        faces,
        fmr=params.fmr,
        threshold=params.threshold,
        min_faces=params.min_faces,
        model_id=engine.model_id,
        calibration=calibration,
    )
    stored = store.add(clustering, photos, thumbs)
    await record(
        request,
        principal,
        "cluster.create",
        threshold=clustering.threshold,
        decision=f"{len(clustering.clusters)} clusters, {len(clustering.outliers)} outliers",
        detail={"clustering": stored.id, "photos": len(photos), "faces": len(faces)},
        model_id=engine.model_id,
    )
    return _answer(stored)


@router.get("/{clustering_id}", summary="A clustering made by POST /v1/clusters, with its corrections applied")
async def get_clustering(request: Request, principal: Recognize, clustering_id: ClusteringId) -> dict[str, object]:
    services(request)
    return _answer(_store(request).get(clustering_id))


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


async def _correct(request: Request, principal: Recognize, clustering_id: str, action: str, body: BaseModel) -> dict:
    svc = services(request)
    store = _store(request)
    stored = store.get(clustering_id)
    c = stored.clustering
    if isinstance(body, MergeBody):
        again = await svc.inference.compute("cluster", feedback.merge, c, body.a, body.b)
    elif isinstance(body, SplitBody):
        again = await svc.inference.compute("cluster", feedback.split, c, body.cluster, body.faces)
    elif isinstance(body, FaceClusterBody) and action == "move":
        again = await svc.inference.compute("cluster", feedback.move, c, body.face, body.cluster)
    else:
        assert isinstance(body, FaceClusterBody)
        again = await svc.inference.compute("cluster", feedback.not_this_person, c, body.face, body.cluster)
    updated = store.update(clustering_id, again)
    await record(
        request,
        principal,
        f"cluster.{action}",
        decision=f"{len(again.clusters)} clusters, {len(again.outliers)} outliers",
        detail={"clustering": clustering_id},
        model_id=again.model_id,
    )
    return _answer(updated)


@router.post(
    "/{clustering_id}/merge",
    summary="Clusters a and b are one person (stored as a must-link; answers the new clustering)",
    openapi_extra=_body_schema(MergeBody),
)
async def merge(request: Request, principal: Recognize, clustering_id: ClusteringId) -> dict[str, object]:
    body = validate_params(MergeBody, await _json_body(request))
    return await _correct(request, principal, clustering_id, "merge", body)


@router.post(
    "/{clustering_id}/split",
    summary="These faces of a cluster are someone else (must-links among them, cannot-links to the rest)",
    openapi_extra=_body_schema(SplitBody),
)
async def split(request: Request, principal: Recognize, clustering_id: ClusteringId) -> dict[str, object]:
    body = validate_params(SplitBody, await _json_body(request))
    return await _correct(request, principal, clustering_id, "split", body)


@router.post(
    "/{clustering_id}/move",
    summary="This face belongs to that cluster (and not to the one it is in)",
    openapi_extra=_body_schema(FaceClusterBody),
)
async def move(request: Request, principal: Recognize, clustering_id: ClusteringId) -> dict[str, object]:
    body = validate_params(FaceClusterBody, await _json_body(request))
    return await _correct(request, principal, clustering_id, "move", body)


@router.post(
    "/{clustering_id}/not-this-person",
    summary="This face is not that cluster's person (cannot-links to each of its faces)",
    openapi_extra=_body_schema(FaceClusterBody),
)
async def not_this_person(request: Request, principal: Recognize, clustering_id: ClusteringId) -> dict[str, object]:
    body = validate_params(FaceClusterBody, await _json_body(request))
    return await _correct(request, principal, clustering_id, "not_this_person", body)


@router.post(
    "/{clustering_id}/name",
    status_code=201,
    summary="Enrol a cluster's faces as a subject (the enrolment rules and quality gate apply)",
    openapi_extra=_body_schema(NameBody),
)
async def name_cluster(request: Request, principal: Enroll, clustering_id: ClusteringId) -> dict[str, object]:
    svc = services(request)
    body = validate_params(NameBody, await _json_body(request))
    stored = _store(request).get(clustering_id)
    c = stored.clustering
    collection = svc.collection(body.collection)
    engine = await svc.engine_for(collection)
    if engine.model_id != c.model_id:
        raise ApiError(
            409,
            "contract_mismatch",
            f"collection {collection!r} uses {engine.model_id}; this clustering was made with {c.model_id}",
        )
    replay = ReplayPipeline(c.model_id, stored.photos)
    stand_ins = {label: photo.stand_in() for label, photo in stored.photos.items()}
    report = await svc.inference.compute(
        "enrol", feedback.name, c, body.cluster, body.subject, svc.gallery, replay,
        collection=collection, photos=stand_ins,
    )  # fmt: skip
    out = {"clustering": clustering_id, "cluster": body.cluster, "collection": collection, **report.to_dict()}
    accepted = len(report.accepted)
    await record(
        request,
        principal,
        "cluster.name",
        201 if accepted else 422,
        collection=collection,
        subject_ids=() if report.subject is None else (report.subject.id,),
        decision=f"{accepted} enrolled, {len(report.rejected)} rejected",
        detail={"clustering": clustering_id, "cluster": body.cluster, "faces": c.cluster(body.cluster).size},
        model_id=c.model_id,
    )
    if not accepted:
        raise ApiError(422, "no_usable_face", "no photo of the cluster could be enrolled; see images[].reasons",
                       images=out["images"])  # fmt: skip
    return out
