"""Liveness on every interface (issue #15): the library, the CLI and the HTTP service give the same answers
on real NUAA frames with the real model (faceplugin pack): live frames pass, printed-photo frames are judged
attacks; ``--liveness``/``liveness`` off|flag|require on verify, identify and enrolment; no model installed →
the error naming the install command; bad input as everywhere else."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from faceprint.cli import app as cli_app
from faceprint.gallery import enrol_images, open_gallery
from faceprint.liveness import LivenessPolicy, LivenessUnavailable
from faceprint.pipeline import Pipeline, PipelineConfig
from faceprint.scale.bulk import Analysed, analyse
from faceprint.service.app import create_app
from faceprint.service.settings import Settings, SettingsError
from tests.conftest import DATA
from tests.test_service_ui import free_port, stop_server, wait_until_ready

NUAA = DATA / "spoof" / "nuaa"
LIVE = sorted((NUAA / "live" / "0001").iterdir())[:3]
PRINT = sorted((NUAA / "print" / "0001").iterdir())[:2]
LIVE_OTHER = sorted((NUAA / "live" / "0002").iterdir())[:1]
INSTALL = "faceprint models install faceplugin"
#: Cosine threshold for identify/verify (the shipped calibration may not exist yet; NUAA frames of one
#: session score far above it).
THRESHOLD = 0.9
KEY = secrets.token_hex(32)
SERVE = [sys.executable, "-c", "from faceprint.cli import app; app()", "serve", "--host", "127.0.0.1"]


@pytest.fixture(scope="module")
def live_pipeline(faceplugin_store: Path, cache_dir: Path) -> Pipeline:
    return Pipeline(PipelineConfig(detector="hog", model_dir=faceplugin_store))


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("empty-model-store")


# -- library --------------------------------------------------------------------------------------------------
def test_library_live_frames_pass_and_prints_are_attacks(live_pipeline: Pipeline) -> None:
    for path in LIVE:
        (r,) = live_pipeline.liveness(path)
        assert r.live and r.score > 0.9, (path, r)
    for path in PRINT:
        (r,) = live_pipeline.liveness(path)
        assert not r.live and r.score < 0.1, (path, r)


def test_library_enrolment_rejects_an_attack_with_the_reason(live_pipeline: Pipeline, tmp_path: Path) -> None:
    with open_gallery(tmp_path / "g", create=True) as g:
        report = enrol_images(g, live_pipeline, "ada", [LIVE[0], PRINT[0]], liveness=LivenessPolicy("require"))
        live, attack = report.outcomes
        assert live.accepted and live.liveness is not None and live.liveness.live
        assert not attack.accepted and attack.template_id is None
        (reason,) = attack.reasons
        assert reason.startswith("liveness: judged an attack (P(live) 0.00 < "), reason
        assert attack.to_dict()["liveness"]["live"] is False
        flagged = enrol_images(g, live_pipeline, "ada", [PRINT[1]], liveness=LivenessPolicy("flag"))
        (o,) = flagged.outcomes
        assert o.accepted and o.liveness is not None and not o.liveness.live  # flag reports, never refuses
        (plain,) = enrol_images(g, live_pipeline, "bob", [LIVE_OTHER[0]]).outcomes
        assert plain.accepted and "liveness" not in plain.to_dict()  # off: not checked, not reported


def test_bulk_enrolment_applies_the_same_gate(live_pipeline: Pipeline) -> None:
    """Bulk enrolment's workers run the same per-photo rules (``enrol._one_image``), liveness included."""
    require = LivenessPolicy("require")
    rejected = analyse(live_pipeline, str(PRINT[0]), "print.jpg", liveness=require)
    assert not isinstance(rejected, Analysed) and rejected.reasons[0].startswith("liveness: judged an attack")
    accepted = analyse(live_pipeline, str(LIVE[0]), "live.jpg", liveness=require)
    assert isinstance(accepted, Analysed) and accepted.liveness is not None and accepted.liveness.live


def test_library_without_the_model_names_the_install_command(bare_store: Path, cache_dir: Path) -> None:
    pipeline = Pipeline(PipelineConfig(detector="hog", model_dir=bare_store))
    with pytest.raises(LivenessUnavailable, match=INSTALL):
        pipeline.liveness(LIVE[0])


