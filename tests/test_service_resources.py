"""Resources the running service holds, and what it answers when its storage fails (issue #13).

File descriptors: threads come and go (anyio retires idle workers), so the number of SQLite connections
must not follow them. Storage: a full disk or a read-only database is a 507/503 problem+json, never a 500,
and ``/readyz`` says so until it is fixed — without a restart.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from faceprint.gallery.embedded import database
from faceprint.gallery.embedded.gallery import EmbeddedGallery
from faceprint.gallery.errors import GalleryCorrupt, StorageFull, StorageReadOnly
from faceprint.service import store as store_module
from faceprint.service.app import create_app
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.settings import Settings
from faceprint.service.store import ServiceStore
from tests.test_service_api import ADA, ADA_PROBE, assert_problem, files, h, service  # noqa: F401 (fixture)

KEY = bytes(range(32))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")


# -- file descriptors ---------------------------------------------------------------------------------------
@needs_proc
def test_short_lived_threads_do_not_leak_connections(tmp_path: Path) -> None:
    gallery = EmbeddedGallery(tmp_path / "g", key=KEY)
    gallery.ensure_collection("default", "m", 4)
    store = ServiceStore(tmp_path / "service.sqlite3")
    audit = AuditLog(store)
    audit.append(AuditEntry(action="identify", endpoint="/v1/identify", status=200))

    def work() -> None:
        assert [c.name for c in gallery.list_collections()] == ["default"]
        assert gallery.list_subjects(collection="default").total == 0
        assert len(audit.query(limit=5)) == 1

    work()
    before = open_fds()
    for _ in range(10):  # 200 threads, 20 at a time, each gone before the next batch
        batch = [threading.Thread(target=work) for _ in range(20)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    grown = open_fds() - before
    gallery.close()
    store.close()
    # At most DEFAULT_READERS pooled readers per database, two descriptors each (db, -wal).
    assert grown <= 2 * 2 * database.DEFAULT_READERS, f"{grown} more open files after 200 threads"


@needs_proc
def test_concurrent_requests_keep_open_files_bounded(service) -> None:  # noqa: F811
    client, keys = service
    before = open_fds()

    def get(_: int) -> int:
        return client.get("/v1/subjects", headers=h(keys, "read")).status_code

    with ThreadPoolExecutor(40) as pool:
        for _ in range(4):
            assert set(pool.map(get, range(80))) == {200}
    grown = open_fds() - before
    assert grown <= 2 * 2 * database.DEFAULT_READERS + 8, f"{grown} more open files after 320 requests"


# -- storage faults -------------------------------------------------------------------------------------------
@pytest.fixture()
def probe_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness probes every call instead of every few seconds."""
    monkeypatch.setattr(database, "PROBE_EVERY_S", 0.0)
    monkeypatch.setattr(store_module, "PROBE_EVERY_S", 0.0)


def _fill_up(conn: sqlite3.Connection, insert: str = "INSERT INTO filler VALUES (hex(zeroblob(?)))") -> None:
    """Make SQLite's page limit (``max_page_count``) the current size and use up the free bytes with rows
    of ``insert`` (one size parameter): the next write that needs a page is a real SQLITE_FULL."""
    conn.execute("CREATE TABLE IF NOT EXISTS filler (x TEXT)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    for size in (2048, 256, 32, 1):
        try:
            while True:
                conn.execute(insert, (size,))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)


def test_a_full_database_raises_storage_full_and_rolls_back(tmp_path: Path) -> None:
    with EmbeddedGallery(tmp_path / "g", key=KEY) as gallery:
        gallery.ensure_collection("default", "m", 4)
        _fill_up(gallery._db.writer)
        with pytest.raises(StorageFull, match="disk is full"):
            gallery.add_subject("a" * 3000, collection="default")
        with pytest.raises(StorageFull), gallery.bulk():
            gallery.add_subject("b" * 3000, collection="default")
        assert gallery.list_subjects(collection="default").total == 0
        assert isinstance(gallery.check_storage(), StorageFull)
        gallery._db.writer.execute("PRAGMA max_page_count = 1000000")
        gallery._db._probe = (-1e9, None)
        assert gallery.check_storage() is None
        gallery.add_subject("a" * 3000, collection="default")  # works again, no reopening


