"""``/v1/streams``: camera streams watched by the service (registered with the ``admin`` scope), their state,
and their events live as Server-Sent Events (``GET /v1/streams/{stream_id}/events``), optionally also POSTed
to a webhook with retries. Registrations are kept in the service database and restarted when the service
starts (``faceprint.service.videos.VideoService.restore``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from faceprint.service.auth import Admin, Recognize
from faceprint.service.deps import record, services
from faceprint.service.errors import ApiError
from faceprint.service.params import StrictFloat, StrictInt, ThresholdParams
from faceprint.service.routers.subjects import _json_body
from faceprint.service.routers.videos import identifier_for, video_service
from faceprint.service.uploads import inline_schema, validate_params
from faceprint.service.videos import StreamRegistration
from faceprint.video.streams import WEBHOOK_DEFAULT_TYPES

router = APIRouter(prefix="/v1/streams", tags=["video"])

StreamId = Annotated[str, Path(min_length=1, max_length=64, description="The stream's id (from POST /v1/streams)")]
EventType = Literal["track_start", "identity", "track_end", "source_dropped", "source_reconnecting",
                    "source_reconnected", "source_error", "error"]  # fmt: skip
#: Seconds between SSE comments that keep an idle connection (and proxies) alive.
KEEPALIVE_S = 15.0
#: Events buffered per SSE client; a client this far behind loses the oldest (it can resume by Last-Event-ID).
CLIENT_QUEUE = 1000


class StreamBody(ThresholdParams):
    url: str = Field(..., min_length=6, max_length=2000, description="rtsp://, rtsps://, rtmp://, http(s)://, …")
    name: str = Field("", max_length=200, description="A label for people (never used to find the stream)")
    collection: str | None = Field(None, min_length=1, max_length=100, description="Collection (default: default)")
    every: StrictInt = Field(3, ge=1, le=100, description="Run the detector on every Nth frame (tracking on all)")
    listen: bool = Field(False, description="Wait for a camera/encoder to push RTSP to this URL instead of pulling")
    open_timeout_s: StrictFloat = Field(10.0, ge=0.5, le=300, description="Seconds to wait for the first frame")
    max_lag_s: StrictFloat | None = Field(
        None, ge=0.1, le=600, description="Skip frames while processing is more than this behind live (none: never)"
    )
    webhook_url: str | None = Field(None, min_length=8, max_length=2000, description="POST events here (http/https)")
    webhook_events: list[EventType] = Field(
        list(WEBHOOK_DEFAULT_TYPES), min_length=1, max_length=8, description="Event types POSTed to the webhook"
    )


@router.post(
    "",
    status_code=201,
    summary="Register a camera stream: it is watched until deleted; identity events go to SSE and the webhook",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(StreamBody)}}}
    },
)
async def create_stream(request: Request, principal: Admin) -> dict[str, object]:
    svc = services(request)
    videos = video_service(request)
    body = validate_params(StreamBody, await _json_body(request))
    if body.webhook_url is not None and not body.webhook_url.lower().startswith(("http://", "https://")):
        raise ApiError(422, "invalid_webhook", "webhook_url must be an http:// or https:// URL")
    name = body.collection or svc.settings.default_collection
    collection = svc.collection(name)
    await svc.inference.run(None, svc.gallery.get_collection, collection)  # 404 for a collection that is not there
    engine = await svc.engine_for(collection)
    identifier = identifier_for(svc, engine, collection, body)
    registration = StreamRegistration(
        url=body.url, collection=name, name=body.name, every=body.every, listen=body.listen,
        open_timeout_s=body.open_timeout_s, max_lag_s=body.max_lag_s, fmr=body.fmr, fpir=body.fpir,
        threshold=body.threshold, webhook_url=body.webhook_url,
        webhook_events=tuple(dict.fromkeys(body.webhook_events)), created_by=principal.key_id,
    )  # fmt: skip
    watcher = await svc.inference.run(None, videos.register, registration, engine, identifier)
    await record(
        request,
        principal,
        "stream.create",
        201,
        collection=collection,
        decision="watching",
        detail={
            "stream": watcher.id,
            "every": body.every,
            "listen": body.listen,
            "webhook": body.webhook_url is not None,
        },
        model_id=engine.model_id,
    )
    return watcher.to_dict()


@router.get("", summary="Registered streams with their state (frames, frames/s, lag behind live, tracks)")
async def list_streams(request: Request, principal: Recognize) -> dict[str, object]:
    services(request)
    return {"streams": video_service(request).describe_all()}


@router.get("/{stream_id}", summary="One stream's state")
async def get_stream(request: Request, principal: Recognize, stream_id: StreamId) -> dict[str, object]:
    services(request)
    return video_service(request).describe(stream_id)


@router.delete("/{stream_id}", status_code=204, summary="Stop watching a stream and forget it (also after restarts)")
async def delete_stream(request: Request, principal: Admin, stream_id: StreamId) -> None:
    svc = services(request)
    watcher = await svc.inference.run(None, video_service(request).remove_stream, stream_id)
    frames, events = (0, 0) if watcher is None else (watcher.stats.frames, watcher.stats.events)
    await record(
        request, principal, "stream.delete", 204, decision="stopped",
        detail={"stream": stream_id, "frames": frames, "events": events},
    )  # fmt: skip


@router.get(
    "/{stream_id}/events",
    summary="The stream's events as Server-Sent Events (text/event-stream), resumable with Last-Event-ID",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def stream_events(
    request: Request,
    principal: Recognize,
    stream_id: StreamId,
    after: Annotated[
        StrictInt | None, Query(ge=0, le=2**62, description="Replay kept events after this id (Last-Event-ID wins)")
    ] = None,
) -> StreamingResponse:
    services(request)
    watcher = video_service(request).stream(stream_id)
    last = request.headers.get("last-event-id", "")
    if last.isdigit() and len(last) < 19:
        after = int(last)
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[int, dict[str, object]]] = asyncio.Queue(maxsize=CLIENT_QUEUE)

    def put(item: tuple[int, dict[str, object]]) -> None:
        if pending.full():
            pending.get_nowait()
        pending.put_nowait(item)

    def deliver(seq: int, event: dict[str, object]) -> None:  # from the watcher's thread
        loop.call_soon_threadsafe(put, (seq, event))

    backlog, unsubscribe = watcher.subscribe(deliver, after)

    async def body() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            for seq, event in backlog:
                yield _sse(seq, event)
            while not watcher.stopped:
                try:
                    seq, event = await asyncio.wait_for(pending.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if seq < 0:  # the stream was deleted
                    break
                yield _sse(seq, event)
            yield 'event: end\ndata: {"type": "stream_deleted"}\n\n'
        finally:
            unsubscribe()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _sse(seq: int, event: dict[str, object]) -> str:
    return f"id: {seq}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
