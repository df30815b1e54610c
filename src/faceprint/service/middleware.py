"""One pure-ASGI middleware for what every request needs: a request id, the upload limit, metrics, a trace
span (continuing the caller's W3C ``traceparent``; see :mod:`faceprint.tracing`), an access-log line, a
problem+json 500 (with the request id) if a bug escapes a route, and the scope of the
request's admission to the CPU workers (released when the request ends, however it ends)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faceprint.service.admission import early_refusal, request_scope
from faceprint.service.errors import _TITLES, PROBLEM_JSON, ApiError
from faceprint.service.metrics import Metrics
from faceprint.tracing import mark_error, server_span

log = logging.getLogger("faceprint.service")
access_log = logging.getLogger("faceprint.service.access")

#: The current request's id, for log records (see :class:`RequestIdFilter`).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("faceprint_request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def escape_control(text: str) -> str:
    """``text`` with every non-printable character (CR, LF, NUL, other controls) written as its Python
    escape, so a client-chosen string can never start a forged line in a log."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in each record's line (not in an exception's traceback that follows it)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so a log format can show it (installed by ``faceprint serve``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body: int,
        trust_request_id: bool = True,
        body_limits: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.trust_request_id = trust_request_id
        # Paths with their own body limit and the variable that sets it (video uploads).
        self.body_limits = body_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if self.trust_request_id and _SAFE_ID.match(incoming) else uuid.uuid4().hex
        method = scope.get("method", "")
        # Named by the route template once routed (never the raw path: it can hold a subject's name).
        with server_span(method, headers, **{"http.request.method": method, "faceprint.request_id": request_id}) as sp:
            await self._serve(scope, receive, send, headers, request_id, sp)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], request_id: str, sp: Any
    ) -> None:
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = {"code": 500, "started": False}
        refused = early_refusal(scope)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        max_body, limit_var = self.body_limits.get(path, (self.max_body, "FACEPRINT_MAX_UPLOAD_BYTES"))

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise ApiError(413, "payload_too_large", self._too_large(max_body, limit_var))
            return message

        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body:
                too_large = self._too_large(max_body, limit_var)
                await self._problem(send_wrapper, 413, "payload_too_large", too_large, request_id, scope)
            elif refused is not None:  # the CPU queue is full: 503 at once, the body drained unparsed
                while (await limited_receive()).get("more_body"):
                    pass
                exc = refused[1]
                await self._problem(
                    send_wrapper, exc.status, exc.code, exc.detail, request_id, scope, exc.headers, exc.extensions
                )
            else:
                with request_scope():
                    await self.app(scope, limited_receive, send_wrapper)
        except ApiError as exc:  # raised by limited_receive outside a route's handlers
            if not status["started"]:
                await self._problem(send_wrapper, exc.status, exc.code, exc.detail, request_id, scope)
        except ClientDisconnect:  # the client's doing, not a bug: no 500, no traceback
            log.info("client disconnected mid-request")
            if not status["started"]:
                status["code"] = 499
        except Exception:
            log.exception("internal error")
            if not status["started"]:
                await self._problem(
                    send_wrapper,
                    500,
                    "internal_error",
                    "internal error; the server log has the details",
                    request_id,
                    scope,
                )
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = (
                getattr(route, "path", None)
                or (refused[0] if refused is not None else None)
                or ("/static" if scope["path"].startswith("/static") else "unmatched")
            )
            method = scope.get("method", "")
            if sp is not None:
                sp.update_name(f"{method} {template}")
                sp.set_attribute("http.route", template)
                mark_error(sp, status["code"])
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            # A matched route is logged by its template: the raw path can hold a subject's name (GDPR).
            shown = template if route is not None and not isinstance(route, Mount) else scope["path"]
            access_log.info(
                "%s %s %d %.1fms", escape_control(method), escape_control(shown), status["code"], elapsed * 1000
            )
            request_id_var.reset(token)

    @staticmethod
    def _too_large(limit: int, variable: str) -> str:
        return f"the request body is over the limit of {limit:,} bytes ({variable})"

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        code: str,
        detail: str,
        request_id: str,
        scope: Scope,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        """A problem answer sent from here (outside the app's handlers). Closes the connection unless the
        request body was read (``headers`` given: the 503 ``overloaded`` path drains it first)."""
        body: dict[str, Any] = {
            "type": f"urn:faceprint:problem:{code}",
            "title": _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "code": code,
            "request_id": request_id,
            "instance": scope.get("path"),
            **(extensions or {}),
        }
        payload = json.dumps(body).encode()
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(payload)).encode()),
                    *(extra or [(b"connection", b"close")]),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
