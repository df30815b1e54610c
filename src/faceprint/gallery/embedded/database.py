"""The embedded gallery's SQLite connections and transactions.

One write connection serialised by a lock, one read connection per thread (WAL readers see the last committed
state and never block the writer). Other processes may write too; SQLite serialises them, and a writer that
waits longer than the busy timeout gets :class:`GalleryLocked`. Write transactions nest (``bulk``): the
outermost one commits; callbacks registered with :meth:`Database.after_commit` run after COMMIT, in order,
and are dropped on ROLLBACK (the index cache patches itself that way).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faceprint.gallery.errors import GalleryCorrupt, GalleryError, GalleryLocked
from faceprint.gallery.schema import connect, migrate

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


class Database:
    """Connections to one ``gallery.sqlite3`` (see the module docstring); ``label`` names it in errors."""

    def __init__(self, path: Path, *, busy_ms: int, label: str) -> None:
        self.path = path
        self.label = label
        self._busy_ms = busy_ms
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._tx_depth = 0
        self._tx_owner = 0
        self._after_commit: list[Callable[[], None]] = []
        self.closed = False
        try:
            self.writer = connect(path, busy_timeout_ms=busy_ms)
            migrate(self.writer)
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise GalleryLocked(label) from None
            raise GalleryCorrupt(f"{path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise GalleryCorrupt(f"{path} is not a faceprint gallery database: {exc}") from None

    def close(self) -> None:
        self.closed = True
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self.writer.close()

    def _check_open(self) -> None:
        if self.closed:
            raise GalleryError(f"the gallery at {self.label} is closed")

    def in_own_transaction(self) -> bool:
        return bool(self._tx_depth) and self._tx_owner == threading.get_ident()

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection; inside its own write transaction the writer (to see its writes)."""
        self._check_open()
        if self.in_own_transaction():
            return self.writer
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, busy_timeout_ms=self._busy_ms)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        conn = self.reader()
        if self.in_own_transaction():
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
                raise
            self._tx_depth = 1
            self._tx_owner = threading.get_ident()
            self._after_commit = []
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._after_commit = []
                raise
            finally:
                self._tx_depth = 0
            callbacks, self._after_commit = self._after_commit, []
            for callback in callbacks:
                callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current write transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)

    def meta(self, key: str) -> bytes | None:
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return row[0].encode() if isinstance(row[0], str) else bytes(row[0])
