"""Fuzzing (issue #13, "no 5xx from any input"): schemathesis against the app's own OpenAPI document, and
Hypothesis corpora for the image decoder, the JSON body parser and the multipart path.

Every run is derandomized (same examples on every machine, no example database) and bounded: the example
counts below are multiplied by ``FACEPRINT_FUZZ_EXAMPLES`` (default 1) for a longer local run, e.g.
``FACEPRINT_FUZZ_EXAMPLES=20 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import base64
import copy
import inspect
import io
import json
import os
import secrets
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from faceprint.errors import InvalidImage
from faceprint.image import decode_bytes, load_image
from faceprint.service.app import create_app
from faceprint.service.errors import ApiError
from faceprint.service.settings import Settings
from faceprint.service.uploads import MAX_JSON_DEPTH, MAX_JSON_INT, parse_json
from tests.conftest import IDENTITIES

SCALE = max(1, int(os.environ.get("FACEPRINT_FUZZ_EXAMPLES", "1") or 1))
PROBLEM = "application/problem+json"
#: Decoding one fuzzed image may take at most this long (no huge allocation or endless loop behind it).
DECODE_SECONDS = 2.0
MAX_PIXELS = 20_000_000


def fuzz(examples: int) -> settings:
    """Bounded, reproducible Hypothesis settings: ``examples`` × FACEPRINT_FUZZ_EXAMPLES, no deadline."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


