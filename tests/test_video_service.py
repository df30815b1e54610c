"""Video over HTTP against a real `faceprint serve` on loopback, real models, the real clip (docs/video.md):
upload jobs (`/v1/videos`), camera streams fed by a real FFmpeg over RTSP (`/v1/streams`, Server-Sent Events, a
webhook that fails once, a stream killed and restarted mid-way), the audit log and the metrics, and the web UI's
Videos tab in a real headless Chromium.

RTSP on loopback: FFmpeg has no standalone RTSP server, so the service is the server side. The stream is
registered with ``listen: true`` (FFmpeg's RTSP demuxer in listen mode, inside the service) and the test pushes
the clip to it with ``ffmpeg -re -i clip.mp4 -c copy -f rtsp rtsp://127.0.0.1:PORT/live``, as an encoder or a
camera configured to push would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from faceprint.gallery import enrol_images, open_gallery
from faceprint.service.store import ServiceStore
from faceprint.service.videos import StreamRegistration, StreamRegistrations
from tests.test_service_ui import browser, free_port, open_ui, stop_server, wait_until_ready  # noqa: F401 (fixture)
from tests.test_video import CLIP, FFMPEG, REFERENCES, Pusher, _centre

CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]
THRESHOLD = "0.9102"  # the shipped dlib table's FMR 1e-2, the rule of tests/test_video.py (Obama ~0.920 there)
MAX_VIDEO_BYTES = 2_000_000

pytestmark = pytest.mark.skipif(not CLIP.is_file(), reason="needs ../shared/data/video")


class Serve:
    """A real `faceprint serve` subprocess on one home and port, which a test can stop and start again (its
    output is appended to ``home/server.log``)."""

    def __init__(self, home: Path, env: dict[str, str], key: str) -> None:
        self.home, self.env, self.key = home, env, key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with (self.home / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port)], env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until_ready(self.proc, self.url, self.home / "server.log", 180)

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, pipeline) -> Iterator[Serve]:
    """`faceprint serve` (default dlib profile) with the three references enrolled and an admin key."""
    home = tmp_path_factory.mktemp("video-home")
    (home / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(home / "tmp"),  # the server's own temporary folder: the tests look for leftovers in it
        "FACEPRINT_HOME": str(home),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_CACHE_DIR": str(cache_dir),
        "FACEPRINT_MAX_VIDEO_BYTES": str(MAX_VIDEO_BYTES),
        "FACEPRINT_MAX_VIDEO_JOBS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEPRINT_KEY", env["FACEPRINT_KEY"])
        with open_gallery(home / "gallery") as gallery:
            for name, folder in REFERENCES.items():
                assert enrol_images(gallery, pipeline, name, sorted(folder.iterdir())).accepted, name
    made = subprocess.run(
        [*CLI, "keys", "create", "--scope", "admin", "--name", "video-test"], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    server = Serve(home, env, made.stdout.strip())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(serve: Serve) -> tuple[str, str, Path]:
    """The server's URL, an admin key and its home."""
    return serve.url, serve.key, serve.home


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(url: str, key: str, data: bytes, name: str = "clip.mp4", kind: str = "video/mp4", **params: str):
    return httpx.post(
        f"{url}/v1/videos", files={"video": (name, data, kind)}, data=params, headers=_auth(key), timeout=60
    )


def _wait_job(url: str, key: str, job_id: str, seconds: float = 300) -> tuple[dict, list[float]]:
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/videos/{job_id}", headers=_auth(key), timeout=10).json()
        seen.append(job["progress"])
        if job["status"] in ("done", "failed"):
            return job, seen
        time.sleep(0.3)
    pytest.fail(f"job {job_id} not finished in {seconds} s")


def _named(tracks: list[dict], ends: dict[int, dict]) -> dict[int, str | None]:
    """Each track's subject checked against who is where in the clip (tests/test_video.py has the map)."""
    for t in tracks:
        x, _ = _centre(ends[t["track_id"]]["box"])
        if t["first_frame"] >= 211:
            expected = {"Barack Obama"} if 320 < x < 380 else {None}
        elif t["first_frame"] >= 82:
            expected = {"Lin-Manuel Miranda"}
        elif t["last_frame"] < 20:
            expected = {"Lin-Manuel Miranda", None} if x > 400 else {"Alex Lacamoire", None}
        else:
            expected = {"Alex Lacamoire", None}
        assert t["subject"] in expected, t
    return {t["track_id"]: t["subject"] for t in tracks}


