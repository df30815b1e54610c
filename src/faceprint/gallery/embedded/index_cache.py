"""The embedded gallery's vector indexes: a cache of each collection's templates, kept current with SQLite.

SQLite is the source of truth. Each collection carries a ``generation`` that triggers bump on every change and
an ``index_log`` of the template ids added and removed at each generation. An index in memory records the
generation it reflects; before it answers it is, in order of cost: used as it is (current); patched with the
writes this process committed (:class:`Delta`, applied after COMMIT); caught up from the log (someone else's
writes, or a snapshot saved earlier on disk); or rebuilt from the templates. Snapshots are saved encrypted
(``index-<collection id>.fpidx``) on close.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceprint.gallery.common import Neighbours, group_negatives
from faceprint.gallery.crypto import TemplateCipher, open_vector
from faceprint.gallery.embedded.database import Database, chunks, marks
from faceprint.gallery.index import AdaptiveIndex, load_index, save_index
from faceprint.gallery.model import Collection
from faceprint.gallery.scoring import Hit

log = logging.getLogger(__name__)


def generation(conn: sqlite3.Connection, collection_id: int) -> int:
    """The collection's current generation (-1 when it does not exist)."""
    row = conn.execute("SELECT generation FROM collections WHERE id = ?", (collection_id,)).fetchone()
    return -1 if row is None else int(row[0])


def _generation_and_floor(conn: sqlite3.Connection, collection_id: int) -> tuple[int, int]:
    """The generation and ``log_since``, the oldest generation the change log can catch up from."""
    row = conn.execute("SELECT generation, log_since FROM collections WHERE id = ?", (collection_id,)).fetchone()
    return (-1, 0) if row is None else (int(row[0]), int(row[1]))


class Owners:
    """Template id → subject id, kept beside the index so a search needs no SQL to group its hits.

    A dense int32 array indexed by template id (ids are AUTOINCREMENT, never reused: 4 bytes per template
    ever enrolled) into a table of subject ids. Names are not cached: a rename does not bump the generation.
    """

    def __init__(self) -> None:
        self.by_template = np.full(0, -1, dtype=np.int32)
        self.subjects: list[str] = []
        self._slot: dict[str, int] = {}

    def set(self, template_ids: Sequence[int], subject_ids: Sequence[str]) -> None:
        if not len(template_ids):
            return
        need = int(max(template_ids)) + 1
        if need > len(self.by_template):
            grown = np.full(max(need, 2 * len(self.by_template), 1024), -1, dtype=np.int32)
            grown[: len(self.by_template)] = self.by_template
            self.by_template = grown
        slots = np.empty(len(subject_ids), dtype=np.int32)
        for i, sid in enumerate(subject_ids):
            slot = self._slot.get(sid)
            if slot is None:
                slot = self._slot[sid] = len(self.subjects)
                self.subjects.append(sid)
            slots[i] = slot
        self.by_template[np.asarray(template_ids, dtype=np.int64)] = slots

    def clear(self, template_ids: Sequence[int]) -> None:
        ids = np.asarray(template_ids, dtype=np.int64)
        self.by_template[ids[ids < len(self.by_template)]] = -1

    def slots_of(self, subject_ids: frozenset[str]) -> np.ndarray:
        """The slots of those of these subjects the index knows."""
        return np.fromiter((self._slot[s] for s in subject_ids if s in self._slot), dtype=np.int32)

    def lookup(self, template_ids: np.ndarray) -> np.ndarray:
        """Subject slots of ``template_ids`` (-1 for unknown or missing ids); any shape."""
        ids = np.asarray(template_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self.by_template))
        out = np.full(ids.shape, -1, dtype=np.int32)
        out[ok] = self.by_template[ids[ok]]
        return out


@dataclass
class IndexState:
    """One collection's index as of ``generation``, with its owners and negatives."""

    index: AdaptiveIndex
    generation: int
    negatives: dict[str, np.ndarray] = field(default_factory=dict)
    dirty: bool = False
    owners: Owners = field(default_factory=Owners)

    def patch(
        self, removed: Sequence[int], keys: Sequence[int], vectors: Sequence[np.ndarray], owners: Sequence[str]
    ) -> None:
        """Remove and add templates (in that order)."""
        if removed:
            self.index.remove(np.asarray(removed, dtype=np.int64))
            self.owners.clear(removed)
        if keys:
            self.index.add(np.asarray(keys, dtype=np.int64), np.stack(vectors))
            self.owners.set(keys, owners)