# -- CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_env(faceplugin_store: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, str]:
    home = tmp_path_factory.mktemp("cli-home")
    return {"FACEPRINT_MODEL_DIR": str(faceplugin_store), "FACEPRINT_HOME": str(home), "FACEPRINT_KEY": KEY}


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_liveness_images_json_and_text(cli_env: dict[str, str], tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    code, out, err = cli(cli_env, "liveness", str(LIVE[0]), str(PRINT[0]), "--json", "--detector", "hog")
    assert code == 0, err
    live, attack = json.loads(out)
    (face,) = live["faces"]
    assert face["live"] is True and set(face) == {"box", "live", "score", "threshold", "apcer", "bpcer", "model"}
    assert attack["faces"][0]["live"] is False
    code, out, err = cli(cli_env, "liveness", str(PRINT[0]), "--threshold", "0.0", "--detector", "hog")
    assert code == 0 and "live: P(live)" in out  # an explicit threshold of 0 passes everything
    code, out, err = cli(cli_env, "liveness", str(blank), "--detector", "hog")
    assert code == 2 and str(blank) in err  # undecodable: exit 2 naming the file
    code, _, err = cli(cli_env, "liveness", str(LIVE[0]), "--threshold", "0.5", "--apcer", "0.01")
    assert code == 2 and "not both" in err


def test_cli_liveness_frames_folder_and_video(cli_env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = cli(cli_env, "liveness", "--frames", str(NUAA / "print" / "0001"), "--json", "--detector", "hog")
    assert code == 0, err
    result = json.loads(out)
    assert result["live"] is False and result["aggregate"] == "median"
    assert result["usable"] + result["no_face"] == result["frames"] > 1
    code, out, err = cli(cli_env, "liveness", "--frames", str(NUAA / "live" / "0001"), "--detector", "hog")
    assert code == 0 and "live: median P(live)" in out, (out, err)
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video at all")
    code, _, err = cli(cli_env, "liveness", "--frames", str(bad))
    assert code == 2 and str(bad) in err


def test_cli_liveness_without_the_model_exits_2_naming_the_install(cli_env: dict[str, str], bare_store: Path) -> None:
    code, _, err = cli({**cli_env, "FACEPRINT_MODEL_DIR": str(bare_store)}, "liveness", str(LIVE[0]))
    assert code == 2 and INSTALL in err
    gallery = str(Path(cli_env["FACEPRINT_HOME"]) / "nomodel")
    env = {**cli_env, "FACEPRINT_MODEL_DIR": str(bare_store)}
    code, _, err = cli(env, "enroll", "--subject", "x", str(LIVE[0]), "--gallery", gallery, "--liveness", "require")
    assert code == 2 and INSTALL in err


def test_cli_verify_identify_enroll_policies(cli_env: dict[str, str], tmp_path: Path) -> None:
    hog = ("--detector", "hog")
    g = ("--gallery", str(tmp_path / "g"))
    # enroll: require rejects the attack with the reason, keeps the live photo
    code, out, err = cli(cli_env, "enroll", "--subject", "ada", str(LIVE[0]), str(PRINT[0]), *g, *hog,
                         "--liveness", "require", "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    live, attack = report["images"]
    assert live["accepted"] and live["liveness"]["live"] is True
    assert not attack["accepted"] and attack["reasons"][0].startswith("liveness: judged an attack (P(live) 0.00 < ")
    code, _, err = cli(cli_env, "enroll", "--subject", "ada", str(PRINT[1]), *g, *hog, "--liveness", "require")
    assert code == 2 and "liveness: judged an attack" in err  # nothing enrolled: exit 2 like a blurred photo
    code, _, err = cli(cli_env, "enroll", "--subject", "ada", str(LIVE[1]), *g, *hog, "--liveness", "sometimes")
    assert code == 2 and "--liveness must be one of" in err
    # identify: off (no liveness key), flag (liveness, still named), require (the attack is named nobody)
    base = ("identify", str(PRINT[1]), *g, *hog, "--threshold", str(THRESHOLD), "--json")
    code, out, err = cli(cli_env, *base)
    assert code == 0, err
    (face,) = json.loads(out)["faces"]
    assert face["match"] == "ada" and "liveness" not in face
    code, out, _ = cli(cli_env, *base, "--liveness", "flag")
    (face,) = json.loads(out)["faces"]
    assert face["match"] == "ada" and face["liveness"]["live"] is False
    code, out, _ = cli(cli_env, *base, "--liveness", "require")
    (face,) = json.loads(out)["faces"]
    assert code == 0 and face["match"] is None and face["candidates"] == []
    assert face["refused"].startswith("liveness: judged an attack") and face["liveness"]["live"] is False
    code, out, _ = cli(cli_env, "identify", str(LIVE[2]), *g, *hog, "--threshold", str(THRESHOLD), "--json",
                       "--liveness", "require")  # fmt: skip
    (face,) = json.loads(out)["faces"]
    assert face["match"] == "ada" and face["liveness"]["live"] is True
    # verify: require answers "not live" for an attack (exit 0: a decision), a live pair is compared
    vbase = ("verify", *hog, "--threshold", str(THRESHOLD), "--json")
    code, out, err = cli(cli_env, *vbase, str(LIVE[0]), str(PRINT[0]), "--liveness", "require")
    data = json.loads(out)
    assert code == 0 and data["decision"] == "not_live" and data["same_person"] is False and "score" not in data
    assert data["reasons"][0].startswith("image_b: liveness: judged an attack")
    code, out, _ = cli(cli_env, *vbase, str(LIVE[0]), str(LIVE[1]), "--liveness", "require")
    data = json.loads(out)
    assert data["same_person"] is True and data["liveness"]["image_a"]["live"] is True
    code, out, _ = cli(cli_env, *vbase, str(LIVE[0]), str(PRINT[0]), "--liveness", "flag")
    data = json.loads(out)
    assert "same_person" in data and data["liveness"]["image_b"]["live"] is False
    code, out, _ = cli(cli_env, *vbase, str(LIVE[0]), str(PRINT[0]))
    assert "liveness" not in json.loads(out)


# -- HTTP -----------------------------------------------------------------------------------------------------
def make_app(home: Path, pipeline: Pipeline, **settings: object) -> TestClient:
    return TestClient(
        create_app(
            Settings(home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", detector="hog",
                     batch_max_wait_ms=2, **settings),  # type: ignore[arg-type]
            pipeline=pipeline,
        ),
        raise_server_exceptions=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def service(live_pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEPRINT_KEY", KEY)
    with make_app(tmp_path_factory.mktemp("svc"), live_pipeline) as client:
        _, text = client.app.state.keys.create(["admin"], "liveness-tests")  # type: ignore[attr-defined]
        yield client, {"Authorization": f"Bearer {text}"}
    mp.undo()


def upload(**paths: Path) -> dict[str, tuple[str, bytes, str]]:
    return {field: (p.name, p.read_bytes(), "image/jpeg") for field, p in paths.items()}


def test_http_liveness_route(service) -> None:
    client, h = service
    r = client.post("/v1/liveness", files=upload(image=LIVE[0]), headers=h)
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["live"] is True and r.json()["model"] == face["model"]
    r = client.post("/v1/liveness", files=upload(image=PRINT[0]), headers=h)
    assert r.json()["faces"][0]["live"] is False
    r = client.post("/v1/liveness", files=upload(image=PRINT[0]), data={"threshold": "0"}, headers=h)
    assert r.json()["faces"][0]["live"] is True and r.json()["faces"][0]["threshold"] == 0
    bad = client.post("/v1/liveness", files={"image": ("x.jpg", b"not an image", "image/jpeg")}, headers=h)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_image"
    both = client.post(
        "/v1/liveness", files=upload(image=LIVE[0]), data={"threshold": "0.5", "apcer": "0.01"}, headers=h
    )
    assert both.status_code == 422 and both.json()["code"] == "validation_error"
    assert client.post("/v1/liveness", files=upload(image=LIVE[0])).status_code == 401
    metrics = client.get("/metrics", headers=h).text
    assert 'faceprint_liveness_decisions_total{action="liveness",decision="attack"}' in metrics
    audit = client.get("/v1/audit", params={"action": "liveness", "limit": 1}, headers=h).json()
    entry = audit["items"][0]
    assert entry["decision"] == "1/1 live" and entry["scores"]


def test_http_enrol_identify_verify_policies(service) -> None:
    client, h = service
    sid = client.post("/v1/subjects", json={"name": "ada"}, headers=h).json()["id"]
    # enrolment: require rejects the attack photo with the reason, accepts the live one
    r = client.post(
        f"/v1/subjects/{sid}/faces",
        files=[("image", (p.name, p.read_bytes(), "image/jpeg")) for p in (LIVE[0], PRINT[0])],
        data={"liveness": "require"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    live, attack = r.json()["images"]
    assert live["accepted"] and live["liveness"]["live"] is True
    assert not attack["accepted"] and attack["reasons"][0].startswith("liveness: judged an attack (P(live) 0.00 < ")
    r = client.post(f"/v1/subjects/{sid}/faces", files=upload(image=PRINT[1]), data={"liveness": "require"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "no_usable_face"
    r = client.post(f"/v1/subjects/{sid}/faces", files=upload(image=LIVE[1]), data={"liveness": "maybe"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    # identify
    ident = {"threshold": str(THRESHOLD)}
    (face,) = client.post("/v1/identify", files=upload(image=PRINT[1]), data=ident, headers=h).json()["faces"]
    assert face["match"] == "ada" and "liveness" not in face  # off: the attack is named
    r = client.post("/v1/identify", files=upload(image=PRINT[1]), data={**ident, "liveness": "flag"}, headers=h)
    (face,) = r.json()["faces"]
    assert face["match"] == "ada" and face["liveness"]["live"] is False
    r = client.post("/v1/identify", files=upload(image=PRINT[1]), data={**ident, "liveness": "require"}, headers=h)
    (face,) = r.json()["faces"]
    assert r.status_code == 200 and face["match"] is None and face["refused"].startswith("liveness: judged an attack")
    r = client.post("/v1/identify", files=upload(image=LIVE[2]), data={**ident, "liveness": "require"}, headers=h)
    (face,) = r.json()["faces"]
    assert face["match"] == "ada" and face["liveness"]["live"] is True
    # verify
    r = client.post("/v1/verify", files=upload(image_a=LIVE[0], image_b=PRINT[0]),
                    data={**ident, "liveness": "require"}, headers=h)  # fmt: skip
    data = r.json()
    assert r.status_code == 200 and data["decision"] == "not_live" and data["same_person"] is False
    assert "score" not in data and data["liveness"]["image_b"]["live"] is False
    r = client.post("/v1/verify", files=upload(image_a=LIVE[0], image_b=LIVE[1]),
                    data={**ident, "liveness": "require"}, headers=h)  # fmt: skip
    assert r.json()["same_person"] is True and r.json()["liveness"]["image_a"]["live"] is True
    r = client.post("/v1/verify", json={"image_a": b64(LIVE[0]), "image_b": b64(PRINT[0]), "threshold": THRESHOLD,
                                        "liveness": "flag"}, headers=h)  # fmt: skip
    assert "same_person" in r.json() and r.json()["liveness"]["image_b"]["live"] is False
    # the audit log holds the liveness decision and score of verify, identify and enrolment
    entries = client.get("/v1/audit", params={"limit": 20}, headers=h).json()
    entries = entries["items"]
    not_live = next(e for e in entries if e["action"] == "verify" and e["decision"] == "not_live")
    assert not_live["detail"]["liveness"]["image_b"]["live"] is False
    assert any(e["action"] == "identify" and "liveness" in e["detail"] for e in entries)
    assert any(e["action"] == "enrol" and "liveness" in e["detail"] for e in entries)
    assert "image_a" not in json.dumps([e.get("scores") for e in entries])


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_http_server_default_and_no_model(
    live_pipeline: Pipeline, bare_store: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("FACEPRINT_KEY", KEY)
    with pytest.raises(SettingsError, match="FACEPRINT_LIVENESS"):
        Settings.from_env({"FACEPRINT_LIVENESS": "sometimes", "FACEPRINT_HOME": str(tmp_path)})
    assert Settings.from_env({"FACEPRINT_LIVENESS": "require", "FACEPRINT_HOME": str(tmp_path)}).liveness == "require"
    bare = Pipeline(PipelineConfig(detector="hog", model_dir=bare_store))
    with make_app(tmp_path / "a", bare, auth=False, liveness="require") as client:
        for url, files in (
            ("/v1/liveness", upload(image=LIVE[0])),
            ("/v1/identify", upload(image=LIVE[0])),
            ("/v1/verify", upload(image_a=LIVE[0], image_b=LIVE[1])),
        ):
            r = client.post(url, files=files, data={"threshold": "0.9"} if url != "/v1/liveness" else None)
            assert r.status_code == 503 and r.json()["code"] == "liveness_unavailable", (url, r.text)
            assert INSTALL in r.json()["detail"]
        off = client.post("/v1/identify", files=upload(image=LIVE[0]), data={"threshold": "0.9", "liveness": "off"})
        assert off.status_code != 503  # the request's own mode wins over the server's (no collection yet: 404)


def test_serve_liveness_option_sets_the_servers_policy(bare_store: Path, tmp_path: Path, cache_dir: Path) -> None:
    """`faceprint serve --liveness require` in a real server: a request that names no policy is checked, so with
    no liveness model installed it is refused 503 naming the install command; a wrong mode exits 2 at once."""
    env = {**os.environ, "FACEPRINT_HOME": str(tmp_path), "FACEPRINT_KEY": KEY, "FACEPRINT_MODEL_DIR": str(bare_store),
           "FACEPRINT_CACHE_DIR": str(cache_dir)}  # fmt: skip
    wrong = subprocess.run([*SERVE, "--liveness", "sometimes"], env=env, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--liveness" in wrong.stderr and "'sometimes'" in wrong.stderr, wrong.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*SERVE, "--liveness", "require", "--insecure-no-auth", "--port", str(port)], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_ready(proc, url, log_path, 180)
            r = httpx.post(f"{url}/v1/identify", files=upload(image=LIVE[0]), data={"threshold": "0.9"}, timeout=60)
            assert r.status_code == 503 and r.json()["code"] == "liveness_unavailable", r.text
            assert INSTALL in r.json()["detail"]
        finally:
            stop_server(proc)