def test_storage_faults_are_507_or_503_and_readyz_follows(service, probe_now) -> None:  # noqa: F811
    client, keys = service
    state = client.app.state
    assert client.get("/readyz").json()["checks"]["storage"] is True

    # The gallery is read-only (SQLITE_READONLY from the real connection): writes are 503, reads still work.
    state.gallery._db.writer.execute("PRAGMA query_only = 1")
    try:
        created = client.post("/v1/subjects", json={"name": "ro"}, headers=h(keys, "enroll"))
        body = assert_problem(created, 503, "storage_unavailable")
        assert "gallery" in body["detail"] and str(state.settings.home) not in body["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False
        assert client.get("/v1/subjects", headers=h(keys, "read")).status_code == 200
    finally:
        state.gallery._db.writer.execute("PRAGMA query_only = 0")
    assert client.get("/readyz").status_code == 200  # back without a restart

    # The service database is full: identify cannot write its audit row, so it is 507, never 500.
    subject = client.post("/v1/subjects", json={"name": "ada-res"}, headers=h(keys, "enroll")).json()
    enrolled = client.post(f"/v1/subjects/{subject['id']}/faces", files=files(image=ADA[0]), headers=h(keys, "enroll"))
    assert enrolled.status_code in (200, 201), enrolled.text
    writer = state.store._writer
    _fill_up(
        writer, "INSERT INTO audit (at, action, endpoint, status, detail) VALUES ('', '', '', 0, hex(zeroblob(?)))"
    )
    try:
        answer = client.post("/v1/identify", files=files(image=ADA_PROBE), headers=h(keys, "recognize"))
        body = assert_problem(answer, 507, "insufficient_storage")
        assert "audit log" in body["detail"]
        assert_problem(client.post("/v1/subjects", json={"name": "x"}, headers=h(keys, "enroll")), 507,
                       "insufficient_storage")  # fmt: skip
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False
    finally:
        writer.execute("PRAGMA max_page_count = 1000000")
        writer.execute("DROP TABLE filler")
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/identify", files=files(image=ADA_PROBE), headers=h(keys, "recognize")).status_code == 200


# -- a read-only location at start ---------------------------------------------------------------------------
@pytest.fixture()
def readonly_mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs that the test can remount read-only (root only; skipped elsewhere)."""
    where = tmp_path / "mnt"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_starting_on_a_read_only_location_says_so(readonly_mount: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    EmbeddedGallery(readonly_mount / "gallery", key=KEY).close()
    ServiceStore(readonly_mount / "service.sqlite3").close()
    subprocess.run(["mount", "-o", "remount,ro", str(readonly_mount)], check=True)
    with pytest.raises(StorageReadOnly, match="read-only") as raised:
        EmbeddedGallery(readonly_mount / "gallery", key=KEY)
    assert not isinstance(raised.value, GalleryCorrupt)
    with pytest.raises(StorageReadOnly, match="read-only"):
        ServiceStore(readonly_mount / "service.sqlite3")
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    settings = Settings(
        home=readonly_mount,
        gallery=readonly_mount / "gallery",
        service_db=readonly_mount / "service.sqlite3",
        detector="hog",
    )
    with pytest.raises(StorageReadOnly), TestClient(create_app(settings)):
        pass


# -- a real full disk ------------------------------------------------------------------------------------------
def test_a_really_full_disk_is_507_and_readyz_recovers(
    readonly_mount: Path, hog_pipeline, probe_now, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's home on a small tmpfs that a file then fills to the last byte: writes are 507, /readyz is
    503 and both recover once space is freed, without a restart (the tmpfs is the real ENOSPC, not a PRAGMA)."""
    monkeypatch.setenv("FACEPRINT_KEY", secrets.token_hex(32))
    home = readonly_mount
    settings = Settings(home=home, gallery=home / "gallery", service_db=home / "service.sqlite3", detector="hog")
    app = create_app(settings, pipeline=hog_pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        _, text = app.state.keys.create(["admin"], "disk")
        auth = {"Authorization": f"Bearer {text}"}
        assert client.post("/v1/subjects", json={"name": "before"}, headers=auth).status_code == 201
        filler = home / "filler"
        with filler.open("wb") as out:  # until the file system itself says no space is left
            block = b"\0" * (1 << 16)
            try:
                while True:
                    out.write(block)
                    out.flush()
            except OSError as exc:
                assert exc.errno == 28  # ENOSPC
        try:
            created = client.post("/v1/subjects", json={"name": "during"}, headers=auth)
            assert_problem(created, 507, "insufficient_storage")
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False
        finally:
            filler.unlink()
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/subjects", json={"name": "after"}, headers=auth).status_code == 201
        names = {s["name"] for s in client.get("/v1/subjects", headers=auth).json()["items"]}
        assert names == {"before", "after"}  # nothing half-written
