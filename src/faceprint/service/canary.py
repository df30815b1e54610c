"""Shadow and canary models: a second embedder on a copy of each collection, and a one-step switch.

A collection ``people`` served by model A gets a *shadow copy* ``people@B`` (:func:`shadow_collection`):
the same subjects enrolled again with model B (``faceprint enroll --collection people@B --model B``).
``faceprint serve --shadow B`` then runs a fraction of identify requests (``--shadow-fraction``) through B
on that copy, in a background task started once A's answer is made (never waited for, never changing it),
and records whether B's decision agrees with A's, the shift of the best score (over each model's own
threshold) and B's time: in Prometheus (``faceprint_shadow_*``) and, as numbers only, in the service
database's ``shadow_log`` table that ``faceprint canary report`` summarises.

``faceprint canary promote people --model B`` makes ``people@B`` answer for ``people`` (one row of the
``serving`` table, written in the same transaction as its audit row, which names both model versions by the
sha256 of their weights); the old model then shadows the new one, so ``canary report`` keeps comparing, and
``faceprint canary rollback people`` switches back the same way. A running service picks the change up
within :data:`REFRESH_S`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from anyio import CapacityLimiter, to_thread

from faceprint.errors import FaceprintError
from faceprint.gallery import CollectionNotFound, Gallery, Identification
from faceprint.image import Image
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.engines import Engines
from faceprint.service.errors import ApiError
from faceprint.service.metrics import Metrics
from faceprint.service.store import ServiceStore

log = logging.getLogger("faceprint.service")

SEPARATOR = "@"
REFRESH_S = 1.0  # how often a running service re-reads the serving table
MAX_IN_FLIGHT = 4  # shadow runs at once; a sampled request beyond this is not shadowed


class CanaryError(FaceprintError):
    """A promotion or rollback that cannot be made (names the collection and what is missing)."""


def shadow_collection(collection: str, model_id: str) -> str:
    """The name of ``collection``'s copy enrolled with ``model_id``: ``people@faceplugin-mbf``."""
    return f"{collection}{SEPARATOR}{model_id}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- which copy answers -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingRow:
    collection: str
    target: str
    model_id: str
    sha256: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "collection": self.collection,
            "target": self.target,
            "model_id": self.model_id,
            "sha256": self.sha256,
            "at": self.at,
        }


class ServingTable:
    """The ``serving`` table: collection name → the gallery collection that answers for it (default: itself)."""

    def __init__(self, store: ServiceStore) -> None:
        self.store = store
        self._cache: dict[str, str] = {}
        self._read_at = -REFRESH_S
        self._lock = threading.Lock()

    def rows(self) -> dict[str, ServingRow]:
        sql = "SELECT collection, target, model_id, sha256, at FROM serving"
        return {r[0]: ServingRow(*r) for r in self.store.read().execute(sql).fetchall()}

    def resolve(self, collection: str) -> str:
        """The gallery collection that answers for ``collection`` (re-read at most every :data:`REFRESH_S`)."""
        with self._lock:
            if time.monotonic() - self._read_at >= REFRESH_S:
                self._cache = {name: row.target for name, row in self.rows().items()}
                self._read_at = time.monotonic()
            return self._cache.get(collection, collection)


def _model_of(gallery: Gallery, name: str) -> str:
    try:
        return gallery.get_collection(name).model_id
    except CollectionNotFound:
        raise CanaryError(f"collection {name!r} does not exist in this gallery") from None


def promote(
    store: ServiceStore, gallery: Gallery, collection: str, model_id: str, sha256: dict[str, str], *, actor: str
) -> AuditEntry:
    """Make ``collection``'s copy on ``model_id`` answer for it; the change and its audit row in one transaction.

    ``sha256``: model id → the sha256 of its weights, for both models involved."""
    if SEPARATOR in collection:
        raise CanaryError(f"{collection!r} is a shadow copy; promote the collection it copies")
    base_model = _model_of(gallery, collection)
    target = collection if model_id == base_model else shadow_collection(collection, model_id)
    if target != collection and all(c.name != target for c in gallery.list_collections()):
        raise CanaryError(
            f"collection {collection!r} has no copy on {model_id} ({target!r}): make it with `faceprint canary "
            f"copy {collection} --model {model_id}` or enrol it, and shadow it first"
        )
    target_model = _model_of(gallery, target)
    if target_model != model_id:
        raise CanaryError(f"collection {target!r} uses {target_model}, not {model_id}")
    table = ServingTable(store)
    current = table.rows().get(collection)
    old_model = current.model_id if current is not None else base_model
    if (current.target if current is not None else collection) == target:
        raise CanaryError(f"{collection!r} is already served by {model_id} (collection {target!r})")
    entry = _entry("canary.promote", collection, model_id, sha256, old_model, target, actor)
    with store.write() as conn:
        if target == collection:
            conn.execute("DELETE FROM serving WHERE collection = ?", (collection,))
        else:
            conn.execute(
                "INSERT INTO serving (collection, target, model_id, sha256, at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(collection) DO UPDATE SET target = excluded.target, model_id = excluded.model_id, "
                "sha256 = excluded.sha256, at = excluded.at",
                (collection, target, model_id, sha256.get(model_id, ""), now_iso()),
            )
        entry = _with_id(entry, AuditLog.insert(conn, entry))
    return entry


