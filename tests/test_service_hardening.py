"""Hardening (issue #13): no input a client can send ends as a 500, nothing a client chooses forges or
pollutes a log line or the audit log, the UI's files carry its security headers, and the documented
contract holds (413 for too many parts, resolvable OpenAPI, ``Allow`` on 405, no booleans as numbers).

Reuses the real app of test_service_api (HOG pipeline); every request here is refused before any model
runs, so the module takes seconds.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from starlette.types import Message

from faceprint.service.middleware import EscapingFormatter
from faceprint.service.paths import STATIC_DIR
from faceprint.service.uploads import MAX_JSON_DEPTH, json_depth
from tests import test_service_api
from tests.test_image import _png_header_only
from tests.test_service_api import assert_problem, h, png

service = test_service_api.service  # the same module-scoped app fixture, instantiated for this module

ACCESS = "faceprint.service.access"


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Access-log records, captured even if an earlier test stopped ``faceprint`` loggers propagating."""
    logger = logging.getLogger(ACCESS)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=ACCESS)
    yield caplog
    logger.removeHandler(caplog.handler)


def _access_lines(caplog: pytest.LogCaptureFixture, marker: str) -> list[str]:
    return list(dict.fromkeys(r.getMessage() for r in caplog.records if r.name == ACCESS and marker in r.getMessage()))


def _json(client: Any, method: str, url: str, body: bytes | str, headers: dict[str, str]) -> Any:
    raw = body.encode() if isinstance(body, str) else body
    return client.request(method, url, content=raw, headers={**headers, "Content-Type": "application/json"})


