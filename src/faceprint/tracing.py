"""OpenTelemetry traces: one span per request and per pipeline stage, off by default and free when off.

Every instrumented place calls :func:`span` (``with tracing.span("detect", faces=3): ...``). Until
:func:`configure` (or :func:`configure_from_env`, which ``faceprint serve`` calls) installs a tracer, it
returns one shared no-op context manager: a global read and a call, no allocation, no OpenTelemetry import
(the ``otel`` extra is optional; it is imported on first :func:`configure`). Once configured, spans go to an
OTLP/HTTP collector (``FACEPRINT_OTEL_ENDPOINT``, else the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` and their headers/timeout variables) or to any span processor a caller gives
(the tests' in-memory exporter).

W3C trace context (``traceparent``/``tracestate``) crosses process boundaries with :func:`inject` (outgoing
calls: a dict of headers, also used as the carrier handed to Ray Serve deployments) and :func:`extract` /
:func:`server_span` (incoming requests). :func:`current` and :func:`resume` carry a trace into a thread that
works for a request (the service's embedder batcher).

Attributes are counts, sizes, names and ids only: never image bytes, pixels or faceprint vectors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("faceprint.tracing")

ENDPOINT_VARS = ("FACEPRINT_OTEL_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INSTALL_HINT = "pip install 'faceprint[otel]'"

_NOOP: AbstractContextManager[None] = nullcontext()
# Set by configure(): OpenTelemetry is imported only then (the `otel` extra is optional, and a process that
# never traces should not pay for importing it).
_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None
_otel: Any = None  # the OpenTelemetry modules and classes used here, once imported


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the OpenTelemetry SDK and exporter are not installed."""


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: str | int | float | bool) -> AbstractContextManager[Any]:
    """A span named ``name`` (a child of the current one) with ``attributes``; a shared no-op when off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def set_attributes(**attributes: str | int | float | bool) -> None:
    """Add attributes to the current span (nothing when tracing is off or no span is current)."""
    if _tracer is not None:
        _otel.trace.get_current_span().set_attributes(attributes)


def endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL the environment asks for, or ``None`` (tracing off). A base URL (from
    ``FACEPRINT_OTEL_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) gets ``/v1/traces`` appended.
    :class:`ValueError` for a value that is not an http(s) URL."""
    env = os.environ if env is None else env
    for var in ENDPOINT_VARS:
        value = env.get(var, "").strip()
        if value:
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"{var}: expected the collector's http:// or https:// URL, got {value!r}")
            if var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" or value.rstrip("/").endswith("/v1/traces"):
                return value
            return value.rstrip("/") + "/v1/traces"
    return None


def configure(processor: Any = None, *, endpoint: str | None = None, service_name: str = "faceprint") -> None:
    """Turn tracing on: spans go to ``processor`` (an OpenTelemetry ``SpanProcessor``), else to an OTLP/HTTP
    exporter at ``endpoint`` (batched). Replaces an earlier configuration (its spans are flushed first)."""
    global _tracer, _provider, _otel
    otel = _import_otel()
    if processor is None:
        if endpoint is None:
            raise ValueError("give a span processor or an OTLP endpoint")
        processor = otel.BatchSpanProcessor(_otlp_exporter(endpoint))
    shutdown()
    _otel = otel
    provider = otel.TracerProvider(resource=otel.Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("faceprint")


def configure_from_env(service_name: str = "faceprint", env: Mapping[str, str] | None = None) -> str | None:
    """:func:`configure` with the endpoint the environment names; returns it (``None``: tracing stays off)."""
    endpoint = endpoint_from_env(env)
    if endpoint is not None:
        configure(endpoint=endpoint, service_name=service_name)
        log.info("tracing on: spans exported over OTLP/HTTP to %s", endpoint)
    return endpoint


def shutdown() -> None:
    """Flush and stop the current configuration; tracing is off afterwards."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _import_otel() -> SimpleNamespace:
    """The OpenTelemetry API and SDK pieces used here (imported on first configure: an optional extra)."""
    if _otel is not None:
        return _otel
    try:
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the `otel` extra is not installed
        raise TracingUnavailable(f"tracing needs the OpenTelemetry SDK: {INSTALL_HINT}") from None
    return SimpleNamespace(
        context=context,
        trace=trace,
        Resource=Resource,
        TracerProvider=TracerProvider,
        BatchSpanProcessor=BatchSpanProcessor,
        propagator=TraceContextTextMapPropagator(),
    )


def _otlp_exporter(endpoint: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:  # the `otel` extra is not installed
        raise TracingUnavailable(f"exporting traces needs the OTLP/HTTP exporter: {INSTALL_HINT}") from None
    return OTLPSpanExporter(endpoint=endpoint)  # headers, timeout, compression: the OTEL_* variables


# -- propagation -----------------------------------------------------------------------------------------
def inject(headers: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``traceparent`` (and ``tracestate``) for the current span: give them to any outgoing
    request (HTTP calls, Ray Serve deployment calls). Unchanged when tracing is off."""
    out = dict(headers or {})
    if _tracer is not None:
        _otel.propagator.inject(out)
    return out


def extract(headers: Mapping[str, str] | None) -> Any:
    """The trace context in ``headers`` (lower-case names), for :func:`resume`; ``None`` when off or absent."""
    if _tracer is None or not headers:
        return None
    return _otel.propagator.extract(headers)


def current() -> Any:
    """The current trace context, to hand to another thread (``None`` when tracing is off)."""
    return _otel.context.get_current() if _tracer is not None else None


@contextmanager
def resume(context: Any) -> Iterator[None]:
    """Make ``context`` (from :func:`current` or :func:`extract`) current for the block."""
    if context is None or _tracer is None:
        yield
        return
    token = _otel.context.attach(context)
    try:
        yield
    finally:
        _otel.context.detach(token)


@contextmanager
def server_span(name: str, headers: Mapping[str, str], **attributes: str | int | float | bool) -> Iterator[Any]:
    """A SERVER span for an incoming request, continuing the caller's ``traceparent`` when it sent one;
    yields the span (``None`` when tracing is off) so the caller can rename it and add the status."""
    if _tracer is None:
        yield None
        return
    parent = _otel.propagator.extract(headers)
    with _tracer.start_as_current_span(
        name, context=parent, kind=_otel.trace.SpanKind.SERVER, attributes=attributes
    ) as current_span:
        yield current_span


def mark_error(span_: Any, status_code: int) -> None:
    """Record an HTTP status on ``span_``; a 5xx marks it as an error (OpenTelemetry's HTTP conventions)."""
    if span_ is None:
        return
    span_.set_attribute("http.response.status_code", status_code)
    if status_code >= 500:
        span_.set_status(_otel.trace.Status(_otel.trace.StatusCode.ERROR))
