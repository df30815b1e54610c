"""Traces (issue 17): a span per request and per stage, W3C trace context in and out, OTLP/HTTP export.

In process, the SDK's in-memory exporter sees every stage of an identify request on a real photo, joined to
the caller's ``traceparent``; the Ray Serve detector continues a trace handed to it. Out of process, a real
``faceprint serve`` exports to a tiny OTLP/HTTP receiver started here, which decodes the protobuf
``ExportTraceServiceRequest`` it is sent. Off (the default), :func:`faceprint.tracing.span` is one shared no-op.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from faceprint import tracing
from faceprint.image import load_image
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.scale.deployments import FaceDetector
from faceprint.service.app import create_app
from faceprint.service.settings import Settings
from tests.conftest import IDENTITIES
from tests.test_service_ui import free_port, stop_server, wait_until_ready

ENROL = [IDENTITIES / "person01" / n for n in ("img27.jpg", "img28.jpg")]
PROBE = IDENTITIES / "person01" / "img43.jpg"
STAGES = {"decode", "detect", "landmarks", "align", "embed", "search"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter), service_name="faceprint-test")
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _photo(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


def _assert_no_payloads(attributes: dict[str, object]) -> None:
    """Counts, sizes, names and ids only: no bytes, no arrays (image data or vectors), no long strings."""
    for key, value in attributes.items():
        assert isinstance(value, str | int | float | bool), (key, type(value))
        assert not isinstance(value, str) or len(value) <= 200, key


def test_off_by_default_a_shared_no_op() -> None:
    assert not tracing.enabled()
    first, second = tracing.span("detect", faces=1), tracing.span("embed")
    assert first is second  # nothing allocated per call
    assert tracing.inject({"a": "b"}) == {"a": "b"}  # nothing added to outgoing calls
    assert tracing.endpoint_from_env({}) is None
    assert tracing.endpoint_from_env({"FACEPRINT_OTEL_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    assert tracing.endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert tracing.endpoint_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == "http://c/t"
    with pytest.raises(ValueError, match="FACEPRINT_OTEL_ENDPOINT: expected"):
        tracing.endpoint_from_env({"FACEPRINT_OTEL_ENDPOINT": "collector:4318"})


def test_identify_request_has_a_span_for_every_stage(
    memory_spans: InMemorySpanExporter, tmp_path: Path, hog_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    settings = Settings(
        home=tmp_path, gallery=tmp_path / "gallery", service_db=tmp_path / "service.sqlite3", detector="hog"
    )
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app) as client:
        _, key = app.state.keys.create(["admin"], "tracing-test")
        auth = {"Authorization": f"Bearer {key}"}
        subject = client.post("/v1/subjects", json={"name": "Ada"}, headers=auth).json()
        enrolled = client.post(
            f"/v1/subjects/{subject['id']}/faces", files=[("image", _photo(p)) for p in ENROL], headers=auth
        )
        assert enrolled.status_code == 201, enrolled.text
        memory_spans.clear()
        answer = client.post(
            "/v1/identify", files={"image": _photo(PROBE)}, headers={**auth, "traceparent": TRACEPARENT}
        )
        assert answer.status_code == 200 and answer.json()["faces"][0]["match"] == "Ada"

    spans = memory_spans.get_finished_spans()
    ours = [s for s in spans if format(s.context.trace_id, "032x") == TRACE_ID]
    assert {s.name for s in ours} >= STAGES | {"POST /v1/identify"}, sorted(s.name for s in spans)
    (server,) = [s for s in ours if s.kind is SpanKind.SERVER]
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert server.attributes["http.route"] == "/v1/identify"
    assert server.attributes["http.response.status_code"] == 200
    by_id = {s.context.span_id: s for s in ours}
    for stage in (s for s in ours if s is not server):  # every stage span hangs under the request's span
        parent = stage
        while parent.parent is not None and parent.parent.span_id in by_id:
            parent = by_id[parent.parent.span_id]
        assert parent is server, stage.name
    detect = next(s for s in ours if s.name == "detect")
    assert detect.attributes["faces"] == 1 and detect.attributes["detector"] == "hog"
    assert next(s for s in ours if s.name == "search").attributes["matches"] == 1
    for s in spans:
        _assert_no_payloads(dict(s.attributes or {}))


def test_liveness_check_has_its_span(
    memory_spans: InMemorySpanExporter, tmp_path: Path, faceplugin_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the faceplugin pack's liveness model, identify ?liveness=flag adds a liveness span to the request."""
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    monkeypatch.setenv("FACEPRINT_MODEL_DIR", str(faceplugin_store))
    settings = Settings(
        home=tmp_path,
        gallery=tmp_path / "g",
        service_db=tmp_path / "s.sqlite3",
        detector="hog",
        auth=False,
    )
    app = create_app(settings, pipeline=Pipeline(detector="hog", model_dir=faceplugin_store))
    with TestClient(app) as client:
        memory_spans.clear()
        answer = client.post(
            "/v1/identify",
            files={"image": _photo(PROBE)},
            data={"liveness": "flag"},
            headers={"traceparent": TRACEPARENT},
        )
        assert answer.status_code == 200 and "liveness" in answer.json()["faces"][0], answer.text
    ours = [s for s in memory_spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
    assert {s.name for s in ours} >= STAGES | {"liveness"}
    liveness = next(s for s in ours if s.name == "liveness")
    assert liveness.attributes["faces"] == 1 and liveness.attributes["model"] == "faceplugin-liveness"


def test_enrolment_traces_the_gallery_write(
    memory_spans: InMemorySpanExporter, tmp_path: Path, hog_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    settings = Settings(home=tmp_path, gallery=tmp_path / "g", service_db=tmp_path / "s.sqlite3", detector="hog")
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app) as client:
        _, key = app.state.keys.create(["admin"], "tracing-test")
        auth = {"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT}
        subject = client.post("/v1/subjects", json={"name": "Ada"}, headers=auth).json()
        memory_spans.clear()
        client.post(f"/v1/subjects/{subject['id']}/faces", files={"image": _photo(ENROL[0])}, headers=auth)
    names = [s.name for s in memory_spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
    assert {"decode", "detect", "embed", "gallery.write", "POST /v1/subjects/{subject_id}/faces"} <= set(names)


def test_ray_serve_detector_continues_the_callers_trace(memory_spans: InMemorySpanExporter, cache_dir: Path) -> None:
    """The deployment class Ray Serve runs, called as its handle calls it: with the caller's trace context."""
    detector = FaceDetector.func_or_class(PipelineConfig(detector="hog"))
    image = load_image(PROBE)
    with tracing.span("caller") as caller:
        carrier = tracing.inject()
    assert carrier["traceparent"].split("-")[1] == format(caller.get_span_context().trace_id, "032x")
    memory_spans.clear()
    assert len(detector.detect(image, carrier)) == 1  # in no span here: only the carrier links the trace
    spans = {s.name: s for s in memory_spans.get_finished_spans()}
    assert spans["detect"].parent.span_id == caller.get_span_context().span_id
    assert spans["landmarks"].context.trace_id == caller.get_span_context().trace_id


# -- a real server exporting over OTLP/HTTP -----------------------------------------------------------------
class OtlpReceiver:
    """A minimal OTLP/HTTP traces endpoint: decodes each protobuf ``ExportTraceServiceRequest`` POSTed to
    ``/v1/traces`` and keeps its spans as ``(trace id hex, name, attributes)``."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, dict[str, object]]] = []
        self.services: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                if ok:
                    receiver._add(body)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    self.services.add(attr.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attrs = {a.key: _value(a.value) for a in span.attributes}
                    self.spans.append((span.trace_id.hex(), span.name, attrs))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


def test_real_server_exports_spans_to_an_otlp_http_receiver(tmp_path: Path, cache_dir: Path) -> None:
    receiver = OtlpReceiver()
    env = {
        **os.environ,
        "FACEPRINT_HOME": str(tmp_path),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_DETECTOR": "hog",
        "FACEPRINT_CACHE_DIR": str(cache_dir),
        "FACEPRINT_AUTH": "false",
        "FACEPRINT_OTEL_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # the batch exporter's flush interval (ms)
    }
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(proc, url, log_path, 120)
            answer = httpx.post(
                f"{url}/v1/identify", files={"image": _photo(PROBE)}, headers={"traceparent": TRACEPARENT}, timeout=60
            )
            assert answer.status_code == 200, answer.text
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                names = {name for trace_id, name, _ in receiver.spans if trace_id == TRACE_ID}
                if names >= {"decode", "detect", "landmarks", "align", "embed", "search", "POST /v1/identify"}:
                    break
                time.sleep(0.2)
        finally:
            stop_server(proc)
            receiver.close()
    assert names >= {"decode", "detect", "landmarks", "align", "embed", "search", "POST /v1/identify"}, (
        names,
        log_path.read_text()[-3000:],
    )
    assert receiver.services == {"faceprint"}
    for _, _, attrs in receiver.spans:
        _assert_no_payloads(attrs)
