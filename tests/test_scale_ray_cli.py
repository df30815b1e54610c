"""``faceprint serve --ray`` as a user runs it: a subprocess that starts its own local Ray (2 CPUs through
FACEPRINT_RAY_NUM_CPUS), serves the API and UI on loopback, answers a real detection, and on SIGTERM
deletes the application and shuts its Ray instance down — nothing of its process group is left behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import GROUPS

pytest.importorskip("ray", reason="Ray Serve tests need the [ray] extra: pip install 'ray[serve]'")

CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_ray_cli_serves_and_shuts_down_cleanly(tmp_path: Path, cache_dir: Path) -> None:
    env = {
        **os.environ,
        "FACEPRINT_HOME": str(tmp_path),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_DETECTOR": "hog",
        "FACEPRINT_RAY_NUM_CPUS": "2",
        "FACEPRINT_RAY_EMBEDDER_NUM_CPUS": "0.5",
        "FACEPRINT_RAY_INGRESS_NUM_CPUS": "0.5",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    key = subprocess.run(
        [*CLI, "keys", "create", "--scope", "recognize"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "serve", "--ray", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: Ray's processes too, so we can check they are gone
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        r = httpx.post(
            f"{url}/v1/detect",
            headers={"Authorization": f"Bearer {key}"},
            files={"image": (GROUPS / "selfie-many-people.jpg").read_bytes()},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["faces"]) >= 2
        assert "text/html" in httpx.get(url + "/", timeout=30).headers["content-type"]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        text = (tmp_path / "serve.log").read_text()
        # The application must be deleted gracefully. Ray's C++ failure-signal handler sometimes also sees the
        # SIGTERM and aborts the process after that graceful shutdown has finished (seen once in ~10 runs);
        # that abort is tolerated, a shutdown that never deleted the application is not.
        assert code == 0 or (code == -signal.SIGABRT and "Deleting app" in text), text[-3000:]
        deadline = time.monotonic() + 90  # Ray's raylet and GCS take a while to exit on a busy machine
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_alive(proc.pid), "Ray processes outlived `faceprint serve --ray`"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