def test_uploaded_clip_becomes_a_job_with_progress_summary_audit_and_metrics(server) -> None:
    url, key, _ = server
    answer = _upload(url, key, CLIP.read_bytes(), threshold=THRESHOLD, every="3")
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] in ("queued", "running") and job["frame_count"] == 275 and job["width"] == 640
    done, progress = _wait_job(url, key, job["id"])
    assert done["status"] == "done", done["error"]
    assert progress == sorted(progress) and progress[-1] == 1.0  # progress only grows
    tracks = done["summary"]["tracks"]
    ends = {e["track_id"]: e for e in done["events"] if e["type"] == "track_end"}
    named = _named(tracks, ends)
    assert {"Lin-Manuel Miranda", "Barack Obama"} <= set(named.values())
    assert sum(s == "Barack Obama" for s in named.values()) == 1
    assert all(e["evidence_frames"] >= 3 for e in done["events"] if e["type"] == "identity")
    # audit: the upload and the job's end, with the subjects named (ids, never names or images)
    audit = httpx.get(f"{url}/v1/audit", params={"limit": 20}, headers=_auth(key)).json()["items"]
    actions = {a["action"]: a for a in audit}
    assert actions["video.create"]["detail"]["job"] == job["id"]
    end = actions["video.done"]
    assert end["detail"]["job"] == job["id"] and len(end["subject_ids"]) >= 2 and end["threshold"] == float(THRESHOLD)
    assert "clip.mp4" not in json.dumps(audit)  # client file names are never recorded
    metrics = httpx.get(f"{url}/metrics", headers=_auth(key)).text
    assert 'faceprint_video_frames_total{kind="file"} 275.0' in metrics
    assert 'faceprint_video_tracks{kind="file"} 0.0' in metrics
    assert 'faceprint_video_events_total{kind="file",type="identity"}' in metrics
    assert httpx.get(f"{url}/v1/videos/{'0' * 32}", headers=_auth(key)).status_code == 404


def test_bad_uploads_are_clear_4xx(server, tmp_path: Path) -> None:
    url, key, home = server
    data = CLIP.read_bytes()
    fast = tmp_path / "fast.mp4"  # index first ("fast start"): a cut in the data still opens
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(CLIP), "-c", "copy", "-movflags", "+faststart",
                    str(fast)], check=True)  # fmt: skip
    cases = [
        (_upload(url, key, fast.read_bytes()[:300_000], "fastcut.mp4"), 422, "invalid_video", "truncated"),
        (_upload(url, key, b"not a video at all", "notes.mp4"), 422, "invalid_video", "notes.mp4"),
        (_upload(url, key, data[:400_000], "cut.mp4"), 422, "invalid_video", "cut.mp4"),  # moov atom lost
        (_upload(url, key, data, "clip.png", "image/png"), 415, "unsupported_media_type", "video"),
        (_upload(url, key, b"x" * (MAX_VIDEO_BYTES + 1)), 413, "payload_too_large", "FACEPRINT_MAX_VIDEO_BYTES"),
        (_upload(url, key, data, every="0"), 422, "validation_error", "every"),
        (_upload(url, key, data, collection="nobody"), 404, "not_found", "nobody"),
        (httpx.post(f"{url}/v1/videos", json={"video": "AAAA"}, headers=_auth(key)), 415, "unsupported_media_type", ""),
        (httpx.post(f"{url}/v1/videos", files={"clip": ("a.mp4", data)}, headers=_auth(key)), 422, "missing_video", ""),
        (httpx.post(f"{url}/v1/videos", files={"video": ("a.mp4", data)}), 401, "unauthenticated", ""),
    ]
    for response, status, code, named in cases:
        body = response.json()
        assert (response.status_code, body["code"]) == (status, code), body
        assert named in body["detail"], body
    # no temporary file is left behind by a refused upload (and no job is running now)
    assert not list((home / "tmp").glob("faceprint-video-*"))


