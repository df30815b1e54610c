"""Reading images and parameters from a request: multipart uploads or JSON with base64 strings.

Both forms carry the same field names (``image``; ``image_a``/``image_b`` for verify) and the same
parameters, validated by one pydantic model per route. Everything a client can get wrong here ends as a
4xx problem: 415 for another content type, 413 for too much, 422 for the rest.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from faceprint.image import header_pixels
from faceprint.service.errors import ApiError

M = TypeVar("M", bound=BaseModel)
ALLOWED_PART_TYPES = ("image/", "application/octet-stream")
#: Deepest nesting of arrays/objects a JSON body may have (checked before parsing: no RecursionError).
MAX_JSON_DEPTH = 32
#: JSON integers must fit a signed 64-bit integer (SQLite's INTEGER; no 4,300-digit ``int()`` conversions).
MAX_JSON_INT = 2**63 - 1
#: Non-file fields in one multipart request.
MAX_FORM_FIELDS = 100
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets become +1 and closing ones -1 (as int8), so a running sum is the nesting depth.
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


@dataclass(frozen=True)
class Upload:
    """One image as received: ``name`` labels it in errors (the file name, or the field name)."""

    field: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Parsed:
    images: dict[str, list[Upload]]
    params: dict[str, Any]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_images(
    request: Request,
    fields: tuple[str, ...],
    *,
    max_images: int,
    multi: bool = False,
    max_request_pixels: int | None = None,
) -> Parsed:
    """Images under ``fields`` (several per field when ``multi``) and the remaining parameters.

    ``max_request_pixels`` (default: the app's ``settings.max_request_pixels``) bounds the pixels of all the
    images together, read from their headers before any is decoded (413 ``too_many_pixels``)."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        parsed = await _from_multipart(request, fields, max_images)
    elif kind == "application/json" or kind.endswith("+json"):
        parsed = await _from_json(request, fields, multi)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data (file fields {', '.join(fields)}) or application/json with base64 "
            f"strings; got {kind or 'no content type'}",
        )
    for name in fields:
        got = parsed.images.get(name, [])
        if not got:
            raise ApiError(422, "missing_image", f"the request has no image in field {name!r}", field=name)
        if len(got) > 1 and not multi:
            raise ApiError(422, "too_many_images", f"field {name!r} takes one image, got {len(got)}", field=name)
    total = sum(len(v) for v in parsed.images.values())
    if total > max_images:
        raise ApiError(413, "too_many_images", f"{total} images in one request; the limit is {max_images}")
    if max_request_pixels is None:
        max_request_pixels = getattr(getattr(request.app.state, "settings", None), "max_request_pixels", None)
    if max_request_pixels is not None:
        check_request_pixels([u for ups in parsed.images.values() for u in ups], max_request_pixels)
    return parsed


def check_request_pixels(uploads: list[Upload], limit: int) -> int:
    """The pixels all ``uploads`` declare in their headers (one that cannot be read counts 0: decoding
    rejects it); 413 ``too_many_pixels`` over ``limit``, before any image is decoded."""
    total = sum(header_pixels(u.data) or 0 for u in uploads)
    if total > limit:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the {len(uploads)} images of this request hold {total:,} pixels together; the limit per request "
            f"is {limit:,} (FACEPRINT_MAX_REQUEST_PIXELS)",
            total_pixels=total,
            limit=limit,
        )
    return total


async def _from_multipart(request: Request, fields: tuple[str, ...], max_images: int) -> Parsed:
    # Starlette answers its own limits with a bare 400; they are ours to name (413 too_many_images/fields).
    try:
        form = await request.form(max_files=max_images, max_fields=MAX_FORM_FIELDS)
    except (HTTPException, MultiPartException) as exc:
        message = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
        if message.startswith("Too many files"):
            raise ApiError(
                413, "too_many_images", f"more file parts than the limit of {max_images} images per request"
            ) from None
        if message.startswith("Too many fields"):
            raise ApiError(
                413, "too_many_fields", f"more form fields than the limit of {MAX_FORM_FIELDS} per request"
            ) from None
        raise ApiError(400, "malformed_multipart", f"the multipart body cannot be read ({message})") from None
    images: dict[str, list[Upload]] = {}
    params: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in fields:
            if not isinstance(value, UploadFile):
                raise ApiError(
                    422, "invalid_image", f"field {key!r} must be a file upload in multipart requests", field=key
                )
            declared = (value.content_type or "").lower()
            if declared and not declared.startswith(ALLOWED_PART_TYPES):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"field {key!r} was sent as {declared}; send an image (image/jpeg, image/png, …)",
                    field=key,
                )
            data = await value.read()
            images.setdefault(key, []).append(Upload(key, _safe_name(value.filename) or key, data))
        elif isinstance(value, str):
            params[key] = value
    return Parsed(images, params)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, strictly: nesting at most :data:`MAX_JSON_DEPTH` deep (checked before parsing),
    integers within ±:data:`MAX_JSON_INT`, no ``NaN``/``Infinity``. Anything else is a 422 problem."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(
            422, "malformed_json", f"the JSON body is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        )
    try:
        return json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "malformed_json", f"the request body is not valid JSON ({exc})") from None
    except RecursionError:  # unreachable after the depth check; kept so no parser path can become a 500
        raise ApiError(422, "malformed_json", "the JSON body is nested too deeply") from None


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in ``raw`` (brackets inside strings do not count), in C-speed steps."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.translate(_BRACKET_STEPS), dtype=np.int8).astype(np.int64)
    return int(np.cumsum(steps).max())


