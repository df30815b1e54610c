"""How ``faceprint serve`` runs uvicorn: connection limits, and start-up errors as one line.

Connections cost a file descriptor each, and uvicorn closes none that have not completed a request: a
client that connects and sends nothing, or half a request head, holds its descriptor for ever, and about a
thousand of them exhaust a 1,024 open-files limit (``/healthz`` then fails too). :class:`ConnectionGuard`
adds what uvicorn lacks:

- a **header timeout**: a connection must deliver a complete request head within
  ``FACEPRINT_HEADER_TIMEOUT_S`` of connecting (or of starting its next request), else it is closed;
- a **connection cap** (``FACEPRINT_MAX_CONNECTIONS``, by default the open-files limit minus a reserve for
  the databases and models): beyond it a new connection is answered 503 at once and closed, so descriptors
  are left for the gallery and the requests already admitted;

and each is logged as a warning once per burst, with a count, never once per connection. Idle keep-alive
connections are closed by uvicorn after ``FACEPRINT_KEEPALIVE_TIMEOUT_S``.

:class:`StartupErrors` keeps a :class:`~faceprint.errors.FaceprintError` raised while the app starts (a
wrong gallery key, say) out of uvicorn's traceback logging, so the CLI reports it like every other command.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's faster parser, an optional extra of uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - depends on the environment
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from faceprint.errors import FaceprintError
from faceprint.service.settings import Settings

log = logging.getLogger("faceprint.service.server")

BURST_WINDOW_S = 10.0


class BurstWarning:
    """A warning when a burst of like events starts, then one line with their count per window while it lasts."""

    def __init__(self, first: str, summary: str, window_s: float = BURST_WINDOW_S) -> None:
        self.first = first  # %-format with the event's args
        self.summary = summary  # %-format with (count, window seconds)
        self.window_s = window_s
        self.count = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, *args: object) -> None:
        if self._timer is None:
            log.warning(self.first, *args)
            self._timer = loop.call_later(self.window_s, self._window_ended, loop)
        else:
            self.count += 1

    def _window_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.count:
            log.warning(self.summary, self.count, self.window_s)
            self.count = 0
            self._timer = loop.call_later(self.window_s, self._window_ended, loop)
        else:
            self._timer = None


def _refusal(max_connections: int) -> bytes:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Service unavailable",
            "status": 503,
            "code": "too_many_connections",
            "detail": f"the server holds its maximum of {max_connections} connections; retry shortly",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnectionGuard:
    """The header timeout and the connection cap, mixed into uvicorn's HTTP protocols (see the module
    docstring). Configured per server by :func:`protocol_class`, which sets the class variables."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1000
    refused: ClassVar[BurstWarning]
    timed_out: ClassVar[BurstWarning]
    # provided by uvicorn's protocol classes
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.max_connections  # before this one is counted
        super().connection_made(transport)  # type: ignore[misc]
        if full:
            self.refused(self.loop, self.max_connections)
            transport.write(_refusal(self.max_connections))
            transport.close()
            return
        self._head_started()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_complete()
        super().connection_lost(exc)  # type: ignore[misc]

    def _head_started(self) -> None:
        """A request head is due: arm the timer, unless one is already running (the first request's runs
        from the connection)."""
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.timed_out(self.loop, self.header_timeout_s)
            self.transport.close()


class GuardedH11Protocol(ConnectionGuard, H11Protocol):
    """uvicorn's h11 protocol with the guard (used when httptools is not installed)."""

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._head_complete()
        elif self.conn.trailing_data[0]:  # bytes of a next request arrived, its head is not complete
            self._head_started()


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(ConnectionGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol (its default when installed) with the guard."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_started()  # the next request on a kept-alive connection gets its own deadline

        def on_headers_complete(self) -> None:
            self._head_complete()
            super().on_headers_complete()


def protocol_class(header_timeout_s: float, max_connections: int) -> type[ConnectionGuard]:
    """uvicorn's ``http=``: its httptools protocol (else h11) guarded with these limits and its own warnings."""
    base: type[ConnectionGuard] = GuardedHttpToolsProtocol if HttpToolsProtocol is not None else GuardedH11Protocol
    return type(
        base.__name__,
        (base,),
        {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
            "refused": BurstWarning(
                "connection limit reached: %d connections open (FACEPRINT_MAX_CONNECTIONS); new connections are "
                "answered 503 and closed",
                "connection limit: %d more connections refused in the last %.0f s",
            ),
            "timed_out": BurstWarning(
                "closed a connection that sent no complete request head within %.3g s (FACEPRINT_HEADER_TIMEOUT_S)",
                "header timeout: %d more connections closed in the last %.0f s",
            ),
        },
    )


class StartupErrors:
    """ASGI wrapper: a :class:`FaceprintError` raised by the app's start-up is kept in :attr:`error` and
    reported to uvicorn as a failure without its traceback (Starlette sends the formatted traceback, which
    uvicorn logs). Any other exception is a bug and keeps its traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: FaceprintError | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Any] = []

        async def hold_startup_failure(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent once the exception shows what failed
                return
            await send(message)

        try:
            await self.app(scope, receive, hold_startup_failure)
        except FaceprintError as exc:
            if not held:
                raise
            self.error = exc
            await send({"type": "lifespan.startup.failed", "message": ""})
        except BaseException:
            for message in held:
                await send(message)
            raise
        else:
            for message in held:
                await send(message)


def run(app: Any, settings: Settings, *, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` until stopped; a :class:`FaceprintError` at start-up is raised here (the CLI prints it)."""
    guarded = StartupErrors(app)
    config = uvicorn.Config(
        guarded,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        log_level=log_level.lower(),
        lifespan="on",
        http=protocol_class(settings.header_timeout_s, settings.connection_limit),
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]  # uvicorn takes any number
        # Open Server-Sent Event connections (/v1/streams/{id}/events) never end by themselves: shutdown waits
        # this long for them, then closes them.
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:
        if guarded.error is not None:
            raise guarded.error from None
        raise
    if guarded.error is not None:
        raise guarded.error
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)  # already logged by uvicorn
