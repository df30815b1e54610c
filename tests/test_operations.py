"""Drift, shadow and canary models against a real `faceprint serve` (issue 17).

One server process with the real default model (dlib-resnet-v1) and the faceplugin pack: collection
``default`` enrolled with dlib (chips kept), its copy ``default@faceplugin-mbf`` made by `faceprint canary
copy` (copied, then re-embedded with faceplugin-mbf by the migration code), served with
``--shadow faceplugin-mbf --shadow-fraction 1`` and drift windows of 20 faces. Camera ``cam1`` first sends
real photos as they are (the baseline), then "a new camera": the same photos downscaled and blurred. The
drift figures must show in /metrics and in `faceprint drift`; the shadow's agreement, score shifts and
latency in /metrics and `faceprint canary report`; `canary promote`/`rollback` must switch the model that
answers in one audited step, and every decision's audit row must name its model's sha256.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage
from PIL import ImageFilter
from prometheus_client.parser import text_string_to_metric_families

from faceprint.models.registry import ModelRegistry
from faceprint.models.store import ModelStore
from tests.conftest import IDENTITIES
from tests.test_service_ui import browser, free_port, open_ui, stop_server, wait_until_ready  # noqa: F401 (fixture)

ENROLLED = ("person01", "person02", "person05", "person08")  # each one's first photo passes enrolment
PHOTOS = sorted(IDENTITIES.glob("person0[1-8]/*.jpg"))[:24]
SHADOW = "faceplugin-mbf"
CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]


def new_camera(path: Path) -> bytes:
    """The photo as a worse camera sends it: half the size and out of focus."""
    img = PILImage.open(path).convert("RGB")
    img = img.resize((img.width // 2, img.height // 2), PILImage.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(2)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, faceplugin_store: Path) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("ops-home")
    people = home / "people"
    for person in ENROLLED:
        (people / person).mkdir(parents=True)
        first = sorted((IDENTITIES / person).glob("*.jpg"))[0]
        (people / person / first.name).symlink_to(first)
    env = {
        **os.environ,
        "FACEPRINT_HOME": str(home),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_CACHE_DIR": str(cache_dir),
        "FACEPRINT_MODEL_DIR": str(faceplugin_store),
        "FACEPRINT_DRIFT_WINDOW": "20",
    }
    cli(env, "enroll", "--from-folders", str(people), "--keep-chips")
    # The shadow copy: the collection copied and re-embedded from its kept chips (`faceprint migrate`).
    made = json.loads(cli(env, "canary", "copy", "default", "--model", SHADOW, "--json").stdout)
    assert made["copy"]["target"] == f"default@{SHADOW}" and made["copy"]["subjects"] == len(ENROLLED)
    assert made["migration"]["to"] == SHADOW and made["migration"]["templates"] == len(ENROLLED)
    key = cli(env, "keys", "create", "--scope", "admin", "--name", "ops-test").stdout.strip()
    port = free_port()
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "serve", "--port", str(port), "--shadow", SHADOW, "--shadow-fraction", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, home / "server.log", 180)
        yield {"url": url, "env": env, "home": home, "proc": proc, "auth": {"Authorization": f"Bearer {key}"}}
    finally:
        stop_server(proc)
        log.close()


def identify(ops: dict, data: bytes, **headers: str) -> dict:
    r = httpx.post(
        f"{ops['url']}/v1/identify",
        files={"image": ("photo.jpg", data, "image/jpeg")},
        headers={**ops["auth"], **headers},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()


def metrics(ops: dict) -> str:
    return httpx.get(f"{ops['url']}/metrics", headers=ops["auth"], timeout=60).text


def test_drift_shadow_and_canary(ops: dict, browser) -> None:  # noqa: F811
    sha = {m: ModelRegistry(ModelStore(Path(ops["env"]["FACEPRINT_MODEL_DIR"]))).get(m).sha256 for m in (SHADOW,)}
    sha["dlib-resnet-v1"] = ModelRegistry().get("dlib-resnet-v1").sha256
    # -- camera 1: the baseline, then the new camera -------------------------------------------------------
    for photo in PHOTOS:
        identify(ops, photo.read_bytes(), **{"X-Faceprint-Source": "cam1"})
    for photo in PHOTOS:
        answer = identify(ops, new_camera(photo), **{"X-Faceprint-Source": "cam1"})
        assert answer["model"] == "dlib-resnet-v1"  # the shadow never answers
    r = httpx.post(
        f"{ops['url']}/v1/identify",
        files={"image": ("p.jpg", PHOTOS[0].read_bytes(), "image/jpeg")},
        data={"source": "door", "liveness": "flag"},
        headers=ops["auth"],
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["faces"][0]["liveness"]["score"] > 0
    # A source name that cannot be a metric label is refused, naming the header.
    bad = httpx.post(
        f"{ops['url']}/v1/identify",
        files={"image": ("p.jpg", PHOTOS[0].read_bytes(), "image/jpeg")},
        headers={**ops["auth"], "X-Faceprint-Source": "cam 1/2"},
    )
    assert bad.status_code == 422 and "X-Faceprint-Source" in bad.json()["detail"]

    text = metrics(ops)
    psi = {s["feature"]: v for s, v in samples(text, "faceprint_drift_psi") if s["source"] == "cam1"}
    pvalue = {s["feature"]: v for s, v in samples(text, "faceprint_drift_ks_pvalue") if s["source"] == "cam1"}
    assert {"face_size", "quality", "sharpness", "best_score"} <= set(psi)
    assert psi["face_size"] > 1.0 and pvalue["face_size"] < 0.01  # faces half the size
    assert psi["sharpness"] > 1.0 and pvalue["sharpness"] < 0.01  # and blurred
    print(f"\ndrift PSI cam1: { {k: round(v, 2) for k, v in psi.items()} }")
    live = httpx.get(f"{ops['url']}/v1/drift", params={"source": "cam1"}, headers=ops["auth"], timeout=60).json()
    (cam1,) = live["items"]
    assert live["window"] == 20 and cam1["summary"].endswith("a camera moved or lost focus")

    # -- the shadow: every identify request (fraction 1), off the answer's path ------------------------------
    requests = 2 * len(PHOTOS) + 1  # and the door request
    deadline = time.monotonic() + 120
    while True:
        text = metrics(ops)
        done = sum(v for s, v in samples(text, "faceprint_shadow_requests_total"))
        if done >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done == requests
    labels = {"collection": "default", "model": "dlib-resnet-v1", "shadow_model": SHADOW}
    decisions = {s["agreement"]: v for s, v in samples(text, "faceprint_shadow_decisions_total")}
    assert sum(decisions.values()) == requests and decisions.get("agree", 0) >= requests / 2
    latency = [v for s, v in samples(text, "faceprint_shadow_duration_seconds_count") if s == labels]
    assert latency == [requests]
    shifts = [v for s, v in samples(text, "faceprint_shadow_score_shift_count") if s == labels]
    assert shifts and shifts[0] > 0
    info = {(s["model"], s["role"], s["sha256"]) for s, v in samples(text, "faceprint_model_info") if v == 1}
    assert info == {("dlib-resnet-v1", "serving", sha["dlib-resnet-v1"]), (SHADOW, "shadow", sha[SHADOW])}

    report = json.loads(cli(ops["env"], "canary", "report", "--json").stdout)
    (row,) = report["shadow"]
    assert row["requests"] == requests and row["model"] == "dlib-resnet-v1" and row["shadow_model"] == SHADOW
    assert row["agreement"] == pytest.approx(decisions.get("agree", 0) / requests, abs=1e-3)
    assert row["shadow_seconds_p50"] > 0
    print(f"shadow: {json.dumps(row)}")
    text_report = cli(ops["env"], "canary", "report").stdout
    assert f"| default | dlib-resnet-v1 | {SHADOW} | {requests} |" in text_report

    # Every decision is traced to its model version.
    audit = json.loads(cli(ops["env"], "audit", "--action", "identify", "--limit", "1", "--json").stdout)
    assert audit[0]["model_id"] == "dlib-resnet-v1" and audit[0]["model_sha256"] == sha["dlib-resnet-v1"]
    shown = cli(ops["env"], "audit", "--action", "identify", "--limit", "1").stdout
    assert f"model=dlib-resnet-v1@{sha['dlib-resnet-v1'][:12]}" in shown

    # -- promote, then roll back: one step each, audited with both versions ----------------------------------
    promoted = json.loads(cli(ops["env"], "canary", "promote", "default", "--model", SHADOW, "--json").stdout)
    assert promoted["action"] == "canary.promote" and promoted["model_sha256"] == sha[SHADOW]
    assert promoted["detail"]["from_sha256"] == sha["dlib-resnet-v1"] and promoted["detail"]["to_model"] == SHADOW
    time.sleep(1.2)  # the service re-reads the serving table every second
    answer = identify(ops, PHOTOS[0].read_bytes())
    assert answer["model"] == SHADOW and answer["faces"][0]["match"] == PHOTOS[0].parent.name
    audit = json.loads(cli(ops["env"], "audit", "--action", "identify", "--limit", "1", "--json").stdout)
    assert audit[0]["model_sha256"] == sha[SHADOW]
    same = httpx.post(
        f"{ops['url']}/v1/verify",
        files={"image_a": ("a.jpg", PHOTOS[0].read_bytes()), "image_b": ("b.jpg", PHOTOS[1].read_bytes())},
        data={"collection": "default"},
        headers=ops["auth"],
        timeout=120,
    ).json()
    assert same["model"] == SHADOW  # verify against a collection follows the promotion too
    text = metrics(ops)
    info = {(s["model"], s["role"]) for s, v in samples(text, "faceprint_model_info") if v == 1}
    assert info == {(SHADOW, "serving"), ("dlib-resnet-v1", "shadow")}  # the old model now shadows the new
    rolled = json.loads(cli(ops["env"], "canary", "rollback", "default", "--json").stdout)
    assert rolled["action"] == "canary.rollback" and rolled["detail"]["to_model"] == "dlib-resnet-v1"
    time.sleep(1.2)
    assert identify(ops, PHOTOS[0].read_bytes())["model"] == "dlib-resnet-v1"
    refused = subprocess.run([*CLI, "canary", "rollback", "default"], env=ops["env"], capture_output=True, text=True)
    assert refused.returncode == 2 and "nothing to roll back" in refused.stderr
    no_copy = [*CLI, "canary", "promote", "default", "--model", "dlib-other"]
    refused = subprocess.run(no_copy, env=ops["env"], capture_output=True, text=True)
    assert refused.returncode == 2 and "has no copy on dlib-other ('default@dlib-other')" in refused.stderr

    # -- the web UI's Drift tab shows GET /v1/drift: camera 1's sentence and its drifted features --------------
    page, errors = open_ui(browser, ops["url"], ops["auth"]["Authorization"].removeprefix("Bearer "))
    page.click("nav button[data-tab=drift]")
    page.wait_for_selector("#drift-list[data-done='1'] .drift", timeout=30_000)
    ui_cam1 = page.locator("#drift-list .drift", has_text="default · cam1")
    assert "a camera moved or lost focus" in ui_cam1.locator(".drift-summary").inner_text()
    drifted = ui_cam1.locator("tr.unknown td:first-child").all_inner_texts()
    assert {"face_size", "sharpness"} <= set(drifted), drifted
    assert page.inner_text("#error") == "" and not errors, errors
    page.close()

    # -- the drift report, from the windows the server saved when it stopped ---------------------------------
    stop_server(ops["proc"])
    out = cli(ops["env"], "drift", "--source", "cam1").stdout
    assert "## collection default, source cam1" in out
    assert "smaller" in out and "sharpness down" in out and "a camera moved or lost focus" in out
    assert "base #" in out and "now =" in out  # the histograms
    print(out)
    assert "not enough data to compare" in cli(ops["env"], "drift", "--source", "cam1", "--since", "0s").stdout
    data = json.loads(cli(ops["env"], "drift", "--json", "--since", "1h").stdout)
    # The `source` form field names a source too; a checked face's P(live) is one of the features kept.
    kept = json.loads((ops["home"] / "drift.json").read_text())["series"]
    door = {r["feature"]: len(r["baseline"]) for r in kept if r["source"] == "door"}
    assert door["liveness"] == 1 and door["face_size"] == 1
    cam1 = next(d for d in data if d["source"] == "cam1")
    size = next(f for f in cam1["features"] if f["feature"] == "face_size")
    assert size["change"] == pytest.approx(-0.5, abs=0.1) and size["drifted"]