def rollback(
    store: ServiceStore, gallery: Gallery, collection: str, sha256: dict[str, str], *, actor: str
) -> AuditEntry:
    """Serve ``collection`` from itself again (its own model); the change and its audit row in one transaction."""
    current = ServingTable(store).rows().get(collection)
    if current is None:
        raise CanaryError(f"{collection!r} is served by its own model already: nothing to roll back")
    base_model = _model_of(gallery, collection)
    entry = _entry("canary.rollback", collection, base_model, sha256, current.model_id, collection, actor)
    with store.write() as conn:
        conn.execute("DELETE FROM serving WHERE collection = ?", (collection,))
        entry = _with_id(entry, AuditLog.insert(conn, entry))
    return entry


def _entry(
    action: str, collection: str, model_id: str, sha256: dict[str, str], old_model: str, target: str, actor: str
) -> AuditEntry:
    return AuditEntry(
        action=action,
        endpoint=f"cli {action.replace('.', ' ')}",
        status=200,
        key_id=actor,
        collection=collection,
        decision=f"{old_model} -> {model_id}",
        model_id=model_id,
        model_sha256=sha256.get(model_id, ""),
        detail={
            "from_model": old_model,
            "from_sha256": sha256.get(old_model, ""),
            "to_model": model_id,
            "to_sha256": sha256.get(model_id, ""),
            "answered_by": target,
        },
        at=now_iso(),
    )


def _with_id(entry: AuditEntry, row_id: int) -> AuditEntry:
    return AuditEntry(**{**entry.__dict__, "id": row_id})


# -- the shadow -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowOutcome:
    collection: str
    model: str
    shadow_model: str
    agree: bool
    score_shift: float | None
    seconds: float


def matched_names(answers: Sequence[Identification]) -> list[str]:
    """The subjects matched, by name (ids differ between a collection and its copy), sorted."""
    return sorted(a.match.subject for a in answers if a.match is not None)


def best_margin(answers: Sequence[Identification]) -> float | None:
    """The best candidate's score above its answer's threshold (negative: below). Two models' raw cosine
    scores live on different scales (dlib's genuine pairs score about 0.95, faceplugin-mbf's about 0.5); their
    margins over each model's own threshold for the same FMR compare."""
    margins = [a.candidates[0].score - a.threshold for a in answers if a.candidates]
    return max(margins) if margins else None


