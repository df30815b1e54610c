"""The service's own SQLite file (``$FACEPRINT_HOME/service.sqlite3``): API keys, the audit log, erasure
receipts and the registered camera streams.

Kept apart from the gallery so that keys and audit entries survive a gallery being replaced, exported or
erased, and so that ``faceprint keys``/``faceprint audit`` never need the gallery's encryption key.
WAL mode: the server writes while the CLI reads or creates keys. Numbered migrations, as in the gallery.
Connections: one writer serialised by a lock and a bounded pool of readers shared by all threads (as in the
gallery, :mod:`faceprint.gallery.embedded.pool`), so descriptors stay bounded however many threads serve
requests. A full disk or a read-only file raises :class:`StorageFull` / :class:`StorageReadOnly`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from faceprint.errors import FaceprintError
from faceprint.gallery.embedded.database import PROBE_EVERY_S, probe_writable
from faceprint.gallery.embedded.pool import DEFAULT_READERS, ConnectionPool
from faceprint.gallery.errors import StorageError, storage_fault
from faceprint.gallery.private import create_private_file, make_private_dir, warn_if_shared

log = logging.getLogger("faceprint.service")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE api_keys (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        scopes       TEXT NOT NULL,          -- space-separated
        secret_hash  TEXT NOT NULL,          -- sha256 hex of the secret part; the key itself is never stored
        created_at   TEXT NOT NULL,
        revoked_at   TEXT,
        last_used_at TEXT
    );
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          TEXT NOT NULL,
        request_id  TEXT,
        key_id      TEXT,
        action      TEXT NOT NULL,           -- verify, identify, enrol, subject.create, subject.delete, …
        endpoint    TEXT NOT NULL,
        status      INTEGER NOT NULL,
        collection  TEXT,
        subject_ids TEXT NOT NULL DEFAULT '[]',
        scores      TEXT NOT NULL DEFAULT '[]',
        threshold   REAL,
        decision    TEXT,
        model_id    TEXT,
        detail      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_at ON audit(at);
    -- Append-only: the table refuses updates and deletes from anyone using this schema.
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    """,
    # Issue 17: every decision names the model version (sha256 of its weights) that made it; canary state
    # (which collection copy answers for a collection) and the shadow model's outcomes (numbers only).
    """
    ALTER TABLE audit ADD COLUMN model_sha256 TEXT;
    CREATE TABLE serving (
        collection  TEXT PRIMARY KEY,        -- the name clients use
        target      TEXT NOT NULL,           -- the gallery collection that answers for it
        model_id    TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        at          TEXT NOT NULL
    );
    CREATE TABLE shadow_log (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at           TEXT NOT NULL,
        request_id   TEXT,
        collection   TEXT NOT NULL,
        model        TEXT NOT NULL,
        shadow_model TEXT NOT NULL,
        agree        INTEGER NOT NULL,
        score_shift  REAL,
        seconds      REAL NOT NULL
    );
    CREATE INDEX shadow_log_at ON shadow_log(at);
    """,
    # 3: signed erasure receipts (faceprint.privacy.receipts), append-only like the audit log.
    """
    CREATE TABLE erasures (
        id         TEXT PRIMARY KEY,
        at         TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        kind       TEXT NOT NULL,
        signed     TEXT NOT NULL            -- the signed receipt, exactly as issued (JSON)
    );
    CREATE INDEX erasures_subject ON erasures(subject_id);
    -- A key bound to a purpose identifies only among subjects who consented to it (NULL: not bound).
    ALTER TABLE api_keys ADD COLUMN purpose TEXT;
    CREATE TRIGGER erasures_no_update BEFORE UPDATE ON erasures
        BEGIN SELECT RAISE(ABORT, 'erasure receipts are append-only'); END;
    CREATE TRIGGER erasures_no_delete BEFORE DELETE ON erasures
        BEGIN SELECT RAISE(ABORT, 'erasure receipts are append-only'); END;
    """,
    # 4: registered camera streams (POST /v1/streams), restarted when the service starts. The URLs are kept as
    # registered, passwords and tokens included (FFmpeg and the webhook need them): the file is 0600 in a 0700
    # home, and the service shows and logs them masked.
    """
    CREATE TABLE streams (
        id             TEXT PRIMARY KEY,
        url            TEXT NOT NULL,
        name           TEXT NOT NULL DEFAULT '',
        collection     TEXT NOT NULL,           -- the name the client gave (resolved by the serving table)
        every          INTEGER NOT NULL,
        listen         INTEGER NOT NULL,
        open_timeout_s REAL NOT NULL,
        max_lag_s      REAL,
        fmr            REAL,
        fpir           REAL,
        threshold      REAL,
        webhook_url    TEXT,
        webhook_events TEXT NOT NULL DEFAULT '[]',  -- JSON list of event types
        created_at     TEXT NOT NULL,
        created_by     TEXT                     -- the admin key's id
    );
    """,
)


