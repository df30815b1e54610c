"""Ray Serve end to end: a real local Ray (2 CPUs), the faceprint application deployed on Serve, real HTTP.

The same API and UI as the single-process server, with detection and embedding in their own deployments:
detect, enrol, identify and verify round trips on real photos with the real models (HOG detector, to keep
the module short on 2 cores), results checked against the in-process pipeline, and the embedder's
``@serve.batch`` seen merging concurrent calls. Ray is shut down at the end of the module.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from faceprint.scale.settings import DeploymentScaling, RaySettings
from faceprint.service.settings import Settings, SettingsError
from tests.conftest import GROUPS, IDENTITIES
from tests.test_tracing import TRACE_ID, TRACEPARENT, OtlpReceiver

ray = pytest.importorskip("ray", reason="Ray Serve tests need the [ray] extra: pip install 'ray[serve]'")

ADA = [IDENTITIES / "person01" / n for n in ("img27.jpg", "img28.jpg")]
ADA_PROBE = IDENTITIES / "person01" / "img43.jpg"
BOB = IDENTITIES / "person02" / "img51.jpg"
BOB_PROBE = IDENTITIES / "person02" / "img50.jpg"
GROUP = GROUPS / "selfie-many-people.jpg"
THRESHOLD = 0.92  # see test_service_api.py: genuine pairs >= 0.93, impostors <= 0.88 on these photos


@dataclass
class Served:
    url: str
    headers: dict[str, str]
    ray_settings: RaySettings
    traces: OtlpReceiver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Served]:
    from faceprint.scale.server import deploy, undeploy
    from faceprint.service.auth import KeyStore
    from faceprint.service.store import ServiceStore

    home = tmp_path_factory.mktemp("ray-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", secrets.token_hex(32))  # before ray.init: the replicas inherit it
    traces = OtlpReceiver()  # every replica (HTTP ingress, detector) exports its spans here
    mp.setenv("FACEPRINT_OTEL_ENDPOINT", traces.url)
    mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    settings = Settings(home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", detector="hog")
    _, key = KeyStore(ServiceStore(settings.service_db)).create(["admin"], "ray-test")
    # Fixed replica counts that fit 2 CPUs: detector 1, embedder 0.5, HTTP ingress 0.5.
    rs = RaySettings(
        detector=DeploymentScaling(num_cpus=1),
        embedder=DeploymentScaling(num_cpus=0.5, max_ongoing_requests=64),
        ingress=DeploymentScaling(num_cpus=0.5, max_ongoing_requests=64),
        batch_max_size=16,
        batch_wait_ms=50,  # generous, so concurrent test calls surely meet in one batch
    )
    ray.init(num_cpus=2, include_dashboard=False)
    port = _free_port()
    try:
        deploy(settings, rs, host="127.0.0.1", port=port)
        yield Served(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}, rs, traces)
    finally:
        undeploy(rs, shutdown_ray=True)
        traces.close()
        mp.undo()


def _post(served: Served, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(served.url + path, headers=served.headers, timeout=120, **kwargs)  # type: ignore[arg-type]


def test_health_info_and_the_same_ui(served: Served) -> None:
    assert httpx.get(served.url + "/readyz", timeout=30).json()["status"] == "ready"
    info = httpx.get(served.url + "/v1/info", timeout=30).json()
    assert info["model_id"] == "dlib-resnet-v1" and info["detector"] == "hog" and info["auth"] is True
    page = httpx.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert httpx.post(served.url + "/v1/detect", files={"image": GROUP.read_bytes()}, timeout=30).status_code == 401


def test_detect_round_trip_matches_the_in_process_pipeline(served: Served, hog_pipeline) -> None:
    r = _post(served, "/v1/detect", files={"image": ("group.jpg", GROUP.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    local = hog_pipeline.detect(GROUP)
    assert len(faces) == len(local) >= 2
    for remote, mine in zip(faces, local, strict=True):
        np.testing.assert_allclose(remote["box"], mine.box, atol=0.01)
        assert remote["quality"]["score"] is not None


def test_the_trace_crosses_the_deployment_handles(served: Served) -> None:
    """The caller's traceparent reaches the HTTP ingress replica, which hands it to the detector replica: both
    export spans of the same trace (service names faceprint and faceprint-ray) to the OTLP endpoint."""
    r = httpx.post(
        served.url + "/v1/detect",
        files={"image": ("ada.jpg", ADA_PROBE.read_bytes(), "image/jpeg")},
        headers={**served.headers, "traceparent": TRACEPARENT},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    names: set[str] = set()
    while time.monotonic() < deadline and not names >= {"POST /v1/detect", "detect", "landmarks"}:
        names = {name for trace_id, name, _ in served.traces.spans if trace_id == TRACE_ID}
        time.sleep(0.2)
    assert names >= {"POST /v1/detect", "detect", "landmarks"}, names
    assert served.traces.services >= {"faceprint", "faceprint-ray"}


def test_enrol_identify_and_verify_round_trips(served: Served, hog_pipeline, tmp_path: Path) -> None:
    from faceprint.gallery import enrol_images, open_gallery

    ada = _post(served, "/v1/subjects", json={"name": "ada"}).json()
    bob = _post(served, "/v1/subjects", json={"name": "bob"}).json()
    r = _post(served, f"/v1/subjects/{ada['id']}/faces", files=[("image", p.read_bytes()) for p in ADA])
    assert r.status_code == 201 and r.json()["accepted"] == 2, r.text
    assert _post(served, f"/v1/subjects/{bob['id']}/faces", files={"image": BOB.read_bytes()}).status_code == 201

    # The same enrolment in-process: Ray must give the same answers to the score (same chips, same network).
    with open_gallery(tmp_path / "local") as local:
        enrol_images(local, hog_pipeline, "ada", ADA)
        enrol_images(local, hog_pipeline, "bob", [BOB])
        for probe, who in ((ADA_PROBE, "ada"), (BOB_PROBE, "bob")):
            r = _post(served, "/v1/identify", files={"image": probe.read_bytes()}, data={"threshold": str(THRESHOLD)})
            assert r.status_code == 200, r.text
            (face,) = r.json()["faces"]
            assert face["match"] == who
            (expected,) = local.identify(hog_pipeline.embed(probe), threshold=THRESHOLD)
            assert face["score"] == pytest.approx(expected.to_dict()["score"], abs=1e-4)

    thr = {"threshold": str(THRESHOLD)}
    same = _post(
        served, "/v1/verify", files={"image_a": ADA[0].read_bytes(), "image_b": ADA_PROBE.read_bytes()}, data=thr
    )
    other = _post(served, "/v1/verify", files={"image_a": ADA[0].read_bytes(), "image_b": BOB.read_bytes()}, data=thr)
    assert same.status_code == other.status_code == 200, (same.text, other.text)
    assert same.json()["same_person"] is True and other.json()["same_person"] is False


def test_embedder_batches_concurrent_calls_and_matches_unbatched(served: Served, hog_pipeline) -> None:
    from ray import serve

    from faceprint.scale.deployments import EMBEDDER_NAME

    handle = serve.get_deployment_handle(EMBEDDER_NAME, app_name=served.ray_settings.app_name)
    photos = [ADA[0], ADA[1], ADA_PROBE, BOB, BOB_PROBE, *ADA]
    chips = [hog_pipeline.chips(p, hog_pipeline.detect(p)) for p in photos]
    before = handle.info.remote().result()
    with ThreadPoolExecutor(len(chips)) as pool:
        vectors = list(pool.map(lambda c: handle.embed.remote(c).result(), chips))
    after = handle.info.remote().result()
    for c, v in zip(chips, vectors, strict=True):
        np.testing.assert_allclose(v, hog_pipeline.embed_chips(c), atol=1e-4)  # the pipeline's vectors (mirror too)
    calls = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert calls == len(chips)
    assert batches < calls, f"{calls} concurrent calls ran as {batches} network passes: no batching happened"


def test_ray_settings_from_env_and_their_serve_options() -> None:
    rs = RaySettings.from_env(
        {
            "FACEPRINT_RAY_EMBEDDER_MAX_REPLICAS": "8",
            "FACEPRINT_RAY_EMBEDDER_TARGET_ONGOING_REQUESTS": "24",
            "FACEPRINT_RAY_EMBEDDER_NUM_GPUS": "0.5",
            "FACEPRINT_RAY_DETECTOR_MIN_REPLICAS": "2",
            "FACEPRINT_RAY_DETECTOR_MAX_REPLICAS": "6",
            "FACEPRINT_RAY_BATCH_MAX_SIZE": "48",
        },
        address="auto",
    )
    emb = rs.embedder.options()
    assert emb["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 24.0,
    }
    assert emb["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert rs.detector.options()["autoscaling_config"]["min_replicas"] == 2
    assert rs.batch_max_size == 48 and rs.address == "auto"
    with pytest.raises(SettingsError, match="FACEPRINT_RAY_DETECTOR_MAX_REPLICAS"):
        RaySettings.from_env({"FACEPRINT_RAY_DETECTOR_MIN_REPLICAS": "3", "FACEPRINT_RAY_DETECTOR_MAX_REPLICAS": "2"})
    with pytest.raises(SettingsError, match="FACEPRINT_RAY_BATCH_WAIT_MS: expected a number"):
        RaySettings.from_env({"FACEPRINT_RAY_BATCH_WAIT_MS": "soon"})


def test_app_builder_is_what_serve_run_and_rayservice_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``import_path: faceprint.scale.ray_app:app_builder`` builds the application from env and ``args``."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from faceprint.scale.ray_app import app_builder

    monkeypatch.setenv("FACEPRINT_HOME", str(tmp_path))
    monkeypatch.setenv("FACEPRINT_RAY_DETECTOR_MAX_REPLICAS", "5")
    app = call_user_app_builder_with_args_if_necessary(app_builder, {"detector": "hog"})
    assert isinstance(app, Application)
    with pytest.raises(SettingsError, match="FACEPRINT_DETECTOR"):
        call_user_app_builder_with_args_if_necessary(app_builder, {"detector": "nope"})
