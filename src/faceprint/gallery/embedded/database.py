"""The embedded gallery's SQLite connections and transactions.

One write connection serialised by a lock and a small pool of read connections shared by all threads
(:mod:`.pool`: at most ``readers`` of them, checked out per statement or per :meth:`Database.read` block, so
descriptors stay bounded however many threads come and go; WAL readers see the last committed state and
never block the writer). Other processes may write too; SQLite serialises them, and a writer that
waits longer than the busy timeout gets :class:`GalleryLocked`. Write transactions nest (``bulk``): the
outermost one commits; callbacks registered with :meth:`Database.after_commit` run after COMMIT, in order,
and are dropped on ROLLBACK (the index cache patches itself that way). A full disk or a read-only file
raises :class:`StorageFull` / :class:`StorageReadOnly`; :meth:`Database.storage_fault` probes for them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from faceprint.gallery.embedded.pool import DEFAULT_READERS, ConnectionPool
from faceprint.gallery.errors import (
    GalleryCorrupt,
    GalleryError,
    GalleryLocked,
    StorageError,
    StorageFull,
    storage_fault,
)
from faceprint.gallery.private import create_private_file
from faceprint.gallery.schema import connect, migrate

log = logging.getLogger("faceprint.gallery")

#: Most ids bound in one ``IN (…)`` (SQLite's default limit on host parameters is 999 on old builds).
SQL_CHUNK = 500


def chunks(items: Sequence[Any], size: int = SQL_CHUNK) -> Iterator[list[Any]]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(values: Sequence[object]) -> str:
    """``?, ?, …`` for an ``IN (…)`` of these values."""
    return ",".join("?" * len(values))


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


#: Below this much free space on the database's file system, :func:`probe_writable` reports it full (a
#: rolled-back probe never reaches the disk in WAL mode, so free space is checked directly).
MIN_FREE_BYTES = 1 << 20
#: How long a probe's verdict is reused (readiness checks may come every second).
PROBE_EVERY_S = 3.0


def probe_writable(conn: sqlite3.Connection, path: Path, where: str) -> StorageError | None:
    """Whether a write on ``conn`` would be refused: a write transaction that allocates pages and is rolled
    back (read-only files, SQLite's page limit), then the free space on ``path``'s file system. The caller
    holds the connection's write lock; a lock held by another process is no storage fault (and is not
    waited for)."""
    busy = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return None if _is_locked(exc) else storage_fault(exc, where, path)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {busy}")
    try:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("CREATE TABLE IF NOT EXISTS faceprint_write_probe (x BLOB)")
        conn.execute("INSERT INTO faceprint_write_probe VALUES (zeroblob(?))", (2 * page,))
    except sqlite3.OperationalError as exc:
        return storage_fault(exc, where, path)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return None
    return StorageFull(where) if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES else None


class Database:
    """Connections to one ``gallery.sqlite3`` (see the module docstring); ``label`` names it in errors."""

    def __init__(self, path: Path, *, busy_ms: int, label: str, readers: int = DEFAULT_READERS) -> None:
        self.path = path
        self.label = label
        self._busy_ms = busy_ms
        self._write_lock = threading.RLock()
        self._tx_depth = 0
        self._tx_owner = 0
        self._after_commit: list[Callable[[], None]] = []
        self._probe: tuple[float, StorageError | None] = (-PROBE_EVERY_S, None)
        self.closed = False
        with suppress(OSError):  # unwritable storage: SQLite's own error below names the fault
            create_private_file(path)  # a new gallery's database, -wal and -shm: 0600
        try:
            self.writer = connect(path, busy_timeout_ms=busy_ms)
            migrate(self.writer)
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise GalleryLocked(label) from None
            fault = storage_fault(exc, f"the gallery at {label}", path)
            raise fault or GalleryCorrupt(f"{path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise GalleryCorrupt(f"{path} is not a faceprint gallery database: {exc}") from None
        self._pool = ConnectionPool(self._connect_reader, readers)

    def _connect_reader(self) -> sqlite3.Connection:
        try:
            return connect(self.path, busy_timeout_ms=self._busy_ms)
        except sqlite3.OperationalError as exc:
            raise storage_fault(exc, f"the gallery at {self.label}", self.path) or exc from None

    def close(self) -> None:
        self.closed = True
        self._pool.close()
        self.writer.close()

    def _check_open(self) -> None:
        if self.closed:
            raise GalleryError(f"the gallery at {self.label} is closed")

    def in_own_transaction(self) -> bool:
        return bool(self._tx_depth) and self._tx_owner == threading.get_ident()

    def reader(self) -> sqlite3.Connection | ConnectionPool:
        """Something to ``execute`` one read on: the pool (each statement checks a connection out, and its
        rows come back fetched); inside this thread's own write transaction the writer (to see its writes)."""
        self._check_open()
        if self.in_own_transaction():
            return self.writer
        return self._pool

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs, on a connection checked out for the block."""
        self._check_open()
        if self.in_own_transaction():
            yield self.writer
            return
        with self._pool.connection() as conn:
            if conn.in_transaction:  # nested in this thread's own snapshot
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; inside another one (``bulk``) it joins it."""
        self._check_open()
        with self._write_lock:
            conn = self.writer
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield conn
                finally:
                    self._tx_depth -= 1
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_locked(exc):
                    raise GalleryLocked(self.label) from None
                raise self._fault(exc) or exc from None
            self._tx_depth = 1
            self._tx_owner = threading.get_ident()
            self._after_commit = []
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                    conn.execute("ROLLBACK")
                self._after_commit = []
                fault = self._fault(exc) if isinstance(exc, sqlite3.OperationalError) else None
                if fault is not None:
                    raise fault from exc
                raise
            finally:
                self._tx_depth = 0
            callbacks, self._after_commit = self._after_commit, []
            for callback in callbacks:
                callback()

    def vacuum(self) -> bool:
        """``VACUUM`` (rewrites the file without free pages), then move the WAL into the database and truncate
        it; ``True`` when a reader in another process kept the WAL from being truncated."""
        self._check_open()
        with self._write_lock:
            if self._tx_depth:
                raise GalleryError("cannot scrub the gallery inside a bulk block")
            self.writer.execute("VACUUM")
            return bool(self.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current write transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)

    def _fault(self, exc: sqlite3.OperationalError) -> StorageError | None:
        fault = storage_fault(exc, f"the gallery at {self.label}", self.path)
        if fault is not None:
            log.error("gallery write refused: %s (%s)", fault, exc)
            self._probe = (time.monotonic(), fault)
        return fault

    def check_storage(self) -> StorageError | None:
        """Why writes would fail now (full, read-only, unopenable), else ``None``; probed at most every
        :data:`PROBE_EVERY_S` seconds, and skipped while a write transaction is under way (it proves more)."""
        at, verdict = self._probe
        if self.closed or time.monotonic() - at < PROBE_EVERY_S:
            return verdict
        if not self._write_lock.acquire(blocking=False):
            return verdict
        try:
            if self._tx_depth:
                return verdict
            verdict = probe_writable(self.writer, self.path, f"the gallery at {self.label}")
        finally:
            self._write_lock.release()
        if (verdict is None) != (self._probe[1] is None):
            log.warning("gallery storage %s", "writable again" if verdict is None else f"fault: {verdict}")
        self._probe = (time.monotonic(), verdict)
        return verdict

    def meta(self, key: str) -> bytes | None:
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return row[0].encode() if isinstance(row[0], str) else bytes(row[0])
