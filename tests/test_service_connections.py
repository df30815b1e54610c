"""`faceprint serve` against held connections, the modes of what faceprint creates, and start-up key errors.

Issue #13: idle and half-sent connections were never closed, so ~1,100 of them exhausted a 1,024 open-files
limit and `/healthz` failed; galleries outside FACEPRINT_HOME were created 0755/0644; a wrong gallery key
printed a 66-line traceback. Every server here is a real subprocess on 127.0.0.1.
"""

from __future__ import annotations

import os
import resource
import secrets
import select
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from faceprint.gallery.embedded.gallery import EmbeddedGallery
from faceprint.service.settings import FD_RESERVE, Settings, SettingsError, default_max_connections
from faceprint.service.store import ServiceStore
from faceprint.types import Faceprint
from tests.test_service_ui import free_port, stop_server, wait_until_ready

CLI = [sys.executable, "-c", "from faceprint.cli import app; app()"]
# The same server on uvicorn's h11 protocol, which it uses when httptools is not installed.
CLI_H11 = [
    sys.executable,
    "-c",
    "import faceprint.service.server as s; s.HttpToolsProtocol = None; from faceprint.cli import app; app()",
]
NOFILE = 256  # the server's open-files limit in the connection test
HEADER_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 1.0
HALF_OPEN = b"GET / HTTP/1.1\r\nHost: x\r\n"  # a request head that never ends


def _env(home: Path, cache_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FACEPRINT_HOME": str(home),
        "FACEPRINT_KEY": secrets.token_hex(32),
        "FACEPRINT_DETECTOR": "hog",
        "FACEPRINT_CACHE_DIR": str(cache_dir),
        **extra,
    }


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@contextmanager
def running_server(home: Path, env: dict[str, str], cli: list[str] = CLI) -> Iterator[tuple[str, Path]]:
    """`faceprint serve` with ``env`` and an open-files limit of :data:`NOFILE`; yields its URL and log."""
    port = free_port()
    log_path = home / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_low_nofile,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(proc, url, log_path, 90)
            yield url, log_path
        finally:
            stop_server(proc)


def _connect(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), reading away a 503 it may have sent first."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _healthz(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code
    except httpx.TransportError:
        return None