class ServiceStoreError(FaceprintError):
    pass


class ServiceStore:
    """One write connection serialised by a lock, and a bounded pool of read connections."""

    def __init__(self, path: Path, *, readers: int = DEFAULT_READERS) -> None:
        self.path = Path(path)
        self._where = f"the service database {self.path}"
        try:  # keys' hashes and the audit log: directory 0700, database (and its -wal, -shm) 0600
            make_private_dir(self.path.parent)
            create_private_file(self.path)
        except OSError:
            pass  # unwritable storage: the connection below reports it as a storage fault
        self._write_lock = threading.Lock()
        self._probe: tuple[float, StorageError | None] = (-PROBE_EVERY_S, None)
        self._writer = self._connect()
        warn_if_shared(self.path)
        self._pool = ConnectionPool(self._connect, readers)
        try:
            with self.write() as conn:
                self._migrate(conn)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise storage_fault(exc, self._where, self.path) or ServiceStoreError(
                f"{self.path}: cannot open the service database ({exc})"
            ) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            fault = storage_fault(exc, self._where, self.path) if isinstance(exc, sqlite3.OperationalError) else None
            raise fault or ServiceStoreError(f"{self.path}: cannot open the service database ({exc})") from None
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error)."""
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._fault(exc) or exc from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                    conn.execute("ROLLBACK")
                fault = self._fault(exc) if isinstance(exc, sqlite3.OperationalError) else None
                if fault is not None:
                    raise fault from exc
                raise

    def read(self) -> ConnectionPool:
        """Something to ``execute`` one read on: each statement checks a pooled connection out."""
        return self._pool

    def _fault(self, exc: sqlite3.OperationalError) -> StorageError | None:
        fault = storage_fault(exc, self._where, self.path)
        if fault is not None:
            log.error("service database write refused: %s (%s)", fault, exc)
            self._probe = (time.monotonic(), fault)
        return fault

    def check_storage(self) -> StorageError | None:
        """Why writes (audit rows, keys) would fail now, else ``None``; probed at most every few seconds."""
        at, verdict = self._probe
        if time.monotonic() - at < PROBE_EVERY_S or not self._write_lock.acquire(blocking=False):
            return verdict
        try:
            verdict = probe_writable(self._writer, self.path, self._where)
        finally:
            self._write_lock.release()
        if (verdict is None) != (self._probe[1] is None):
            log.warning("service database %s", "writable again" if verdict is None else f"fault: {verdict}")
        self._probe = (time.monotonic(), verdict)
        return verdict

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ServiceStoreError(f"{self.path} was written by a newer faceprint (schema {version})")
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self._pool.close()
        with self._write_lock:
            self._writer.close()


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (``execute`` runs one; ``executescript`` would COMMIT for us)."""
    out, buf = [], ""
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s.strip(";").strip()]