@dataclass
class Delta:
    """What a committed write changed, to patch an in-memory index that was current before it."""

    collection_id: int
    generation_before: int
    generation_after: int = -1
    add_keys: list[int] = field(default_factory=list)
    add_vectors: list[np.ndarray] = field(default_factory=list)
    add_subjects: list[str] = field(default_factory=list)
    remove_keys: list[int] = field(default_factory=list)
    negatives: list[tuple[str, np.ndarray]] = field(default_factory=list)
    removed_subjects: list[str] = field(default_factory=list)


class IndexCache:
    """Every loaded collection's :class:`IndexState` (see the module docstring)."""

    def __init__(self, db: Database, directory: Path, cipher: TemplateCipher, *, ann_min_size: int) -> None:
        self.db = db
        self.directory = directory
        self.cipher = cipher
        self.ann_min_size = ann_min_size
        self.states: dict[int, IndexState] = {}
        self.lock = threading.Lock()

    def snapshot_path(self, collection_id: int) -> Path:
        return self.directory / f"index-{collection_id}.fpidx"

    # -- writes -----------------------------------------------------------------------------------------
    def begin(self, conn: sqlite3.Connection, collection_id: int, **changes: list) -> Delta:
        """A delta for a write about to be made in ``conn``'s transaction."""
        return Delta(collection_id, generation(conn, collection_id), **changes)

    def record(self, delta: Delta, conn: sqlite3.Connection) -> None:
        """Apply ``delta`` to the index once the write transaction it belongs to has committed."""
        delta.generation_after = generation(conn, delta.collection_id)
        self.db.after_commit(lambda: self.apply(delta))

    def apply(self, delta: Delta) -> None:
        """Patch the in-memory index with a committed write, if it reflected the state just before it."""
        with self.lock:
            state = self.states.get(delta.collection_id)
            if state is None:
                return
            if state.generation != delta.generation_before:
                del self.states[delta.collection_id]  # someone else changed it too: rebuild on next use
                return
            state.patch(delta.remove_keys, delta.add_keys, delta.add_vectors, delta.add_subjects)
            for sid in delta.removed_subjects:
                state.negatives.pop(sid, None)
            for sid, vec in delta.negatives:
                prev = state.negatives.get(sid)
                state.negatives[sid] = vec[None, :] if prev is None else np.vstack([prev, vec])
            state.generation = delta.generation_after
            state.dirty = True

    def drop(self, collection_id: int) -> None:
        """Forget the collection's index, in memory and on disk (its vectors changed wholesale)."""
        with self.lock:
            self.states.pop(collection_id, None)
        self.snapshot_path(collection_id).unlink(missing_ok=True)

    # -- reads ------------------------------------------------------------------------------------------
    def search(
        self, collection_id: int, coll: Collection, probes: np.ndarray, k: int, excluded: frozenset[str] = frozenset()
    ) -> Neighbours:
        """The ``k`` nearest templates of each probe as hits without names (the index keeps ids only); the
        templates of ``excluded`` subjects are left out (fetched, then dropped: as many more are fetched)."""
        with self.lock:
            state = self.current(collection_id, coll)
            left_out = state.owners.slots_of(excluded)
            fetch = k + (int(np.isin(state.owners.by_template, left_out).sum()) if len(left_out) else 0)
            keys, scores = state.index.search(probes, min(fetch, max(1, len(state.index))))
            slots = state.owners.lookup(keys)
            if len(left_out):
                slots[np.isin(slots, left_out)] = -1
            owner_of = {int(s): state.owners.subjects[s] for s in np.unique(slots[slots >= 0]).tolist()}
            negatives = state.negatives
        hits = [
            [
                Hit(owner_of[slot], "", float(score))
                for slot, score in zip(slots[face].tolist(), scores[face].tolist(), strict=True)
                if slot >= 0
            ][:k]  # as many as asked for: the over-fetch only made room for those left out
            for face in range(len(probes))
        ]
        return Neighbours(hits, negatives)

    def current(self, collection_id: int, coll: Collection) -> IndexState:
        """The collection's index at the database's current generation (call with :attr:`lock` held)."""
        now, log_since = _generation_and_floor(self.db.reader(), collection_id)
        state = self.states.get(collection_id)
        if state is not None and state.generation == now:
            return state
        if state is None or not log_since <= state.generation < now:
            loaded = load_index(
                self.snapshot_path(collection_id), dim=coll.dim, cipher=self.cipher, ann_min_size=self.ann_min_size
            )
            if loaded is not None and log_since <= loaded[1] <= now:
                state = IndexState(loaded[0], loaded[1], {}, owners=self._load_owners(collection_id))
            else:
                state = None
        state = self.catch_up(collection_id, coll, state) if state is not None else self.rebuild(collection_id, coll)
        self.states[collection_id] = state
        return state

    def catch_up(self, collection_id: int, coll: Collection, state: IndexState) -> IndexState:
        """Apply the logged template changes since ``state.generation`` (one read snapshot)."""
        with self.db.read() as conn:
            now, _ = _generation_and_floor(conn, collection_id)
            last_op: dict[int, int] = {}
            for tid, op in conn.execute(
                "SELECT template_id, op FROM index_log WHERE collection_id = ? AND generation > ? "
                "ORDER BY generation, rowid",
                (collection_id, state.generation),
            ):
                last_op[int(tid)] = int(op)
            removed = [t for t, op in last_op.items() if op < 0]
            added = [t for t, op in last_op.items() if op > 0]
            keys: list[int] = []
            owners: list[str] = []
            vectors: list[np.ndarray] = []
            for chunk in chunks(added):
                for tid, sid, model_id, blob in conn.execute(
                    f"SELECT id, subject_id, model_id, vector FROM templates WHERE id IN ({marks(chunk)})", chunk
                ):
                    keys.append(int(tid))
                    owners.append(sid)
                    vectors.append(open_vector(self.cipher, blob, sid, model_id))
            negatives = self._load_negatives(conn, collection_id, coll)
        state.patch(removed, keys, vectors, owners)
        log.debug("index of %s caught up: +%d -%d templates", coll.name, len(keys), len(removed))
        return IndexState(state.index, now, negatives, dirty=True, owners=state.owners)

    def rebuild(self, collection_id: int, coll: Collection) -> IndexState:
        """The collection's index built from every template in SQLite."""
        with self.db.read() as conn:
            now = generation(conn, collection_id)
            rows = conn.execute(
                "SELECT t.id, t.subject_id, t.model_id, t.vector FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ? ORDER BY t.id",
                (collection_id,),
            ).fetchall()
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.empty((len(rows), coll.dim), dtype=np.float32)
            for i, (_, sid, model_id, blob) in enumerate(rows):
                vectors[i] = open_vector(self.cipher, blob, sid, model_id)
            negatives = self._load_negatives(conn, collection_id, coll)
        log.debug("rebuilt the index of collection %s from %d templates", coll.name, len(rows))
        index = AdaptiveIndex.build(coll.dim, keys, vectors, ann_min_size=self.ann_min_size)
        owners = Owners()
        owners.set(keys.tolist(), [r[1] for r in rows])
        return IndexState(index, now, negatives, dirty=True, owners=owners)

    def _load_owners(self, collection_id: int) -> Owners:
        owners = Owners()
        rows = (
            self.db.reader()
            .execute(
                "SELECT t.id, t.subject_id FROM templates t JOIN subjects s ON s.id = t.subject_id "
                "WHERE s.collection_id = ?",
                (collection_id,),
            )
            .fetchall()
        )
        owners.set([r[0] for r in rows], [r[1] for r in rows])
        return owners

    def _load_negatives(self, conn: sqlite3.Connection, collection_id: int, coll: Collection) -> dict[str, np.ndarray]:
        rows = conn.execute(
            "SELECT n.subject_id, n.vector FROM negatives n JOIN subjects s ON s.id = n.subject_id "
            "WHERE s.collection_id = ? ORDER BY n.id",
            (collection_id,),
        ).fetchall()
        return group_negatives(self.cipher, coll.model_id, rows)

    # -- snapshots --------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write a snapshot of every loaded index that changed and is still current."""
        with self.lock:
            for cid, state in self.states.items():
                if state.dirty and state.generation == generation(self.db.reader(), cid):
                    save_index(self.snapshot_path(cid), state.index, generation=state.generation, cipher=self.cipher)
                    state.dirty = False