# -- the app ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory, hog_pipeline) -> Iterator[tuple[TestClient, dict]]:
    home = tmp_path_factory.mktemp("fuzz-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    app = create_app(
        Settings(
            home=home,
            gallery=home / "gallery",
            service_db=home / "service.sqlite3",
            detector="hog",
            max_upload_bytes=1024 * 1024,
            max_pixels=MAX_PIXELS,
            max_images_per_request=5,
            batch_max_wait_ms=2,
        ),
        pipeline=hog_pipeline,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        _, text = app.state.keys.create(["admin"], "fuzz-admin")
        yield client, {"Authorization": f"Bearer {text}"}
    mp.undo()


@pytest.fixture(scope="module")
def api_schemas(app_client) -> dict[str | None, schemathesis.BaseSchema]:
    """The app's OpenAPI document; and one copy per request media type of the image routes, keeping only that
    media type, so that each form (multipart files, JSON with base64) gets its own examples."""
    client, _ = app_client
    spec = client.get("/openapi.json").json()
    schemas = {None: schemathesis.openapi.from_dict(spec)}
    for media in ("multipart/form-data", "application/json"):
        narrowed = copy.deepcopy(spec)
        for method, path in IMAGE_ROUTES:
            content = narrowed["paths"][path][method.lower()]["requestBody"]["content"]
            assert media in content, (method, path, list(content))
            narrowed["paths"][path][method.lower()]["requestBody"]["content"] = {media: content[media]}
        schemas[media] = schemathesis.openapi.from_dict(narrowed)
    return schemas


@pytest.fixture(scope="module")
def subject_id(app_client) -> str:
    """A subject that exists (random ids never do), so enrolment examples reach the decoder."""
    client, headers = app_client
    response = client.post("/v1/subjects", json={"name": "fuzz"}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def check_problem_json(response) -> None:
    """Every error is RFC 7807: ``application/problem+json`` with ``status``, ``code``, ``detail``, ``request_id``."""
    assert response.status_code < 500, f"server error {response.status_code}: {response.text[:500]}"
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", "").startswith(PROBLEM), (response.status_code, response.text[:300])
    body = response.json()
    assert body["status"] == response.status_code, body
    assert isinstance(body["code"], str) and body["code"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"], body


def send(client: TestClient, case, headers: dict[str, str]):
    """Send a schemathesis case through the app's TestClient (its lifespan is running): ``requests`` encodes the
    request exactly as schemathesis would send it over the network (multipart included)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    request = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        cookies=kwargs.get("cookies"),
        data=kwargs.get("data"),
        files=kwargs.get("files"),
        json=kwargs.get("json"),
    ).prepare()
    return client.request(request.method, request.url, headers=dict(request.headers), content=request.body or b"")


# -- schemathesis: every operation of /openapi.json ------------------------------------------------------------
IMAGE_ROUTES = {("POST", "/v1/detect"), ("POST", "/v1/verify"), ("POST", "/v1/identify")}
IMAGE_ROUTES |= {("POST", "/v1/subjects/{subject_id}/faces"), ("POST", "/v1/liveness"), ("POST", "/v1/clusters")}
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/info"),
    ("POST", "/v1/detect"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/liveness"),
    ("POST", "/v1/subjects"),
    ("GET", "/v1/subjects"),
    ("GET", "/v1/subjects/{subject_id}"),
    ("PATCH", "/v1/subjects/{subject_id}"),
    ("DELETE", "/v1/subjects/{subject_id}"),
    ("POST", "/v1/subjects/{subject_id}/faces"),
    ("DELETE", "/v1/subjects/{subject_id}/faces/{template_id}"),
    ("POST", "/v1/clusters"),
    ("GET", "/v1/clusters/{clustering_id}"),
    ("POST", "/v1/clusters/{clustering_id}/merge"),
    ("POST", "/v1/clusters/{clustering_id}/split"),
    ("POST", "/v1/clusters/{clustering_id}/move"),
    ("POST", "/v1/clusters/{clustering_id}/not-this-person"),
    ("POST", "/v1/clusters/{clustering_id}/name"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/drift"),
    ("DELETE", "/v1/subjects/{subject_id}/consent"),
    ("GET", "/v1/subjects/{subject_id}/personal-data"),
    ("GET", "/v1/erasures/{receipt_id}"),
    ("POST", "/v1/videos"),
    ("GET", "/v1/videos/{job_id}"),
    ("POST", "/v1/streams"),
    ("GET", "/v1/streams"),
    ("GET", "/v1/streams/{stream_id}"),
    ("DELETE", "/v1/streams/{stream_id}"),
    ("GET", "/v1/streams/{stream_id}/events"),
]
#: Operations without parameters or a body: nothing to generate a negative example from.
NO_INPUT = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/info")}
NO_INPUT |= {("GET", "/v1/streams")}
CASES = [
    pytest.param(method, path, mode, media, id=f"{method} {path} {mode}{' ' + media if media else ''}")
    for method, path in OPERATIONS
    for mode in ("positive", "negative")
    if mode == "positive" or (method, path) not in NO_INPUT
    for media in (("multipart/form-data", "application/json") if (method, path) in IMAGE_ROUTES else (None,))
]
#: Response codes of image routes that only the handler (after parsing, in the decoder) gives.
HANDLER_CODES = {"invalid_image", "too_many_pixels", "no_face", "no_usable_face"}
SEEN: dict[tuple[str, str, str | None], Counter] = {}


def test_fuzzed_operations_are_every_operation(api_schemas) -> None:
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schemas[None].get_all_operations()}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode", "media"), CASES)
def test_schemathesis(
    app_client, api_schemas, subject_id: str, method: str, path: str, mode: str, media: str | None
) -> None:
    """No 5xx, every error problem+json, status codes / content types / bodies as documented."""
    client, headers = app_client
    pinned = {"subject_id": subject_id} if path.endswith("/faces") else None
    strategy = api_schemas[media][path][method].as_strategy(schemathesis.GenerationMode(mode), path_parameters=pinned)
    seen = SEEN.setdefault((method, path, media), Counter())
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    @fuzz(20)
    @given(case=strategy)
    def run(case) -> None:
        response = send(client, case, headers)
        check_problem_json(response)
        case.validate_response(response, checks=checks)
        seen[response.json().get("code") if response.status_code >= 400 else response.status_code] += 1

    run()


@pytest.mark.parametrize("media", ["multipart/form-data", "application/json"])
@pytest.mark.parametrize(("method", "path"), sorted(IMAGE_ROUTES))
def test_schemathesis_bodies_reach_the_handlers(method: str, path: str, media: str) -> None:
    """The generated image bodies are read by the handler (the decoder answers), not refused at the door."""
    seen = SEEN.get((method, path, media))
    if seen is None:
        pytest.skip("run together with test_schemathesis")
    # A decoder's answer, or a success (a decodable image reached the handler and was answered), both prove it.
    reached = HANDLER_CODES & set(seen) or {k for k in seen if isinstance(k, int) and 200 <= k < 300}
    assert reached, dict(seen)


def test_non_object_json_bodies_are_422_not_500(app_client) -> None:
    """Found by the fuzz suite: a JSON array or scalar as the body of POST/PATCH /v1/subjects was a 500
    (``validate_params`` called ``.items()`` on it)."""
    client, headers = app_client
    for body in (b"[]", b"[[]]", b"0", b"-35947473", b'"text"', b"null", b"true"):
        for method, url in (("POST", "/v1/subjects"), ("PATCH", "/v1/subjects/0")):
            response = client.request(
                method, url, content=body, headers={**headers, "Content-Type": "application/json"}
            )
            check_problem_json(response)
            assert response.status_code == 422 and response.json()["code"] == "malformed_json", response.text


def test_errors_are_documented_as_problem_json(api_schemas) -> None:
    """Every operation documents its errors as problem+json (``default``), never FastAPI's 422 JSON."""
    spec = api_schemas[None].raw_schema
    assert "HTTPValidationError" not in json.dumps(spec)
    assert set(spec["components"]["schemas"]["Problem"]["required"]) >= {"status", "code", "detail", "request_id"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert set(responses["default"]["content"]) == {PROBLEM}, (method, path)
            assert "422" not in responses, (method, path)


# -- Hypothesis: the image decoder -----------------------------------------------------------------------------
def _real_jpeg() -> bytes:
    return min((p for p in IDENTITIES.glob("*/*.jpg")), key=lambda p: p.stat().st_size).read_bytes()


def _small_png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    PILImage.open(io.BytesIO(jpeg)).convert("RGB").resize((40, 48)).save(buf, format="PNG")
    return buf.getvalue()


REAL_JPEG = _real_jpeg()
REAL_PNG = _small_png(REAL_JPEG)
DECODER_LIMIT = 4_000_000  # max_pixels for the decoder corpus: a legitimate decode holds at most ~16 MB


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def assert_decodes_or_invalid(data: bytes) -> None:
    """``data`` decodes to RGB pixels or raises InvalidImage (ImageTooLarge included); nothing else, quickly."""
    start = time.perf_counter()
    for decoded in _decoders(data):
        try:
            pixels = decoded()
        except InvalidImage:
            continue
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[0] * pixels.shape[1] <= DECODER_LIMIT
    assert time.perf_counter() - start < DECODE_SECONDS * 2, "decoding took too long"


def _decoders(data: bytes):
    yield lambda: decode_bytes(data, "fuzz", DECODER_LIMIT)
    yield lambda: load_image(data, name="fuzz", max_pixels=DECODER_LIMIT).pixels
    if "decode_max_pixels" in inspect.signature(load_image).parameters:  # reduced decoding, where available
        yield lambda: load_image(data, name="fuzz", max_pixels=DECODER_LIMIT, decode_max_pixels=500).pixels


@pytest.fixture(scope="module")
def rss_budget() -> Iterator[None]:
    """The decoder corpus as a whole may not raise the process's peak memory by more than 512 MiB."""
    before = peak_rss_mib()
    yield
    assert peak_rss_mib() - before < 512, f"peak RSS grew {peak_rss_mib() - before:.0f} MiB while decoding"


@fuzz(60)
@given(data=st.binary(max_size=4096))
@example(data=b"")
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"\xff\xd8\xff")
@example(data=b"GIF89a\x01\x00\x01\x00")
@example(data=b"BM")
@example(data=b"II*\x00")
def test_decoder_arbitrary_bytes(rss_budget, data: bytes) -> None:
    assert_decodes_or_invalid(data)


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("header"), st.integers(0, 63), st.integers(0, 255)),  # within the first 64 bytes
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        if not out:
            break
        i = where % len(out)
        if kind == "truncate":
            del out[i:]
        elif kind == "flip":
            out[i] ^= value
        else:
            out[i] = value
    return bytes(out)


@fuzz(40)
@given(original=st.sampled_from(["jpeg", "png"]), mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_decoder_mutated_real_images(rss_budget, original: str, mutations: list[tuple[str, int, int]]) -> None:
    """A real JPEG (the smallest test photo) and a small PNG made from it, truncated and with bytes changed."""
    assert_decodes_or_invalid(mutate(REAL_JPEG if original == "jpeg" else REAL_PNG, mutations))


def _jpeg_with_size(width: int, height: int) -> bytes:
    """The real JPEG with its SOF frame header claiming ``width`` × ``height``."""
    data = bytearray(REAL_JPEG)
    i = 2
    while i + 9 < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            break
        i += 2 + length
    return bytes(data)


def _png_with_size(width: int, height: int, depth: int, colour: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _gif_with_size(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02D\x01\x00;"
    )


def _bmp_with_size(width: int, height: int, bits: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + 16, 0, 0, 14 + len(header)) + header + b"\x00" * 16


def _tiff_with_size(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, kind, count, value)
            if kind == 4
            else struct.pack("<HHIHH", tag, kind, count, value, 0)
            for tag, kind, count, value in entries
        )
        + b"\x00\x00\x00\x00"
    )
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\x00" * 16 + ifd


SIZES = st.integers(0, 2**16 - 1)
BIG = st.integers(0, 2**31 - 1)
HUGE_HEADERS = st.one_of(
    st.builds(_jpeg_with_size, SIZES, SIZES),
    st.builds(_png_with_size, BIG, BIG, st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([0, 2, 3, 4, 6])),
    st.builds(_gif_with_size, SIZES, SIZES),
    st.builds(
        _bmp_with_size,
        st.integers(-(2**31), 2**31 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.sampled_from([1, 4, 8, 16, 24, 32]),
    ),
    st.builds(_tiff_with_size, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


@fuzz(60)
@given(data=HUGE_HEADERS)
@example(data=_png_with_size(2**31 - 1, 2**31 - 1, 8, 6))
@example(data=_png_with_size(65535, 65535, 16, 6))
@example(data=_bmp_with_size(2**31 - 1, -(2**31), 32))
@example(data=_tiff_with_size(2**32 - 1, 2**32 - 1))
@example(data=_jpeg_with_size(65535, 65535))
@example(data=_jpeg_with_size(2000, 1999))  # under the limit: the pixels are allocated, the data is short
def test_decoder_headers_claiming_huge_sizes(rss_budget, data: bytes) -> None:
    """PNG/GIF/BMP/TIFF/JPEG headers claiming up to 2³²-1 pixels a side: refused from the header, fast."""
    assert_decodes_or_invalid(data)


# -- Hypothesis: the JSON body parser --------------------------------------------------------------------------
def assert_json_ok_or_422(raw: bytes) -> None:
    try:
        parse_json(raw)
    except ApiError as exc:
        assert exc.status == 422 and exc.code in ("malformed_json", "validation_error"), (exc.status, exc.code)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@fuzz(150)
@given(text=st.text(max_size=300) | st.binary(max_size=300))
@example(text="[" * 100_000)
@example(text='{"a":' * 50_000)
@example(text="[" * 32 + "]" * 32)
@example(text="[" * 33 + "]" * 33)
@example(text='"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["')
@example(text="9" * 100_000)
@example(text="-" + "9" * 5000)
@example(text="1e999999")
@example(text="NaN")
@example(text="[-Infinity]")
@example(text=b"\xff\xfe{}")
@example(text="\ud800")
def test_json_parser_arbitrary_text(text: str | bytes) -> None:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    start = time.perf_counter()
    assert_json_ok_or_422(raw)
    assert time.perf_counter() - start < DECODE_SECONDS


@fuzz(100)
@given(value=JSON_VALUES, depth=st.integers(0, 200), big=st.integers(-(10**40), 10**40))
def test_json_parser_nested_and_huge_numbers(value, depth: int, big: int) -> None:
    """Valid JSON wrapped ``depth`` levels deep and carrying an integer up to 40 digits: parsed, or 422."""
    raw = ("[" * depth + json.dumps([value, big]) + "]" * depth).encode()
    try:
        parse_json(raw)
    except ApiError as exc:
        assert exc.status == 422 and exc.code in ("malformed_json", "validation_error"), (exc.status, exc.code)
    else:  # accepted: within both limits
        assert abs(big) <= MAX_JSON_INT and depth + 1 <= MAX_JSON_DEPTH


# -- Hypothesis: the multipart and JSON paths through the HTTP app ---------------------------------------------
FIELD_NAMES = st.sampled_from(["image", "image_a", "image_b", "images", "top_k", "threshold", "fmr", ""]) | st.text(
    max_size=12
)
PART_TYPES = st.sampled_from(
    ["image/jpeg", "image/png", "application/octet-stream", "text/plain", "", "image/"]
) | st.text(max_size=20)
PART_BODIES = st.sampled_from([REAL_PNG, b"", b"0.5", b"\x89PNG\r\n\x1a\n"]) | st.binary(max_size=200)
PARTS = st.lists(
    st.tuples(FIELD_NAMES, st.one_of(st.none(), st.text(max_size=12)), PART_TYPES, PART_BODIES), max_size=8
)
IMAGE_URLS = ["/v1/detect", "/v1/verify", "/v1/identify", "/v1/subjects/{sid}/faces", "/v1/liveness", "/v1/clusters"]


def _header_safe(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable() and ch not in '"\\\r\n')


def multipart_body(parts: list[tuple[str, str | None, str, bytes]], boundary: str) -> bytes:
    out = bytearray()
    for name, filename, content_type, body in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{_header_safe(name)}"'
        if filename is not None:
            disposition += f'; filename="{_header_safe(filename)}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {_header_safe(content_type)}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


@pytest.fixture(scope="module")
def image_urls(subject_id: str) -> list[str]:
    return [url.format(sid=subject_id) for url in IMAGE_URLS]


@fuzz(60)
@given(
    url=st.integers(0, len(IMAGE_URLS) - 1),
    parts=PARTS,
    boundary=st.sampled_from(["fuzzboundary", "x", "a" * 70]),
    truncate=st.none() | st.integers(0, 400),
    content_type=st.sampled_from(
        [
            "multipart/form-data; boundary={b}",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/mixed; boundary={b}",
        ]
    ),
)
@example(
    url=0,
    parts=[("image", "a.png", "image/png", REAL_PNG)],
    boundary="x",
    truncate=None,
    content_type="multipart/form-data; boundary={b}",
)
def test_multipart_never_5xx(app_client, image_urls, url, parts, boundary, truncate, content_type) -> None:
    """Arbitrary field names, counts, part content types and bodies (and truncated bodies): a 2xx or a 4xx
    problem, never a 5xx."""
    client, headers = app_client
    body = multipart_body(parts, boundary)
    if truncate is not None:
        body = body[:truncate]
    response = client.post(
        image_urls[url], content=body, headers={**headers, "Content-Type": content_type.format(b=boundary)}
    )
    check_problem_json(response)


@fuzz(40)
@given(
    url=st.integers(0, len(IMAGE_URLS) - 1),
    body=st.dictionaries(
        FIELD_NAMES,
        JSON_VALUES
        | st.sampled_from(
            [base64.b64encode(REAL_PNG).decode(), "data:image/png;base64," + base64.b64encode(REAL_PNG).decode()]
        ),
        max_size=5,
    ),
)
def test_json_image_bodies_never_5xx(app_client, image_urls, url, body) -> None:
    client, headers = app_client
    response = client.post(image_urls[url], json=body, headers=headers)
    check_problem_json(response)
