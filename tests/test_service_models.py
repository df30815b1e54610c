"""The service runs any installed model, several at once: one engine per model a collection is pinned to.

Real models (dlib's and the faceplugin pack installed with npm, as a user does), real photos, a real gallery:
- a service started with `model=faceplugin-mbf` runs the pack's whole profile (UltraFace detector, 68-point
  landmarks, MobileFaceNet), enrols and identifies over HTTP and says so in /v1/info and in every answer;
- a gallery with one collection on dlib and one on the pack is served with both models;
- a collection pinned to a model this machine lacks is refused with a 503 that names the install command,
  while the others are served;
- fpir over HTTP (identify and verify) states the rule that chose the threshold.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from faceprint.gallery import enrol_images, open_gallery
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.service.app import create_app
from faceprint.service.settings import Settings
from tests.conftest import IDENTITIES

ADA = [IDENTITIES / "person01" / n for n in ("img27.jpg", "img28.jpg", "img42.jpg")]
ADA_PROBE = IDENTITIES / "person01" / "img43.jpg"
BOB = [IDENTITIES / "person02" / n for n in ("img47.jpg", "img48.jpg")]
BOB_PROBE = IDENTITIES / "person02" / "img51.jpg"
STRANGER = IDENTITIES / "person03" / "img53.jpg"


def _settings(home: Path, **changes: object) -> Settings:
    return Settings(home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", **changes)  # type: ignore[arg-type]


def _client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        _, text = app.state.keys.create(["admin"], "test")
        yield client, {"Authorization": f"Bearer {text}"}


def _upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (path.name, path.read_bytes(), "image/jpeg")}


@pytest.fixture(scope="module")
def env(faceplugin_store: Path) -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    mp.setenv("FACEPRINT_MODEL_DIR", str(faceplugin_store))
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def pack_service(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    yield from _client(_settings(tmp_path_factory.mktemp("pack-home"), model="faceplugin-mbf"))


def test_the_pack_profile_serves_enrols_and_identifies(pack_service) -> None:
    client, auth = pack_service
    info = client.get("/v1/info").json()
    assert info["model_id"] == "faceplugin-mbf" and info["detector"] == "faceplugin-ultraface"
    assert info["models"] == [
        {
            "model_id": "faceplugin-mbf",
            "dim": 512,
            "detector": "faceplugin-ultraface",
            "landmarks": "faceplugin-landmark68",
            "calibrated": True,
        }
    ]
    subject = client.post("/v1/subjects", json={"name": "Ada"}, headers=auth)
    assert subject.status_code == 201, subject.text
    for photo in ADA:
        enrolled = client.post(f"/v1/subjects/{subject.json()['id']}/faces", files=_upload(photo), headers=auth)
        assert enrolled.status_code == 201, enrolled.text
    answer = client.post("/v1/identify", files=_upload(ADA_PROBE), headers=auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "faceplugin-mbf" and body["rule"] == "fmr" and body["fmr"] == pytest.approx(1e-3)
    assert [f["match"] for f in body["faces"]] == ["Ada"]
    assert body["faces"][0]["score"] >= body["threshold"]
    stranger = client.post("/v1/identify", files=_upload(STRANGER), headers=auth).json()
    assert [f["match"] for f in stranger["faces"]] == [None]
    # The detect route runs the pack's detector; its 68-point model gives ArcFace's 5 points.
    detected = client.post("/v1/detect", files=_upload(ADA_PROBE), headers=auth).json()
    assert detected["detector"] == "faceplugin-ultraface" and len(detected["faces"]) == 1
    # The audit log names the model that answered.
    entries = client.get("/v1/audit", headers=auth).json()["items"]
    assert {e["model_id"] for e in entries if e["action"] == "identify"} == {"faceplugin-mbf"}


def test_fpir_over_http_states_the_rule(pack_service) -> None:
    client, auth = pack_service
    fpir = client.post("/v1/identify", files=_upload(ADA_PROBE), data={"fpir": "0.01"}, headers=auth)
    assert fpir.status_code == 200, fpir.text
    body = fpir.json()
    # One subject enrolled: the per-comparison FMR is the FPIR itself (1 - (1 - 0.01)^(1/1)).
    assert body["rule"] == "fpir" and body["fpir"] == 0.01 and body["fmr"] == pytest.approx(0.01)
    assert body["faces"][0]["fpir"] == 0.01 and body["faces"][0]["match"] == "Ada"
    raw = client.post("/v1/identify", files=_upload(ADA_PROBE), data={"threshold": "0.3"}, headers=auth).json()
    assert raw["rule"] == "threshold" and raw["threshold"] == 0.3 and raw["fpir"] is None
    both = client.post("/v1/identify", files=_upload(ADA_PROBE), data={"fmr": "0.001", "fpir": "0.01"}, headers=auth)
    assert both.status_code == 422 and "at most one of fmr, fpir and threshold" in both.text
    verify = client.post(
        "/v1/verify",
        files={"image_a": (ADA[0].name, ADA[0].read_bytes()), "image_b": (ADA_PROBE.name, ADA_PROBE.read_bytes())},
        data={"fpir": "0.001"},
        headers=auth,
    )
    assert verify.status_code == 200, verify.text
    decision = verify.json()
    assert decision["rule"] == "fpir" and decision["fpir"] == 0.001 and decision["same_person"] is True
    assert decision["model"] == "faceplugin-mbf"


@pytest.fixture(scope="module")
def two_model_home(env, tmp_path_factory: pytest.TempPathFactory, faceplugin_store: Path) -> Path:
    """A gallery made with the library: `default` on dlib (Ada), `arcface` on the pack (Bob)."""
    home = tmp_path_factory.mktemp("two-models")
    dlib = Pipeline(PipelineConfig(embedder="dlib-resnet-v1"))
    mbf = Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=faceplugin_store))
    with open_gallery(home / "gallery") as gallery:
        gallery.ensure_collection("default", dlib.model_id, dlib.dim)
        gallery.ensure_collection("arcface", mbf.model_id, mbf.dim)
        assert enrol_images(gallery, dlib, "Ada", ADA, collection="default").accepted
        assert enrol_images(gallery, mbf, "Bob", BOB, collection="arcface").accepted
    return home


def test_two_collections_on_two_models(two_model_home: Path) -> None:
    for client, auth in _client(_settings(two_model_home)):
        info = client.get("/v1/info").json()
        assert info["model_id"] == "dlib-resnet-v1"  # new collections: the default model
        assert sorted(m["model_id"] for m in info["models"]) == ["dlib-resnet-v1", "faceplugin-mbf"]
        assert info["unavailable"] == {}
        on_dlib = client.post("/v1/identify", files=_upload(ADA_PROBE), headers=auth).json()
        assert on_dlib["model"] == "dlib-resnet-v1" and on_dlib["faces"][0]["match"] == "Ada"
        on_pack = client.post(
            "/v1/identify", files=_upload(BOB_PROBE), data={"collection": "arcface"}, headers=auth
        ).json()
        assert on_pack["model"] == "faceplugin-mbf" and on_pack["faces"][0]["match"] == "Bob"
        # Enrolling into the pack's collection embeds with the pack (a dlib vector would be refused).
        bob = client.get("/v1/subjects", params={"collection": "arcface"}, headers=auth).json()["items"][0]
        more = client.post(
            f"/v1/subjects/{bob['id']}/faces",
            params={"collection": "arcface"},
            files=_upload(IDENTITIES / "person02" / "img49.jpg"),
            headers=auth,
        )
        assert more.status_code == 201, more.text
        # A new collection gets the service's model.
        created = client.post("/v1/subjects", json={"name": "Cy", "collection": "fresh"}, headers=auth)
        assert created.status_code == 201, created.text


def test_a_collection_made_while_the_service_runs_gets_its_model_on_first_use(
    env, tmp_path: Path, faceplugin_store: Path
) -> None:
    """As after `faceprint migrate` (or an enrolment by the CLI) while the service runs: the service looks the
    collection's model up per request and loads it once."""
    for client, auth in _client(_settings(tmp_path)):
        assert [m["model_id"] for m in client.get("/v1/info").json()["models"]] == ["dlib-resnet-v1"]
        mbf = Pipeline(PipelineConfig(embedder="faceplugin-mbf", model_dir=faceplugin_store))
        with open_gallery(tmp_path / "gallery") as gallery:
            gallery.ensure_collection("late", mbf.model_id, mbf.dim)
            assert enrol_images(gallery, mbf, "Bob", BOB, collection="late").accepted
        answer = client.post("/v1/identify", files=_upload(BOB_PROBE), data={"collection": "late"}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "faceplugin-mbf" and answer.json()["faces"][0]["match"] == "Bob"
        loaded = [m["model_id"] for m in client.get("/v1/info").json()["models"]]
        assert loaded == ["dlib-resnet-v1", "faceplugin-mbf"]


def test_a_collection_on_a_missing_model_is_refused_and_the_rest_served(
    two_model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same gallery on a machine whose model store lacks the pack.
    monkeypatch.setenv("FACEPRINT_MODEL_DIR", str(tmp_path / "empty-store"))
    for client, auth in _client(_settings(two_model_home)):
        info = client.get("/v1/info").json()
        assert [m["model_id"] for m in info["models"]] == ["dlib-resnet-v1"]
        assert "faceprint models install faceplugin" in info["unavailable"]["faceplugin-mbf"]
        assert client.get("/readyz").status_code == 200
        refused = client.post("/v1/identify", files=_upload(BOB_PROBE), data={"collection": "arcface"}, headers=auth)
        assert refused.status_code == 503 and refused.json()["code"] == "model_unavailable"
        assert "faceprint models install faceplugin" in refused.json()["detail"]
        served = client.post("/v1/identify", files=_upload(ADA_PROBE), headers=auth).json()
        assert served["faces"][0]["match"] == "Ada"