def test_jobs_are_bounded(server) -> None:
    """FACEPRINT_MAX_VIDEO_JOBS=1: a second upload while one runs is 429 with Retry-After."""
    url, key, _ = server
    first = _upload(url, key, CLIP.read_bytes(), threshold=THRESHOLD)
    assert first.status_code == 202
    second = _upload(url, key, CLIP.read_bytes(), threshold=THRESHOLD)
    assert second.status_code == 429 and second.json()["code"] == "too_many_jobs"
    assert int(second.headers["retry-after"]) >= 1
    done, _ = _wait_job(url, key, first.json()["id"])
    assert done["status"] == "done"


# -- RTSP streams ------------------------------------------------------------------------------------------------
class Hook(BaseHTTPRequestHandler):
    """A webhook receiver that answers 500 to its first POST (so a retry is needed) and 200 afterwards."""

    received: ClassVar[list[dict]] = []
    attempts = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).attempts += 1
        if type(self).attempts == 1:
            self.send_response(500)
        else:
            type(self).received.append(json.loads(body))
            self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _collect_sse(url: str, key: str, out: list[dict], stop: threading.Event) -> None:
    with httpx.stream("GET", url, headers=_auth(key), timeout=httpx.Timeout(10, read=60)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict = {}
        for line in response.iter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                out.append(event)
                done = event["data"].get("type") == "stream_deleted"
                event = {}
                if done or stop.is_set():
                    return


def test_registered_rtsp_stream_names_tracks_over_sse_and_webhook_and_survives_a_restart(server) -> None:
    url, key, _ = server
    port = free_port()
    rtsp = f"rtsp://127.0.0.1:{port}/live"
    Hook.received, Hook.attempts = [], 0
    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook_server.server_address[1]}/events"
    body = {"url": rtsp, "listen": True, "threshold": float(THRESHOLD), "every": 3, "open_timeout_s": 30,
            "name": "stage", "webhook_url": hook_url}  # fmt: skip
    # a key without the admin scope cannot register a stream
    made = httpx.post(f"{url}/v1/streams", json=body, headers={"Authorization": "Bearer fpk_00000000_" + "x" * 30})
    assert made.status_code == 401
    answer = httpx.post(f"{url}/v1/streams", json=body, headers=_auth(key), timeout=30)
    assert answer.status_code == 201, answer.text
    stream_id = answer.json()["id"]
    events: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=_collect_sse, args=(f"{url}/v1/streams/{stream_id}/events", key, events, stop), daemon=True
    )
    reader.start()
    pusher = Pusher(rtsp)
    try:
        # first push: killed mid-way, in Miranda's close-up (frames 82-210 = 2.7-7 s)
        pusher.start()
        deadline = time.monotonic() + 60
        while not any(e["data"].get("subject") == "Lin-Manuel Miranda" and e["data"]["frame"] >= 82
                      for e in events if e["data"]["type"] == "identity"):  # fmt: skip
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
        pusher.kill()
        killed_at = len(events)
        # the service notices, reconnects (listens again); the second push is the whole clip
        pusher.start()
        pusher.wait(60)
        deadline = time.monotonic() + 60
        while not any(e["data"].get("subject") == "Barack Obama" for e in events[killed_at:]):
            assert time.monotonic() < deadline, events[killed_at:]
            time.sleep(0.2)
        time.sleep(3)  # the drop after the end of the push, and the tracks' ends
        state = httpx.get(f"{url}/v1/streams/{stream_id}", headers=_auth(key)).json()
        listed = httpx.get(f"{url}/v1/streams", headers=_auth(key)).json()["streams"]
        metrics = httpx.get(f"{url}/metrics", headers=_auth(key)).text
    finally:
        pusher.kill()
    gone = httpx.delete(f"{url}/v1/streams/{stream_id}", headers=_auth(key))
    assert gone.status_code == 204
    reader.join(30)
    stop.set()
    hook_server.shutdown()

    data = [e["data"] for e in events]
    ids = [e["id"] for e in events if "id" in e]  # every event but the final stream_deleted has an id
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    types = [d["type"] for d in data]
    assert "source_dropped" in types[killed_at - 5 :] and "source_reconnected" in types, types
    assert data[-1]["type"] == "stream_deleted"  # the feed ends when the stream is deleted
    # the second (whole) push: the same named tracks as the file (one Miranda close-up, Obama, Michelle unknown)
    again = data[types.index("source_reconnected") :]
    # (tracks still open when the push ended have no track_end yet: their last event stands for it)
    starts = {d["track_id"]: d for d in again if d["type"] == "track_start"}
    ends = {d["track_id"]: d for d in again if d.get("track_id") in starts and d.get("box") is not None}
    tracks = [
        {"track_id": t, "first_frame": starts[t]["frame"], "last_frame": e["frame"], "subject": e["subject"]}
        for t, e in ends.items()
    ]
    assert len(tracks) >= 6, again
    # frame numbers continue across the reconnect: rebase them on the second push's first frame
    base = again[0]["frame"]
    for t in tracks:
        t["first_frame"] -= base
        t["last_frame"] -= base
    named = _named(tracks, ends)
    assert "Lin-Manuel Miranda" in named.values() and "Barack Obama" in named.values()
    # the stream's state and metrics
    assert state["status"] in ("running", "reconnecting") and state["frames"] > 275 and state["restarts"] >= 0
    assert state["fps"] > 0 and state["lag_s"] >= 0 and any(s["id"] == stream_id for s in listed)
    assert f'faceprint_stream_lag_seconds{{stream="{stream_id}"}}' in metrics
    assert 'faceprint_video_frames_total{kind="stream"}' in metrics
    # the webhook: identity events, delivered despite the first failure (retried)
    hook = state["webhook"]
    assert hook["retries"] >= 1 and hook["delivered"] >= 2 and hook["failed"] == 0, hook
    assert {e["type"] for e in Hook.received} == {"identity"}
    assert "Barack Obama" in {e["subject"] for e in Hook.received}
    # audit: registration, identity decisions, deletion
    audit = httpx.get(f"{url}/v1/audit", params={"limit": 200}, headers=_auth(key)).json()["items"]
    actions = [a["action"] for a in audit]
    assert {"stream.create", "stream.identity", "stream.delete"} <= set(actions)
    assert httpx.get(f"{url}/v1/streams/{stream_id}", headers=_auth(key)).status_code == 404