# -- item 4: client input never ends as a 500 ----------------------------------------------------------------
def test_deeply_nested_json_is_422_before_parsing(service) -> None:
    client, keys = service
    deep = "[" * 1000 + "]" * 1000
    for url, scope, body in (
        ("/v1/subjects", "enroll", deep),
        ("/v1/subjects", "enroll", '{"name": "x", "metadata": {"a": ' + deep + "}}"),
        ("/v1/detect", "recognize", '{"image": ' + deep + "}"),
        ("/v1/identify", "recognize", '{"image": "AAAA", "top_k": ' + deep + "}"),
    ):
        body_ = assert_problem(_json(client, "POST", url, body, h(keys, scope)), 422, "malformed_json")
        assert str(MAX_JSON_DEPTH) in body_["detail"]
    # Brackets inside strings are text, not nesting.
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[["}') == 1
    assert json_depth(b"[" * 40 + b"]" * 40) == 40


def test_huge_integers_are_422(service) -> None:
    client, keys = service
    huge = "9" * 5000  # over Python's 4,300-digit int() limit
    problem = assert_problem(
        _json(client, "POST", "/v1/identify", '{"image": "AAAA", "top_k": ' + huge + "}", h(keys, "recognize")),
        422,
        "validation_error",
    )
    assert "out of range" in problem["detail"]
    assert_problem(
        _json(client, "POST", "/v1/subjects", '{"name": "Big", "metadata": {"n": ' + huge + "}}", h(keys, "enroll")),
        422,
        "validation_error",
    )
    assert_problem(
        _json(
            client, "POST", "/v1/subjects", '{"name": "Big", "metadata": {"n": 9223372036854775808}}', h(keys, "enroll")
        ),
        422,
        "validation_error",
    )
    form = client.post(
        "/v1/identify",
        files={"image": ("a.png", png(32, 32), "image/png")},
        data={"top_k": huge},
        headers=h(keys, "recognize"),
    )
    assert_problem(form, 422, "validation_error")
    assert_problem(
        _json(client, "POST", "/v1/subjects", '{"name": "NaN", "metadata": {"n": NaN}}', h(keys, "enroll")),
        422,
        "malformed_json",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Old", "consent": {"given_by": "a", "purpose": "b", "given_at": "0001-01-01T00:00:00+14:00"}},
        {"name": "Late", "expires_at": "9999-12-31T23:59:59-12:00"},
        {"name": "Ancient", "expires_at": "1066-10-14T09:00:00Z"},
    ],
)
def test_datetimes_out_of_range_are_422(service, body: dict[str, Any]) -> None:
    client, keys = service
    problem = assert_problem(client.post("/v1/subjects", json=body, headers=h(keys, "enroll")), 422, "validation_error")
    assert "1900" in problem["detail"] and "9999" in problem["detail"]


def test_datetimes_are_stored_in_utc(service) -> None:
    client, keys = service
    body = {"name": "Utc", "expires_at": "2099-01-01T01:30:00+02:00"}
    created = client.post("/v1/subjects", json=body, headers=h(keys, "enroll"))
    assert created.status_code == 201, created.text
    patched = _json(
        client,
        "PATCH",
        f"/v1/subjects/{created.json()['id']}",
        '{"expires_at": "9999-12-31T23:59:59-12:00"}',
        h(keys, "enroll"),
    )
    assert_problem(patched, 422, "validation_error")
    assert client.delete(f"/v1/subjects/{created.json()['id']}", headers=h(keys, "enroll")).status_code == 200


def test_audit_before_id_out_of_range_is_422(service) -> None:
    client, keys = service
    assert_problem(client.get(f"/v1/audit?before_id={10**30}", headers=h(keys, "admin")), 422, "validation_error")
    assert client.get(f"/v1/audit?before_id={2**63 - 1}", headers=h(keys, "admin")).status_code == 200


def test_client_disconnect_mid_upload_is_not_an_internal_error(service, caplog: pytest.LogCaptureFixture) -> None:
    client, keys = service
    app = client.app
    head = (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + b"\xff" * 4096
    )
    incoming: list[Message] = [{"type": "http.request", "body": head, "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/detect",
        "raw_path": b"/v1/detect",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", h(keys, "recognize")["Authorization"].encode()),
            (b"content-type", b"multipart/form-data; boundary=xyz"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with caplog.at_level(logging.INFO, logger="faceprint"):
        client.portal.call(app, scope, receive, send)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert all(m["status"] != 500 for m in starts)
    metrics = app.state.metrics.render().decode()
    detect_lines = [line for line in metrics.splitlines() if 'route="/v1/detect"' in line and "requests_total" in line]
    assert detect_lines and not any('status="500"' in line for line in detect_lines)
    assert any('status="499"' in line for line in detect_lines)


# -- items 6 and 12: the access log ---------------------------------------------------------------------------
def test_access_log_escapes_control_characters(service, access_log: pytest.LogCaptureFixture) -> None:
    client, _ = service
    client.get("/x%0d%0a2026-11-28%2023:59:59,000%20WARNING%20FORGED")
    client.get("/nul%00byte")
    (forged,) = _access_lines(access_log, "FORGED")
    assert "\r" not in forged and "\n" not in forged and "\\r\\n2026-11-28" in forged
    (nul,) = _access_lines(access_log, "byte")
    assert "\x00" not in nul and "\\x00byte" in nul
    # The service's log format escapes every record's line, whoever logs it.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\r\nb\x00", None, None)
    assert EscapingFormatter("%(message)s").format(record) == "a\\r\\nb\\x00"


def test_access_log_shows_route_templates_not_subject_names(service, access_log: pytest.LogCaptureFixture) -> None:
    client, keys = service
    client.get("/v1/subjects/Zo%C3%AB", headers=h(keys, "read"))
    client.get("/v1/subjects/Zo%C3%AB")  # refused (no key): still no name
    lines = _access_lines(access_log, "/v1/subjects")
    assert lines and all("Zo" not in line for line in lines)
    assert any(line.startswith("GET /v1/subjects/{subject_id} 404") for line in lines)
    assert any(line.startswith("GET /v1/subjects/{subject_id} 401") for line in lines)


# -- item 7: the audit log never holds client file names --------------------------------------------------------
def test_enrolment_rejection_audit_has_no_file_name(service) -> None:
    client, keys = service
    subject = client.post("/v1/subjects", json={"name": "Audit Names"}, headers=h(keys, "enroll")).json()
    name = "Jane_Doe_passport_scan.png"
    big = _png_header_only(6401, 6250)  # 40 MP: over the fixture's 20 MP limit, refused from the header
    response = client.post(
        f"/v1/subjects/{subject['id']}/faces",
        files=[("image", (name, big, "image/png"))],
        headers=h(keys, "enroll"),
    )
    problem = assert_problem(response, 422, "no_usable_face")
    assert problem["images"][0]["image"] == name  # the client's own answer may name its file
    assert "40,006,250 pixels" in problem["images"][0]["reasons"][0]
    entries = client.get(f"/v1/audit?action=enrol&subject_id={subject['id']}", headers=h(keys, "admin")).json()["items"]
    assert entries and entries[0]["detail"]["rejected"]
    stored = json.dumps(entries[0])
    assert "Jane_Doe" not in stored and "passport" not in stored
    assert "40,006,250 pixels" in stored
    assert client.delete(f"/v1/subjects/{subject['id']}", headers=h(keys, "enroll")).status_code == 200


# -- item 8: every UI path carries the security headers --------------------------------------------------------
def test_static_files_carry_the_ui_security_headers(service) -> None:
    client, _ = service
    root = client.get("/")
    page = client.get("/static/index.html")
    assert page.status_code == 200
    for header in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert page.headers[header] == root.headers[header], header
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()):
        response = client.get(f"/static/{path}")
        assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff", path


# -- item 10: contract gaps -----------------------------------------------------------------------------------
def test_too_many_multipart_parts_is_413(service) -> None:
    client, keys = service
    many = [("image", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(12)]  # the limit is 5
    assert_problem(client.post("/v1/detect", files=many, headers=h(keys, "recognize")), 413, "too_many_images")
    fields = [(f"f{i}", (None, "1")) for i in range(150)]
    assert_problem(client.post("/v1/detect", files=fields, headers=h(keys, "recognize")), 413, "too_many_fields")


def test_every_openapi_ref_resolves(service) -> None:
    client, _ = service
    spec = client.get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and part in target, f"unresolvable $ref {ref}"
            target = target[part]
    create = spec["paths"]["/v1/subjects"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    consent = create["properties"]["consent"]["anyOf"][0]
    assert "given_by" in consent["properties"]


def test_405_carries_an_allow_header(service) -> None:
    client, keys = service
    response = client.put("/v1/detect", headers=h(keys, "recognize"))
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("param", ["fmr", "fpir", "threshold", "top_k"])
def test_booleans_are_refused_as_numbers(service, param: str) -> None:
    client, keys = service
    image = base64.b64encode(png(32, 32)).decode()
    body = json.dumps({"image": image, param: True})
    problem = assert_problem(_json(client, "POST", "/v1/identify", body, h(keys, "recognize")), 422, "validation_error")
    assert problem["errors"][0]["loc"][0] == param and "boolean" in problem["detail"]
