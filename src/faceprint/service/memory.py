"""Giving memory back to the operating system after requests that allocated a lot.

glibc keeps freed heap memory in its arenas (one per thread that allocated, up to 8 per core), and its
dynamic mmap threshold rises to 32 MiB after large blocks are freed, so the buffers of a large decode stay
in the process: RSS only grew over load runs. :class:`MemoryReleaser` calls ``malloc_trim(0)`` (which
returns free pages of every arena) shortly after a large decode and once more ``interval`` s later (by then
the request has answered and dropped its arrays, even a slow one), at most once every ``interval`` s. Where
the C library is not glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("faceprint.service")

#: A decode of at least this many pixels (as the file declares them) marks its request as large.
LARGE_DECODE_PIXELS = 4_000_000
#: Seconds between two trims at most once; the trim runs this long after the large decode at the latest.
TRIM_INTERVAL_S = 2.0
#: Seconds after a large decode before the first trim (the decoder's temporaries are gone by then).
TRIM_DELAY_S = 0.5
#: Trims after each large decode: the first after TRIM_DELAY_S, the next TRIM_INTERVAL_S later.
TRIMS_PER_DECODE = 2


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        func = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


_MALLOC_TRIM = _load_malloc_trim()


def trim() -> bool:
    """Return the C heap's free memory to the OS now (glibc only); ``True`` when there was a trim to call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class MemoryReleaser:
    """Trims the heap after large decodes: :meth:`note` from any thread; trims run on a timer thread
    ``delay`` s later and then every ``interval`` s, ``rounds`` times (a decode meanwhile restarts the count)."""

    def __init__(
        self,
        *,
        interval: float = TRIM_INTERVAL_S,
        delay: float = TRIM_DELAY_S,
        rounds: int = TRIMS_PER_DECODE,
        trimmer: Callable[[], bool] = trim,
    ) -> None:
        self.interval = interval
        self.delay = delay
        self.rounds = rounds
        self._left = 0
        self._trimmer = trimmer
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last = float("-inf")
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trimmer is not trim or _MALLOC_TRIM is not None

    def note(self, pixels: int) -> None:
        """A decode of ``pixels`` (declared) happened; schedule a trim when that is large."""
        if pixels < LARGE_DECODE_PIXELS or not self.available:
            return
        with self._lock:
            self._left = self.rounds
            if self._timer is None:
                self._arm(self.delay)

    def _arm(self, delay: float) -> None:
        wait = max(delay, self._last + self.interval - time.monotonic())
        self._timer = threading.Timer(wait, self._run)
        self._timer.daemon = True
        self._timer.start()

    def _run(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
            self._left -= 1
            if self._left > 0:
                self._arm(self.interval)
        try:
            if self._trimmer():
                self.trims += 1
        except Exception:  # never let a trim take a thread down; memory is only kept longer
            log.exception("malloc_trim failed")

    def close(self) -> None:
        with self._lock:
            self._left = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