def test_registered_streams_survive_a_service_restart_and_a_deleted_one_does_not_come_back(serve: Serve) -> None:
    """Registrations are rows of the service database: `faceprint serve` stopped and started again on the same
    home lists the streams with their settings and watches them again (the listen stream's SSE feed names the
    clip's tracks as the file does, its webhook still gets them, its event ids continue above the old ones), a
    stream that cannot be opened is reported without holding start-up back, a deleted one does not come back;
    the stream's password and the webhook's token are never shown nor logged."""
    url, key = serve.url, serve.key
    rtsp = f"rtsp://127.0.0.1:{free_port()}/live"
    password, token = secrets.token_hex(8), secrets.token_hex(8)
    Hook.received, Hook.attempts = [], 0
    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook_server.server_address[1]}/events?token={token}"
    bodies = {
        "stage": {"url": rtsp, "listen": True, "threshold": float(THRESHOLD), "every": 3, "open_timeout_s": 30,
                  "max_lag_s": 30.0, "name": "stage", "webhook_url": hook_url, "webhook_events": ["identity"]},
        "door": {"url": f"rtsp://admin:{password}@127.0.0.1:{free_port()}/cam", "name": "door", "fmr": 0.01,
                 "open_timeout_s": 1},  # nothing listens there: it never opens
        "gone": {"url": "rtsp://127.0.0.1:9/old", "name": "gone"},
    }  # fmt: skip
    ids = {}
    for name, body in bodies.items():
        made = httpx.post(f"{url}/v1/streams", json=body, headers=_auth(key), timeout=30)
        assert made.status_code == 201, made.text
        ids[name] = made.json()["id"]
    assert httpx.delete(f"{url}/v1/streams/{ids['gone']}", headers=_auth(key)).status_code == 204
    before = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", headers=_auth(key)).json()["streams"]}

    serve.stop()
    # while it is stopped: a stream registered when its collection's model was served, which this deployment
    # no longer serves (written as POST /v1/streams writes it)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEPRINT_KEY", serve.env["FACEPRINT_KEY"])
        with open_gallery(serve.home / "gallery") as gallery:
            gallery.ensure_collection("legacy", "retired-model-v0", 128)
    store = ServiceStore(serve.home / "service.sqlite3")
    try:
        StreamRegistrations(store).add(
            StreamRegistration(url="rtsp://127.0.0.1:9/legacy", collection="legacy", id="legacy0", created_at="x")
        )
    finally:
        store.close()
    restarted_at_us = time.time_ns() // 1000
    serve.start()  # ready while "door" cannot be opened: restoring opens nothing itself
    listed = {s["id"]: s for s in httpx.get(f"{url}/v1/streams", headers=_auth(key)).json()["streams"]}
    legacy = listed.pop("legacy0")  # listed with why it is not watched, until deleted
    assert legacy["status"] == "not_started" and "retired-model-v0" in legacy["last_error"], legacy
    refused = httpx.get(f"{url}/v1/streams/legacy0/events", headers=_auth(key))
    assert refused.status_code == 409 and refused.json()["code"] == "stream_not_started"
    assert httpx.delete(f"{url}/v1/streams/legacy0", headers=_auth(key)).status_code == 204
    assert set(listed) == {ids["stage"], ids["door"]}, listed  # "gone" was deleted: its row went with it
    for stream_id, state in listed.items():
        for field in ("name", "url", "listen", "every", "max_lag_s", "collection", "model", "key_id", "created_at"):
            assert state[field] == before[stream_id][field], (field, state)
    stage = listed[ids["stage"]]
    assert stage["webhook"]["url"] == before[ids["stage"]]["webhook"]["url"] and stage["webhook"]["delivered"] == 0
    assert stage["url"] == rtsp and "***" in stage["webhook"]["url"]
    assert listed[ids["door"]]["url"].startswith("rtsp://admin:***@")
    assert httpx.get(f"{url}/v1/streams/{ids['gone']}", headers=_auth(key)).status_code == 404
    events: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=_collect_sse, args=(f"{url}/v1/streams/{ids['stage']}/events", key, events, stop), daemon=True
    )
    reader.start()
    pusher = Pusher(rtsp)
    try:
        pusher.start()  # the restored watcher listens again on the registered port
        deadline = time.monotonic() + 30  # meanwhile, the camera that cannot be opened: reported and retried
        while (door := httpx.get(f"{url}/v1/streams/{ids['door']}", headers=_auth(key)).json())["last_error"] is None:
            assert time.monotonic() < deadline, door
            time.sleep(0.5)
        assert door["status"] in ("starting", "reconnecting") and door["frames"] == 0
        pusher.wait(60)
        deadline = time.monotonic() + 60
        while not any(e["data"].get("subject") == "Barack Obama" for e in events) or not any(
            e["subject"] == "Barack Obama" for e in Hook.received
        ):
            assert time.monotonic() < deadline, (events, Hook.received)
            time.sleep(0.2)
        time.sleep(3)  # the drop after the end of the push, and the tracks' ends
    finally:
        pusher.kill()
    for stream_id in (ids["stage"], ids["door"]):
        assert httpx.delete(f"{url}/v1/streams/{stream_id}", headers=_auth(key)).status_code == 204
    reader.join(30)
    stop.set()
    hook_server.shutdown()

    seqs = [e["id"] for e in events if "id" in e]
    assert seqs == sorted(seqs) and seqs[0] > restarted_at_us  # above any id of the process before
    data = [e["data"] for e in events]
    assert data[-1]["type"] == "stream_deleted"
    starts = {d["track_id"]: d for d in data if d["type"] == "track_start"}
    ends = {d["track_id"]: d for d in data if d.get("track_id") in starts and d.get("box") is not None}
    tracks = [
        {"track_id": t, "first_frame": starts[t]["frame"], "last_frame": e["frame"], "subject": e["subject"]}
        for t, e in ends.items()
    ]
    named = _named(tracks, ends)  # the same named tracks as the file: the map of tests/test_video.py
    assert "Lin-Manuel Miranda" in named.values() and sum(s == "Barack Obama" for s in named.values()) == 1
    assert {e["type"] for e in Hook.received} == {"identity"}
    # the restored stream decides under its registering key (audit), and nothing is left after the deletes
    audit = httpx.get(f"{url}/v1/audit", params={"limit": 200}, headers=_auth(key)).json()["items"]
    decided = [a for a in audit if a["action"] == "stream.identity" and a["detail"]["stream"] == ids["stage"]]
    assert decided and {a["key_id"] for a in decided} == {before[ids["stage"]]["key_id"]}
    assert httpx.get(f"{url}/v1/streams", headers=_auth(key)).json()["streams"] == []
    log = (serve.home / "server.log").read_text()
    assert "restarted" in log and password not in log and token not in log
    assert (serve.home / "service.sqlite3").stat().st_mode & 0o777 == 0o600


