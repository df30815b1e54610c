"""Every error the service returns is an RFC 7807 ``application/problem+json`` body.

Shape: ``{"type", "title", "status", "detail", "code", "request_id", ...extensions}``. Domain code raises
domain errors (``faceprint.errors``, ``faceprint.gallery.errors``); only this module maps them to HTTP
statuses. Anything a client can send ends as a 4xx; a 500 means a bug in faceprint and is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from faceprint.errors import FaceprintError, IncompatibleFaceprints, InvalidImage, NoFaceFound
from faceprint.gallery.errors import (
    CollectionNotFound,
    ContractMismatch,
    GalleryKeyError,
    GalleryLocked,
    StorageError,
    StorageFull,
    SubjectExists,
    SubjectNotFound,
    TemplateNotFound,
    UnknownPurpose,
)
from faceprint.liveness import LivenessUnavailable
from faceprint.privacy.errors import ReceiptNotFound

PROBLEM_JSON = "application/problem+json"
#: An error body in the OpenAPI document (``#/components/schemas/Problem``, added by ``create_app``).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "description": "urn:faceprint:problem:CODE"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable, machine-readable"},
        "request_id": {"type": "string", "description": "also the X-Request-ID header"},
        "instance": {"type": "string", "description": "the request path"},
    },
    "additionalProperties": True,
}
#: Every route's error responses in the OpenAPI document (``default``: any status the route does not list). Also
#: keeps FastAPI from documenting its own 422 ``HTTPValidationError`` JSON, which this service never sends.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "An error: RFC 7807 problem details (4xx: the request; 5xx: the service or its storage)",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}
log = logging.getLogger("faceprint.service")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    499: "Client closed request",
    500: "Internal server error",
    503: "Service unavailable",
    507: "Insufficient storage",
}


class ApiError(Exception):
    """An error with its HTTP status and a stable machine-readable ``code``."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers  # extra response headers (``Retry-After`` on 503 ``overloaded``)
        self.extensions = extensions


def problem(
    request: Request | None,
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    body: dict[str, Any] = {
        "type": f"urn:faceprint:problem:{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extensions)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="faceprint"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers or None)


def map_domain_error(exc: FaceprintError) -> ApiError:
    """Translate a library error into its HTTP meaning."""
    if isinstance(exc, LivenessUnavailable):
        # The operator's to fix (install the model): never answered as a pass, never as the client's fault.
        return ApiError(503, "liveness_unavailable", str(exc), model=exc.model_id)
    if isinstance(exc, InvalidImage):
        return ApiError(422, "invalid_image", str(exc), source=exc.source, reason=exc.reason)
    if isinstance(exc, NoFaceFound):
        return ApiError(422, "no_face", str(exc), source=exc.source)
    if isinstance(exc, SubjectNotFound | CollectionNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, TemplateNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, ReceiptNotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, UnknownPurpose):
        return ApiError(422, "unknown_purpose", str(exc), purpose=exc.purpose, known=list(exc.known))
    if isinstance(exc, SubjectExists):
        return ApiError(409, "subject_exists", str(exc))
    if isinstance(exc, ContractMismatch | IncompatibleFaceprints):
        return ApiError(409, "contract_mismatch", str(exc))
    if isinstance(exc, GalleryLocked):
        return ApiError(503, "gallery_locked", str(exc))
    if isinstance(exc, GalleryKeyError):
        # The operator's problem, not the client's: say so without details that help an attacker.
        log.error("gallery key error: %s", exc)
        return ApiError(503, "gallery_unavailable", "the gallery cannot be decrypted; see the server log")
    if isinstance(exc, StorageError):
        # The operator's problem: the detail says what happened, not where the files are (the log does).
        log.error("storage fault: %s", exc)
        if exc.where.startswith("the service database"):
            what = (
                "the audit log cannot be written, so the result is withheld (no decision is given out unrecorded); "
                "a gallery change this request made may have been stored"
            )
        else:
            what = "the gallery cannot be written; nothing was stored"
        if isinstance(exc, StorageFull):
            detail = f"the server's disk is full: {what}; retry once space is freed"
            return ApiError(507, "insufficient_storage", detail)
        return ApiError(503, "storage_unavailable", f"storage is read-only or unavailable: {what}; retry later")
    # Usage-level refusals (fmr out of range, empty name, bad cursor…) are the caller's to fix.
    return ApiError(422, "invalid_request", str(exc))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(request, exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extensions)

    @app.exception_handler(FaceprintError)
    async def _domain_error(request: Request, exc: FaceprintError) -> JSONResponse:
        err = map_domain_error(exc)
        return problem(request, err.status, err.code, err.detail, headers=err.headers, **err.extensions)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'][1:] or first['loc']) or 'request'}: {first['msg']}"
        return problem(request, 422, "validation_error", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return problem(request, exc.status_code, code, str(exc.detail), headers=exc.headers)  # 405: Allow

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went away mid-request (nginx's 499): nobody reads this answer, but metrics and the access
        # log record it as the client's doing rather than as an internal error.
        log.info("client disconnected before the request body was read")
        return problem(request, 499, "client_disconnected", "the client closed the connection mid-request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return problem(request, 500, "internal_error", "internal error; the server log has the details")