class Shadow:
    """Runs sampled identify requests through the other copy of their collection, off the answer's path."""

    def __init__(
        self,
        model_id: str,
        fraction: float,
        *,
        engines: Engines,
        gallery: Gallery,
        serving: ServingTable,
        metrics: Metrics,
        store: ServiceStore,
        limiter: CapacityLimiter,
        seed: int | None = None,
    ) -> None:
        self.model_id = model_id
        self.fraction = fraction
        self.engines = engines
        self.gallery = gallery
        self.serving = serving
        self.metrics = metrics
        self.store = store
        self.limiter = limiter  # the CPU workers' limiter: the shadow queues behind nothing it would delay long
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._without_copy: set[str] = set()  # collections already reported as having no copy to shadow

    def other_copy(self, collection: str) -> str:
        """The copy that does not answer for ``collection`` now: its shadow."""
        serving = self.serving.resolve(collection)
        copy = shadow_collection(collection, self.model_id)
        return copy if serving == collection else collection

    def maybe_run(
        self,
        collection: str,
        image: Image,
        answers: Sequence[Identification],
        model: str,
        *,
        fmr: float | None,
        fpir: float | None,
        request_id: str | None,
    ) -> None:
        """Sample this request (``fraction``) and run it in the background; never raises, never waits."""
        if not answers or self._rng.random() >= self.fraction or len(self._tasks) >= MAX_IN_FLIGHT:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(collection, image, list(answers), model, fmr, fpir, request_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the shadow runs in flight (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self,
        collection: str,
        image: Image,
        answers: list[Identification],
        model: str,
        fmr: float | None,
        fpir: float | None,
        request_id: str | None,
    ) -> None:
        try:
            outcome = await to_thread.run_sync(
                self._compare, collection, image, answers, model, fmr, fpir, limiter=self.limiter
            )
        except Exception:  # the shadow must never hurt serving: report and carry on
            log.exception("shadow run for collection %r failed", collection)
            return
        if outcome is None:
            return
        labels = (outcome.collection, outcome.model, outcome.shadow_model)
        self.metrics.shadow_requests.labels(*labels).inc()
        self.metrics.shadow_decisions.labels(*labels, "agree" if outcome.agree else "disagree").inc()
        if outcome.score_shift is not None:
            self.metrics.shadow_score_shift.labels(*labels).observe(outcome.score_shift)
        self.metrics.shadow_latency.labels(*labels).observe(outcome.seconds)
        try:
            await to_thread.run_sync(self._log, outcome, request_id)
        except Exception:
            log.exception("recording a shadow outcome failed")

    def _compare(
        self,
        collection: str,
        image: Image,
        answers: list[Identification],
        model: str,
        fmr: float | None,
        fpir: float | None,
    ) -> ShadowOutcome | None:
        copy = self.other_copy(collection)
        try:
            shadow_model = self.gallery.get_collection(copy).model_id
        except CollectionNotFound:  # no copy to compare with: nothing to shadow for this collection
            if copy not in self._without_copy:
                self._without_copy.add(copy)
                log.warning(
                    "shadow %s: collection %r has no copy %r; its requests are not shadowed",
                    self.model_id,
                    collection,
                    copy,
                )
            return None
        try:
            engine = self.engines.for_model(shadow_model)
        except ApiError:
            return None
        started = time.perf_counter()
        detections = engine.backend.detect(image)
        prints = engine.pipeline.embed(image, detections) if detections else []
        shadow_answers = (
            self.gallery.identify(prints, collection=copy, fmr=fmr, fpir=fpir, calibration=engine.calibration)
            if prints
            else []
        )
        seconds = time.perf_counter() - started
        before, after = best_margin(answers), best_margin(shadow_answers)
        shift = None if before is None or after is None else float(np.float64(after) - before)
        agree = matched_names(answers) == matched_names(shadow_answers)
        return ShadowOutcome(collection, model, shadow_model, agree, shift, seconds)

    def _log(self, o: ShadowOutcome, request_id: str | None) -> None:
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO shadow_log (at, request_id, collection, model, shadow_model, agree, score_shift, "
                "seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now_iso(), request_id, o.collection, o.model, o.shadow_model, int(o.agree), o.score_shift, o.seconds),
            )


# -- the report -----------------------------------------------------------------------------------------------
def shadow_report(store: ServiceStore, *, since: str | None = None) -> list[dict[str, object]]:
    """Per (collection, serving model, shadow model): requests, agreement, score shift and shadow latency."""
    sql = "SELECT collection, model, shadow_model, agree, score_shift, seconds, request_id FROM shadow_log"
    args: tuple[str, ...] = ()
    if since is not None:
        sql += " WHERE at >= ?"
        args = (since,)
    groups: dict[tuple[str, str, str], list[sqlite3.Row | tuple]] = {}
    for row in store.read().execute(sql + " ORDER BY id", args).fetchall():
        groups.setdefault((row[0], row[1], row[2]), []).append(row)
    out = []
    for (collection, model, shadow), rows in sorted(groups.items()):
        agree = np.array([r[3] for r in rows], dtype=bool)
        shifts = np.array([r[4] for r in rows if r[4] is not None], dtype=np.float64)
        seconds = np.array([r[5] for r in rows], dtype=np.float64)
        out.append(
            {
                "collection": collection,
                "model": model,
                "shadow_model": shadow,
                "requests": len(rows),
                "agreement": round(float(agree.mean()), 4),
                "disagreements": int((~agree).sum()),
                "score_shift_mean": None if shifts.size == 0 else round(float(shifts.mean()), 4),
                "score_shift_median": None if shifts.size == 0 else round(float(np.median(shifts)), 4),
                "shadow_seconds_p50": round(float(np.percentile(seconds, 50)), 4),
                "shadow_seconds_p95": round(float(np.percentile(seconds, 95)), 4),
                "disagreeing_requests": [r[6] for r in rows if not r[3]][-10:],
            }
        )
    return out