def _bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > 19 or int(digits) > MAX_JSON_INT:
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(digits):,} digits)"
        raise ApiError(422, "validation_error", f"the JSON integer {shown} is out of range (at most ±{MAX_JSON_INT:,})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ApiError(422, "malformed_json", f"{name} is not valid JSON (send a finite number)")


async def _from_json(request: Request, fields: tuple[str, ...], multi: bool) -> Parsed:
    body = parse_json(await request.body())
    if not isinstance(body, dict):
        raise ApiError(422, "malformed_json", "the JSON body must be an object")
    images: dict[str, list[Upload]] = {}
    for name in fields:
        value = body.pop(name, None)
        if multi and value is None and "images" in body:
            value = body.pop("images")
        if value is None:
            continue
        values = value if isinstance(value, list) and multi else [value]
        for i, item in enumerate(values):
            label = name if len(values) == 1 else f"{name}[{i}]"
            if not isinstance(item, str):
                raise ApiError(422, "invalid_image", f"{label} must be a base64 string", field=name)
            images.setdefault(name, []).append(Upload(name, label, _b64(item, label)))
    return Parsed(images, body)


def _b64(text: str, label: str) -> bytes:
    if text.startswith("data:"):  # data URLs, as a browser's FileReader gives them
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"{label} is not valid base64", field=label) from None


def _safe_name(name: str | None) -> str:
    """The client's file name, shortened and stripped of anything that could pollute logs or HTML."""
    if not name:
        return ""
    cleaned = "".join(ch for ch in name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] if ch.isprintable())
    return cleaned[:120]


def validate_params(model: type[M], params: dict[str, Any]) -> M:
    """Parameters from form fields or JSON; empty form fields count as absent."""
    cleaned = {k: v for k, v in params.items() if not (isinstance(v, str) and v == "")}
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = errors[0]
        raise ApiError(
            422, "validation_error", f"{'.'.join(first['loc']) or 'parameters'}: {first['msg']}", errors=errors
        ) from None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined: embedded in the OpenAPI document, a ``$ref`` to
    ``#/$defs/…`` or ``#/components/schemas/…`` would point at nothing (the models used here are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = resolve(defs[ref.removeprefix("#/$defs/")])
                return {**target, **{k: resolve(v) for k, v in node.items() if k != "$ref"}}
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def openapi_body(fields: dict[str, str], params: type[BaseModel], *, multi: bool = False) -> dict[str, Any]:
    """``openapi_extra`` documenting both request forms of an image route."""
    param_schema = inline_schema(params)
    props = dict(param_schema.get("properties", {}))
    file_item = {"type": "string", "format": "binary"}
    b64_item = {"type": "string", "format": "byte", "description": "base64 (a data: URL is accepted)"}
    multipart_props: dict[str, Any] = {}
    json_props: dict[str, Any] = {}
    for name, description in fields.items():
        if multi:
            multipart_props[name] = {"type": "array", "items": file_item, "description": description}
            json_props[name] = {
                "description": description,
                "anyOf": [b64_item, {"type": "array", "items": b64_item}],
            }
        else:
            multipart_props[name] = {**file_item, "description": description}
            json_props[name] = {**b64_item, "description": description}
    required = list(fields)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {**multipart_props, **props}, "required": required}
                },
                "application/json": {
                    "schema": {"type": "object", "properties": {**json_props, **props}, "required": required}
                },
            },
        }
    }
