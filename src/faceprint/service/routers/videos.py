"""``/v1/videos``: upload a clip, get a job id back at once, poll the job for its progress, events and per-track
summary (the events and summary of ``faceprint watch``; see docs/video.md). The clip is written to a private
temporary file while its job runs and deleted when the job ends; only events and the summary are kept."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from faceprint.service.auth import Recognize
from faceprint.service.deps import Services, record, services
from faceprint.service.errors import ApiError
from faceprint.service.params import StrictInt, ThresholdParams
from faceprint.service.uploads import inline_schema, media_type, validate_params
from faceprint.service.videos import VideoService
from faceprint.video.decisions import TrackIdentifier

router = APIRouter(prefix="/v1/videos", tags=["video"])

#: Declared part types accepted for the ``video`` field (an empty type is accepted too).
VIDEO_PART_TYPES = ("video/", "application/octet-stream", "image/gif")
JobId = Annotated[str, PathParam(min_length=1, max_length=64, description="The job's id (from POST /v1/videos)")]


class VideoParams(ThresholdParams):
    every: StrictInt = Field(3, ge=1, le=100, description="Run the detector on every Nth frame (tracking on all)")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")


def video_service(request: Request) -> VideoService:
    found = getattr(request.app.state, "videos", None)
    if not isinstance(found, VideoService):
        raise ApiError(503, "not_ready", "the service is starting or stopping; retry shortly")
    return found


def identifier_for(svc: Services, engine: Any, collection: str, params: ThresholdParams) -> TrackIdentifier:
    """The per-track decision rule of a job or stream: the request's rule on the collection's model."""
    calibration = svc.calibration_for(engine, params.threshold)
    return TrackIdentifier(
        svc.gallery, engine.model_id, collection=collection, fmr=params.fmr, fpir=params.fpir,
        threshold=params.threshold, calibration=calibration,
    )  # fmt: skip


def _save(upload: UploadFile) -> Path:
    """The upload in a private temporary file (0600), for FFmpeg to read."""
    suffix = Path(upload.filename or "").suffix[:10]
    fd, name = tempfile.mkstemp(prefix="faceprint-video-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, out, 1024 * 1024)
    return Path(name)


async def _read_upload(request: Request) -> tuple[UploadFile, dict[str, str]]:
    kind = media_type(request)
    if kind != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the clip in file field 'video'; got {kind or 'no content type'}",
        )
    try:
        form = await request.form(max_files=1, max_fields=20)
    except (HTTPException, MultiPartException) as exc:
        message = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
        if message.startswith("Too many files"):
            raise ApiError(413, "too_many_videos", "one video per request (file field 'video')") from None
        raise ApiError(400, "malformed_multipart", f"the multipart body cannot be read ({message})") from None
    video: UploadFile | None = None
    params: dict[str, str] = {}
    for key, value in form.multi_items():
        if key == "video":
            if not isinstance(value, UploadFile):
                raise ApiError(422, "invalid_video", "field 'video' must be a file upload", field=key)
            video = value
        elif isinstance(value, str):
            params[key] = value
    if video is None:
        raise ApiError(422, "missing_video", "the request has no file in field 'video'", field="video")
    declared = (video.content_type or "").lower()
    if declared and not declared.startswith(VIDEO_PART_TYPES):
        raise ApiError(
            415, "unsupported_media_type", f"field 'video' was sent as {declared}; send a video (video/mp4, …)"
        )
    return video, params


@router.post(
    "",
    status_code=202,
    summary="Upload a clip: an asynchronous job tracks and identifies its faces (poll GET /v1/videos/{job_id})",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "video": {"type": "string", "format": "binary", "description": "The clip"},
                            **inline_schema(VideoParams).get("properties", {}),
                        },
                        "required": ["video"],
                    }
                }
            },
        }
    },
)
async def create_job(request: Request, principal: Recognize) -> dict[str, object]:
    svc = services(request)
    videos = video_service(request)
    upload, raw = await _read_upload(request)
    params = validate_params(VideoParams, raw)
    collection = svc.collection(params.collection)
    await svc.inference.run(None, svc.gallery.get_collection, collection)  # 404 for a collection that is not there
    engine = await svc.engine_for(collection)
    identifier = identifier_for(svc, engine, collection, params)
    name = Path(upload.filename or "video").name[:200] or "video"
    path = await to_thread.run_sync(_save, upload)
    meta: dict[str, object] = {
        "collection": collection,
        "model": engine.model_id,
        "rule": params.rule,
        "key_id": principal.key_id,
    }
    job = await svc.inference.run(None, videos.submit, path, name, engine, identifier, every=params.every, meta=meta)
    await record(
        request,
        principal,
        "video.create",
        202,
        collection=collection,
        decision="queued",
        detail={"job": job.id, "frames": job.frame_count, "fps": round(job.fps, 3), "every": job.every},
        model_id=engine.model_id,
    )
    return job.to_dict(events=False)


@router.get("/{job_id}", summary="A video job: status, progress, and when done the summary and events")
async def get_job(request: Request, principal: Recognize, job_id: JobId) -> dict[str, object]:
    services(request)
    return video_service(request).job(job_id).to_dict()