def test_stream_registration_errors(server) -> None:
    url, key, _ = server
    for body, code in (
        ({"url": "/etc/passwd"}, "invalid_stream"),
        ({"url": "http://127.0.0.1:9/x", "listen": True}, "invalid_stream"),
        ({"url": "rtsp://127.0.0.1:9/x", "webhook_url": "file:///tmp/x"}, "invalid_webhook"),
        ({"url": "rtsp://127.0.0.1:9/x", "every": 0}, "validation_error"),
    ):
        answer = httpx.post(f"{url}/v1/streams", json=body, headers=_auth(key))
        assert answer.status_code == 422 and answer.json()["code"] == code, answer.text
    missing = httpx.post(f"{url}/v1/streams", json={"url": "rtsp://127.0.0.1:9/x", "collection": "nobody"},
                         headers=_auth(key))  # fmt: skip
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    assert httpx.get(f"{url}/v1/streams/nope/events", headers=_auth(key)).status_code == 404
    assert httpx.delete(f"{url}/v1/streams/nope", headers=_auth(key)).status_code == 404


def test_ui_videos_tab_uploads_shows_progress_and_plays_the_timeline(server, browser, tmp_path: Path) -> None:  # noqa: F811
    """The Videos tab in a real headless Chromium: upload the clip, see the progress bar move, then the clip
    plays above its track timeline (one bar per track, named bars green); clicking a bar seeks to the track."""
    url, key, _ = server
    page, errors = open_ui(browser, url, key, height=1200)
    page.click("nav button[data-tab=videos]")
    page.set_input_files("#videos-file", str(CLIP))
    page.fill("#videos-threshold", THRESHOLD)
    page.click("#videos-run")
    page.locator("#videos-status", has_text="frame").wait_for(timeout=60_000)  # progress while it runs
    page.wait_for_selector("#videos-tracks[data-done='1'] li", timeout=300_000)
    tracks = page.inner_text("#videos-tracks")
    assert "Lin-Manuel Miranda" in tracks and "Barack Obama" in tracks and "unknown" in tracks
    assert page.eval_on_selector("#videos-progress", "p => p.value") == 1
    bars = page.locator("#videos-timeline .bar")
    assert bars.count() == page.locator("#videos-tracks li").count() >= 6
    named = page.locator("#videos-timeline .bar.named")
    assert "Barack Obama" in " ".join(named.all_inner_texts())
    # bars sit where their tracks are: Obama's (frames ~214-274 of 275) starts in the last quarter
    obama = page.locator("#videos-timeline .bar.named", has_text="Barack Obama")
    box, lane = obama.bounding_box(), page.locator("#videos-timeline").bounding_box()
    assert box is not None and lane is not None and (box["x"] - lane["x"]) / lane["width"] > 0.7
    page.screenshot(
        path=str(Path(os.environ.get("FACEPRINT_UI_SCREENSHOTS") or tmp_path) / "videos.png"), full_page=True
    )
    # the local clip plays (H.264 where the browser has the codec) and a bar seeks to its track
    playable = page.eval_on_selector("#videos-player", "v => v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
    if playable:
        page.wait_for_function("() => document.getElementById('videos-player').readyState >= 1", timeout=30_000)
        obama.click()
        page.wait_for_function("() => document.getElementById('videos-player').currentTime >= 7", timeout=30_000)
    assert page.inner_text("#error") == ""
    assert not errors, errors
    page.close()
