"""The service's own SQLite file (``$FACEPRINT_HOME/service.sqlite3``): API keys and the audit log.

Kept apart from the gallery so that keys and audit entries survive a gallery being replaced, exported or
erased, and so that ``faceprint keys``/``faceprint audit`` never need the gallery's encryption key.
WAL mode: the server writes while the CLI reads or creates keys. Numbered migrations, as in the gallery.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from faceprint.errors import FaceprintError

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
)


class ServiceStoreError(FaceprintError):
    pass


class ServiceStore:
    """One SQLite connection per thread on the service database; writes serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        with self.write() as conn:
            self._migrate(conn)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as exc:
                raise ServiceStoreError(f"{self.path}: cannot open the service database ({exc})") from None
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        return self._conn()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ServiceStoreError(f"{self.path} was written by a newer faceprint (schema {version})")
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()


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
