"""A bounded pool of SQLite read connections, shared by every thread of a process.

Why not one connection per thread: a server's worker threads come and go (anyio retires idle ones), and a
connection kept in a thread-local outlives its thread unless something closes it; 40 concurrent requests
repeated a few times leaked ~70 file descriptors. Here at most ``size`` read connections exist, whatever
the number of threads: each operation checks one out and gives it back. A thread that already holds one
(inside :meth:`ConnectionPool.connection`) gets the same one again, so nested reads see one snapshot and
never wait for themselves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Read connections per database and process: enough for the CPU-bound service (reads take microseconds to
#: milliseconds), few enough that descriptors stay bounded (each WAL connection holds two: db and -wal).
DEFAULT_READERS = 4


class Rows:
    """The fetched result of one statement run on a pooled connection (the connection is back in the pool)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows
        self._next = 0

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next :], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class ConnectionPool:
    """At most ``size`` connections made by ``factory``; :meth:`connection` checks one out for a block."""

    def __init__(self, factory: Callable[[], sqlite3.Connection], size: int = DEFAULT_READERS) -> None:
        if size < 1:
            raise ValueError("a connection pool needs at least one connection")
        self._factory = factory
        self.size = size
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._cond = threading.Condition()
        self._held = threading.local()
        self.closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this block; the one this thread already holds when nested."""
        held: sqlite3.Connection | None = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
        conn = self._acquire()
        self._held.conn = conn
        try:
            yield conn
        finally:
            self._held.conn = None
            self._release(conn)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Rows:
        """Run one statement on a pooled connection and fetch its rows."""
        with self.connection() as conn:
            return Rows(conn.execute(sql, params).fetchall())

    def _acquire(self) -> sqlite3.Connection:
        with self._cond:
            while True:
                if self.closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            return self._factory()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:  # a block that failed between BEGIN and COMMIT
                conn.rollback()
        except sqlite3.Error:
            self._discard(conn)
            return
        with self._cond:
            if not self.closed:
                self._idle.append(conn)
                self._cond.notify()
                return
        self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        conn.close()
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        """Close the idle connections now and the checked-out ones when they come back."""
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()