@pytest.mark.parametrize("cli", [CLI, CLI_H11], ids=["httptools", "h11"])
def test_held_connections_are_closed_and_healthz_keeps_answering(
    cli: list[str], tmp_path: Path, cache_dir: Path
) -> None:
    env = _env(
        tmp_path,
        cache_dir,
        FACEPRINT_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        FACEPRINT_KEEPALIVE_TIMEOUT_S=str(KEEPALIVE_TIMEOUT_S),
    )
    with running_server(tmp_path, env, cli) as (url, log_path):
        port = int(url.rsplit(":", 1)[1])
        # A kept-alive connection that then idles, and one that then starts a second head and stalls.
        kept_idle = _connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        kept_stalled = _connect(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in (kept_idle, kept_stalled):
            assert b" 200 " in sock.recv(65536).split(b"\r\n", 1)[0] + b" "
        kept_stalled.sendall(HALF_OPEN)

        # More half-sent and idle connections than the server has descriptors.
        start = time.monotonic()
        held = [_connect(port, HALF_OPEN if i % 2 else b"") for i in range(NOFILE + 44)]
        opened_s = time.monotonic() - start

        # /healthz answers 200 within a few seconds: by the header timeout at the latest, when the cap's places
        # are freed (before the fix: not until uvicorn's 5-s keep-alive timeout freed this test's two sockets).
        answered_at = None
        while time.monotonic() - start < HEADER_TIMEOUT_S + 2.5:
            if _healthz(url) == 200:
                answered_at = time.monotonic() - start
                break
            time.sleep(0.2)
        assert answered_at is not None, f"/healthz never answered 200:\n{log_path.read_text()[-3000:]}"

        # Every held connection is closed by the server (the refused ones at once, with a 503).
        deadline = start + HEADER_TIMEOUT_S + 5
        open_ = list(held)
        while open_ and time.monotonic() < deadline:
            select.select(open_, [], [], 0.2)
            open_ = [s for s in open_ if not _closed_by_server(s)]
        assert not open_, f"{len(open_)} of {len(held)} held connections still open"
        assert _closed_by_server(kept_idle) or _wait_closed(kept_idle, 2)
        assert _closed_by_server(kept_stalled) or _wait_closed(kept_stalled, 2)
        for sock in [*held, kept_idle, kept_stalled]:
            sock.close()
        assert _healthz(url) == 200

        log = log_path.read_text()
        assert "FACEPRINT_HEADER_TIMEOUT_S" in log and "FACEPRINT_MAX_CONNECTIONS" in log, log[-3000:]
        print(f"held {len(held)} connections (opened in {opened_s:.2f} s); /healthz 200 after {answered_at:.2f} s")


def _wait_closed(sock: socket.socket, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        select.select([sock], [], [], 0.2)
        if _closed_by_server(sock):
            return True
    return False


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_gallery_and_service_store_are_private_whatever_the_umask(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "deep" / "gallery"  # not under FACEPRINT_HOME; its parents are missing too
    service_db = tmp_path / "home" / "svc" / "service.sqlite3"
    vector = np.ones(4, np.float32) / 2
    old = os.umask(0o022)
    try:
        gallery = EmbeddedGallery(outside, key=secrets.token_bytes(32), ann_min_size=1)
        try:
            gallery.ensure_collection("default", "test-model", 4)
            ada = gallery.add_subject("Ada", metadata={"team": "x"}, consent=None)
            gallery.add_templates(ada.id, [Faceprint(vector, "test-model", None, 0.9)])
            gallery.identify([Faceprint(vector, "test-model", None, 0.9)], threshold=0.5)  # builds the index
            gallery.flush_index()  # writes the encrypted snapshot
        finally:
            gallery.close()
        store = ServiceStore(service_db)
        try:
            with store.write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        finally:
            store.close()
    finally:
        os.umask(old)
    created_dirs = [
        tmp_path / "elsewhere",
        tmp_path / "elsewhere" / "deep",
        outside,
        tmp_path / "home",
        service_db.parent,
    ]
    created_files = sorted(p for root in (outside, service_db.parent) for p in root.iterdir() if p.is_file())
    names = {p.name for p in created_files}
    assert {"gallery.sqlite3", "service.sqlite3"} <= names and any(n.endswith(".fpidx") for n in names), names
    modes = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in created_dirs + created_files}
    assert all(_mode(d) == 0o700 for d in created_dirs), modes
    assert all(_mode(f) == 0o600 for f in created_files), modes


def test_wal_and_shm_files_are_private_while_open(tmp_path: Path) -> None:
    """-wal and -shm exist only while a connection is open: check them then."""
    old = os.umask(0o022)
    try:
        gallery = EmbeddedGallery(tmp_path / "g", key=secrets.token_bytes(32))
        store = ServiceStore(tmp_path / "s" / "service.sqlite3")
        try:
            gallery.ensure_collection("default", "test-model", 4)
            with store.write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            files = [p for d in (tmp_path / "g", tmp_path / "s") for p in d.iterdir()]
            names = {p.name for p in files}
            assert {"gallery.sqlite3-wal", "gallery.sqlite3-shm", "service.sqlite3-wal"} <= names, names
            modes = {p.name: oct(_mode(p)) for p in files}
            assert all(_mode(p) == 0o600 for p in files), modes
        finally:
            gallery.close()
            store.close()
    finally:
        os.umask(old)


def test_an_old_shared_gallery_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Galleries made before the private-modes rule keep their 0755/0644 modes (they are the user's): opening
    one warns with the command that fixes it."""
    key = secrets.token_bytes(32)
    EmbeddedGallery(tmp_path / "old", key=key).close()
    (tmp_path / "old").chmod(0o755)
    (tmp_path / "old" / "gallery.sqlite3").chmod(0o644)
    with caplog.at_level("WARNING", logger="faceprint.gallery"):
        EmbeddedGallery(tmp_path / "old", key=key).close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("readable by other users" in m and "chmod 700" in m for m in messages), messages
    assert any("gallery.sqlite3" in m and "chmod 600" in m for m in messages), messages
    caplog.clear()
    (tmp_path / "old").chmod(0o700)
    (tmp_path / "old" / "gallery.sqlite3").chmod(0o600)
    with caplog.at_level("WARNING", logger="faceprint.gallery"):
        EmbeddedGallery(tmp_path / "old", key=key).close()
    assert not [r for r in caplog.records if "readable by other users" in r.getMessage()]


@pytest.mark.parametrize("kind", ["wrong", "malformed"])
def test_a_bad_gallery_key_at_start_up_is_one_line(kind: str, tmp_path: Path, cache_dir: Path) -> None:
    gallery = EmbeddedGallery(tmp_path / "gallery", key=secrets.token_bytes(32))
    gallery.close()
    key = secrets.token_hex(32) if kind == "wrong" else "not-a-key"
    env = _env(tmp_path, cache_dir, FACEPRINT_KEY=key)
    done = subprocess.run(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("FACEPRINT_KEY" in last or "key" in last), done.stderr
    print(f"{kind}: exit {done.returncode}, {len(done.stderr.splitlines())} stderr lines; last: {last}")


def test_connection_settings_are_validated_and_the_cap_follows_the_open_files_limit() -> None:
    base = {"FACEPRINT_HOME": "/nonexistent-home"}
    settings = Settings.from_env(
        {
            **base,
            "FACEPRINT_HEADER_TIMEOUT_S": "2.5",
            "FACEPRINT_KEEPALIVE_TIMEOUT_S": "1",
            "FACEPRINT_MAX_CONNECTIONS": "50",
        }
    )
    assert (settings.header_timeout_s, settings.keepalive_timeout_s, settings.connection_limit) == (2.5, 1.0, 50)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert Settings.from_env(base).connection_limit == default_max_connections()
    if soft != resource.RLIM_INFINITY:
        assert default_max_connections() == max(16, min(soft - FD_RESERVE, 16_384))
    for var, value in [
        ("FACEPRINT_HEADER_TIMEOUT_S", "0"),
        ("FACEPRINT_HEADER_TIMEOUT_S", "nan"),
        ("FACEPRINT_KEEPALIVE_TIMEOUT_S", "-1"),
        ("FACEPRINT_MAX_CONNECTIONS", "0"),
        ("FACEPRINT_MAX_CONNECTIONS", "many"),
    ]:
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({**base, var: value})
