"""The service under load: the bounded admission queue (503 ``overloaded`` + ``Retry-After``, nothing leaked)
and micro-batches that actually form when requests coincide. Real app, real pipeline (HOG), real photos."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from faceprint.service.app import create_app
from faceprint.service.settings import Settings, SettingsError
from tests.test_service_api import ADA, ADA_PROBE, OTHER, THRESHOLD, assert_problem, files, h

BURST = 8  # concurrent requests against 1 worker + a queue of 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, hog_pipeline) -> Iterator[tuple[TestClient, dict[str, dict]]]:
    """A service with one inference worker and room for one queued request."""
    home = tmp_path_factory.mktemp("overload-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    settings = Settings(
        home=home,
        gallery=home / "gallery",
        service_db=home / "service.sqlite3",
        detector="hog",
        inference_workers=1,
        max_queue=1,
        batch_max_wait_ms=2,
    )
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        keys = {}
        for scope in ("admin", "recognize", "read"):
            key, text = app.state.keys.create([scope], f"test-{scope}")
            keys[scope] = {"Authorization": f"Bearer {text}", "id": key.id}
        subject = client.post("/v1/subjects", json={"name": "Ada"}, headers=h(keys, "admin")).json()
        enrolled = client.post(
            f"/v1/subjects/{subject['id']}/faces",
            files=[("image", (p.name, p.read_bytes(), "image/jpeg")) for p in ADA],
            headers=h(keys, "admin"),
        )
        assert enrolled.status_code == 201, enrolled.text
        yield client, keys
    mp.undo()


def metric(client: TestClient, keys: dict[str, dict], name: str) -> float:
    text = client.get("/metrics", headers=h(keys, "read")).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, name
    return float(found.group(1))


def test_a_burst_over_capacity_gets_503_overloaded_fast_and_leaks_nothing(tiny, monkeypatch) -> None:
    client, keys = tiny
    state = client.app.state
    engine = state.engines.default
    gate = threading.Event()
    real_detect = engine.backend.detect

    def gated_detect(image):  # holds the one worker until every refused request has its answer
        assert gate.wait(60), "the gate was never opened"
        return real_detect(image)

    monkeypatch.setattr(engine.backend, "detect", gated_detect)
    rejected_before = metric(client, keys, "faceprint_admission_rejections_total")

    def send(i: int):
        if i % 2:
            return client.post("/v1/detect", files=files(image=OTHER), headers=h(keys, "recognize"))
        data = {"threshold": str(THRESHOLD)}
        return client.post("/v1/identify", files=files(image=ADA_PROBE), data=data, headers=h(keys, "recognize"))

    def timed(i: int):
        start = time.monotonic()
        response = send(i)
        return response, time.monotonic() - start

    with ThreadPoolExecutor(BURST) as pool:
        futures = [pool.submit(timed, i) for i in range(BURST)]
        # One request holds the worker (stuck at the gate), one waits in the queue; all others are refused
        # while the gate is still shut, so they must come back without any detection finishing.
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < BURST - 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        answered = {i for i, f in enumerate(futures) if f.done()}
        refused = [futures[i].result() for i in sorted(answered)]
        assert len(refused) == BURST - 2, "requests over the capacity should be answered at once"
        # While saturated: requests without CPU work are served, and the gauges show the full queue.
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/subjects", headers=h(keys, "read")).status_code == 200
        assert metric(client, keys, "faceprint_admission_in_flight") == 2
        assert metric(client, keys, "faceprint_admission_queue_depth") == 1
        gate.set()
        admitted = [f.result()[0] for i, f in enumerate(futures) if i not in answered]

    for response, _ in refused:
        body = assert_problem(response, 503, "overloaded")
        assert int(response.headers["retry-after"]) >= 1 and body["retry_after"] == int(response.headers["retry-after"])
    # Answered without waiting for a worker (generous bound: the 100 ms target is for an unloaded client).
    assert min(took for _, took in refused) < 1.0
    assert [r.status_code for r in admitted] == [200, 200], [r.text for r in admitted]
    assert metric(client, keys, "faceprint_admission_rejections_total") - rejected_before == BURST - 2
    text = client.get("/metrics", headers=h(keys, "read")).text
    assert 'faceprint_http_requests_total{method="POST",route="/v1/identify",status="503"}' in text

    # Nothing leaked: no admitted request, no borrowed worker, no announced detection, and normal service.
    inference = state.inference
    assert inference.admission.in_flight == 0 and inference.limiter.borrowed_tokens == 0
    assert metric(client, keys, "faceprint_admission_queue_depth") == 0
    assert engine.backend.batcher.arrivals.outlook(time.monotonic())[:2] == (None, 0)
    monkeypatch.setattr(engine.backend, "detect", real_detect)
    again = client.post(
        "/v1/identify", files=files(image=ADA_PROBE), data={"threshold": str(THRESHOLD)}, headers=h(keys, "recognize")
    )
    assert again.status_code == 200 and again.json()["faces"][0]["match"] == "Ada"


def test_a_failing_request_releases_its_place(tiny) -> None:
    client, keys = tiny
    bad = client.post("/v1/identify", files=files(image=b"not an image"), headers=h(keys, "recognize"))
    assert_problem(bad, 422, "invalid_image")
    assert client.app.state.inference.admission.in_flight == 0


def test_admission_counts_a_request_once_and_always_releases() -> None:
    """The authoritative check in Inference.compute: a place per request (inside a request scope) or per
    block (outside one); the 503 carries Retry-After; every exit releases."""
    import anyio

    from faceprint.service.admission import Admission, request_scope
    from faceprint.service.errors import ApiError

    admission = Admission(workers=1, max_queue=1)

    async def main() -> None:
        async with admission.admitted(), admission.admitted():
            assert admission.full()
            with pytest.raises(ApiError) as refused:
                async with admission.admitted():
                    pass
            assert refused.value.status == 503 and refused.value.code == "overloaded"
            assert refused.value.headers == {"Retry-After": "1"}
        assert admission.in_flight == 0
        with request_scope():  # one request, several CPU jobs: one place, released when the request ends
            async with admission.admitted():
                pass
            with pytest.raises(RuntimeError):
                async with admission.admitted():
                    raise RuntimeError("a failing job")
            assert admission.in_flight == 1
        assert admission.in_flight == 0 and admission.rejected == 1

    anyio.run(main)


def test_every_cpu_route_of_the_early_refusal_exists(tiny) -> None:
    from faceprint.service.admission import CPU_ROUTES

    client, _ = tiny
    paths = client.get("/openapi.json").json()["paths"]
    for method, template in CPU_ROUTES:
        assert method.lower() in paths.get(template, {}), template


def test_max_queue_setting() -> None:
    base = {"home": "/tmp/h", "gallery": "/tmp/h/g", "service_db": "/tmp/h/s.db"}
    assert Settings.from_env({"FACEPRINT_INFERENCE_WORKERS": "3"}, **base).queue_limit == 24
    assert Settings.from_env({"FACEPRINT_MAX_QUEUE": "0"}, **base).queue_limit == 0
    with pytest.raises(SettingsError, match="FACEPRINT_MAX_QUEUE"):
        Settings.from_env({"FACEPRINT_MAX_QUEUE": "-1"}, **base)
    with pytest.raises(SettingsError, match="FACEPRINT_MAX_QUEUE"):
        Settings.from_env({"FACEPRINT_MAX_QUEUE": "many"}, **base)


def test_batcher_forms_one_batch_from_coinciding_requests(hog_pipeline) -> None:
    """Four requests whose detections run at the same time (as the service announces them) are embedded
    in one network run: the batcher waits for detections on their way, not for a fixed few ms."""
    from faceprint.image import load_image
    from faceprint.service.batching import EmbedBatcher
    from faceprint.service.metrics import Metrics

    photos = [load_image(p) for p in (*ADA, ADA_PROBE, OTHER)]
    metrics = Metrics()
    # A window far longer than any detection here: only "nothing more is on its way" may end the batch.
    batcher = EmbedBatcher(hog_pipeline, max_faces=32, max_wait_s=60, metrics=metrics)
    batcher.start()
    arrivals = batcher.arrivals
    jobs = [arrivals.queued() for _ in photos]
    all_started = threading.Barrier(len(photos))
    faces: dict[int, int] = {}

    def request(i: int) -> None:  # what Inference.decode_and_detect + embed do for one request
        arrivals.started(jobs[i])
        all_started.wait()
        detections = hog_pipeline.detect(photos[i])
        future = batcher.submit(photos[i], detections)
        arrivals.done(jobs[i])
        faces[i] = len(future.result(timeout=120))

    try:
        threads = [threading.Thread(target=request, args=(i,)) for i in range(len(photos))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    assert all(faces[i] >= 1 for i in range(len(photos)))
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples if not s.labels.get("le")}
    assert samples["faceprint_embed_batch_faces_count"] == 1
    assert samples["faceprint_embed_batch_faces_sum"] == sum(faces.values())
    waits = {s.labels["reason"]: s.value for s in metrics.batch_waits.collect()[0].samples if s.name.endswith("_total")}
    assert waits == {"none_coming": 1}
