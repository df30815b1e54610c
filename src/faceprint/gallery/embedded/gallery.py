"""The embedded backend: one directory, SQLite (WAL) as the source of truth, an in-process vector index.

Layout of a gallery directory::

    gallery.sqlite3 (+ -wal, -shm)   subjects, encrypted templates, negatives, consent, settings
    index-<collection id>.fpidx      encrypted snapshot of that collection's vector index (a cache)

Connections and transactions: :mod:`.database`. The index cache and how it follows writes made here and in
other processes: :mod:`.index_cache`. Re-embedding a collection: :mod:`.migration`. What every backend shares
(argument checks, identification, the key check): :class:`~faceprint.gallery.common.GalleryBase`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

from faceprint.gallery import sql
from faceprint.gallery.base import DEFAULT_COLLECTION
from faceprint.gallery.common import GalleryBase, Neighbours, NewTemplate
from faceprint.gallery.crypto import chip_aad, key_header, seal_vector, vector_aad
from faceprint.gallery.embedded.database import Database, chunks, marks
from faceprint.gallery.embedded.index_cache import Delta, IndexCache, generation
from faceprint.gallery.embedded.migration import SqliteMigration
from faceprint.gallery.errors import GalleryError, StorageError, SubjectExists
from faceprint.gallery.index import ANN_MIN_SIZE
from faceprint.gallery.model import (
    Collection,
    CollectionPolicy,
    Erasure,
    Sealed,
    SearchScope,
    Subject,
    Template,
    from_iso,
    to_iso,
    utcnow,
)
from faceprint.gallery.private import make_private_dir, warn_if_shared
from faceprint.gallery.schema import BUSY_TIMEOUT_MS

log = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
#: Generations of change log kept per collection (an index further behind is rebuilt, not caught up).
CHANGE_LOG_KEEP = 50_000


class EmbeddedGallery(GalleryBase[int], SqliteMigration):
    """The default :class:`~faceprint.gallery.base.Gallery` backend (see the module docstring), and
    :class:`~faceprint.gallery.base.Migratable`; collections are addressed by their row id."""

    backend_name = "embedded"

    def __init__(
        self,
        path: str | Path,
        *,
        key: bytes | None = None,
        create: bool = True,
        ann_min_size: int = ANN_MIN_SIZE,
        lock_timeout: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        """Open or create the gallery at ``path``.

        ``lock_timeout``: how long a write waits for another process's write before :class:`GalleryLocked`.
        ``ann_min_size``: the template count at which search switches from exact to HNSW.
        """
        self.path = Path(path)
        if not self.path.is_dir():
            if not create:
                raise GalleryError(f"no gallery at {self.path}")
            make_private_dir(self.path)  # names, consent and templates: 0700, whatever the umask
        self.db_path = self.path / DB_NAME
        self.ann_min_size = ann_min_size
        self._db = Database(self.db_path, busy_ms=int(lock_timeout * 1000), label=str(self.path))
        warn_if_shared(self.path, self.db_path)
        self._init_cipher(key)
        self._index = IndexCache(self._db, self.path, self.cipher, ann_min_size=ann_min_size)

    # -- lifecycle --------------------------------------------------------------------------------------
    def _load_key_check(self) -> tuple[bytes, str | None] | None:
        check = self._db.meta("key_check")
        if check is None:
            return None
        key_id = self._db.meta("key_id")
        return check, None if key_id is None else key_id.decode()

    def _store_key_check(self, check: bytes, key_id: str) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (check,))
            conn.execute("INSERT INTO meta VALUES ('key_id', ?)", (key_id,))

    def _key_setup(self) -> AbstractContextManager[object]:
        return self._db.write()

    def _load_meta(self, name: str) -> bytes | None:
        return self._db.meta(name)

    def _store_meta(self, values: Mapping[str, bytes | None]) -> None:
        with self._db.write() as conn:
            for name, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (name,))
                else:
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (name, value))

    def _sealed_rows(self, exclude_key_id: str, limit: int) -> list[Sealed]:
        head = key_header(exclude_key_id)
        out: list[Sealed] = []
        with self._db.read() as conn:
            for tid, sid, model, blob in conn.execute(
                "SELECT id, subject_id, model_id, vector FROM templates WHERE substr(vector, 1, 9) != ? LIMIT ?",
                (head, limit),
            ):
                out.append(Sealed("templates", int(tid), "vector", vector_aad(sid, model), bytes(blob)))
            for tid, sid, blob in conn.execute(
                "SELECT id, subject_id, chip FROM templates WHERE chip IS NOT NULL AND substr(chip, 1, 9) != ? LIMIT ?",
                (head, limit),
            ):
                out.append(Sealed("templates", int(tid), "chip", chip_aad(sid), bytes(blob)))
            for nid, sid, model, blob in conn.execute(
                "SELECT n.id, n.subject_id, c.model_id, n.vector FROM negatives n JOIN subjects s ON s.id = "
                "n.subject_id JOIN collections c ON c.id = s.collection_id WHERE substr(n.vector, 1, 9) != ? LIMIT ?",
                (head, limit),
            ):
                out.append(Sealed("negatives", int(nid), "vector", vector_aad(sid, model, "neg"), bytes(blob)))
            for tid, sid, model, blob in conn.execute(
                "SELECT m.template_id, t.subject_id, m.model_id, m.vector FROM migration_staging m JOIN templates t "
                "ON t.id = m.template_id WHERE substr(m.vector, 1, 9) != ? LIMIT ?",
                (head, limit),
            ):
                out.append(Sealed("migration_staging", int(tid), "vector", vector_aad(sid, model), bytes(blob)))
        return out[:limit]

    def _swap_sealed(self, swaps: Sequence[tuple[Sealed, bytes]]) -> int:
        done = 0
        with self._db.write() as conn:
            for row, new in swaps:
                key = "template_id" if row.table == "migration_staging" else "id"
                done += conn.execute(
                    f"UPDATE {row.table} SET {row.column} = ? WHERE {key} = ? AND {row.column} = ?",
                    (new, row.row, row.blob),
                ).rowcount
        return done

    def _after_rotation(self) -> None:
        """Index snapshots were encrypted under the old key: delete them (saved again, under the new key)."""
        with self._index.lock:
            for cid, state in self._index.states.items():
                state.dirty = True
                self._index.snapshot_path(cid).unlink(missing_ok=True)
        for path in self.path.glob("index-*.fpidx"):
            path.unlink(missing_ok=True)

    def _before_close(self) -> None:
        try:
            self.prune_change_log()
            self.flush_index()
        except (GalleryError, OSError, sqlite3.Error):  # a cache that could not be saved is rebuilt later
            log.warning("could not save the vector index of %s; it will be rebuilt", self.path, exc_info=True)

    def _release(self) -> None:
        self._db.close()

    def check_storage(self) -> StorageError | None:
        """Why writes to this gallery would fail now (disk full, read-only), else ``None`` (cheap: probed
        at most every few seconds; see :meth:`Database.check_storage`)."""
        return self._db.check_storage()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Group many writes into one transaction (one fsync): all of them are stored, or none.

        For imports and bulk enrolment of already-computed faceprints; ordinary enrolment commits each
        photo on its own so that everything acknowledged survives a crash.
        """
        with self._db.write():
            yield

    def _generation(self, collection_id: int, conn: sqlite3.Connection | None = None) -> int:
        """The collection's change counter (what cached indexes compare themselves with)."""
        return generation(conn or self._db.reader(), collection_id)

    # -- collections ------------------------------------------------------------------------------------
    def _create_collection(self, name: str, model_id: str, dim: int) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO collections (name, model_id, dim, created_at) VALUES (?, ?, ?, ?)",
                (name, model_id, dim, to_iso(utcnow())),
            )

    def _find_collection(self, name: str) -> tuple[int, Collection] | None:
        row = (
            self._db.reader()
            .execute("SELECT id, name, model_id, dim, created_at FROM collections WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            return None
        created = from_iso(row[4])
        assert created is not None
        return int(row[0]), Collection(row[1], row[2], int(row[3]), created)

    def list_collections(self) -> list[Collection]:
        rows = self._db.reader().execute("SELECT name FROM collections ORDER BY name").fetchall()
        return [self._collection(r[0])[1] for r in rows]

    # -- subjects ---------------------------------------------------------------------------------------
    def _insert_subject(self, handle: int, new: Subject) -> Subject:
        columns = sql.subject_values(new, sql.SUBJECT_FIELDS, to_iso)
        try:
            with self._db.write() as conn:
                conn.execute(
                    f"INSERT INTO subjects (collection_id, {', '.join(c for c, _ in columns)}) "
                    f"VALUES (?, {marks(columns)})",
                    (handle, *(v for _, v in columns)),
                )
        except sqlite3.IntegrityError:
            raise SubjectExists(new.name, new.collection) from None
        return self.get_subject(new.id, collection=new.collection)

    def _find_subject(self, handle: int, collection: str, ref: str) -> Subject | None:
        row = sql.subject_row(self._db.reader(), ref, handle)
        return None if row is None else sql.subject_from_row(row, collection)

    def _subject_page(
        self, handle: int, collection: str, after: tuple[str, str], limit: int
    ) -> tuple[list[Subject], int]:
        with self._db.read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM subjects WHERE collection_id = ?", (handle,)).fetchone()[0]
            rows = conn.execute(
                f"SELECT {sql.SUBJECT_COLUMNS} FROM subjects s WHERE s.collection_id = ? "
                "AND (s.name, s.id) > (?, ?) ORDER BY s.name, s.id LIMIT ?",
                (handle, *after, limit),
            ).fetchall()
        return [sql.subject_from_row(r, collection) for r in rows], int(total)

    def _update_subject(self, handle: int, current: Subject, updated: Subject, changed: frozenset[str]) -> bool:
        columns = sql.subject_values(updated, sorted(changed), to_iso)
        try:
            with self._db.write() as conn:
                cur = conn.execute(
                    f"UPDATE subjects SET {', '.join(f'{c} = ?' for c, _ in columns)} WHERE id = ?",
                    (*(v for _, v in columns), current.id),
                )
        except sqlite3.IntegrityError:
            raise SubjectExists(updated.name, current.collection) from None
        return cur.rowcount > 0

    def _delete_subject(self, handle: int, ref: str) -> Erasure | None:
        with self._db.write() as conn:
            row = sql.subject_row(conn, ref, handle)
            if row is None:
                return None
            subject = sql.subject_from_row(row, self._collection_name(conn, handle))
            erasure = self._erasure_counts(conn, subject)
            self._index.record(self._delete_subjects(conn, handle, [subject.id]), conn)
        return erasure

    def _collection_name(self, conn: sqlite3.Connection, handle: int) -> str:
        return str(conn.execute("SELECT name FROM collections WHERE id = ?", (handle,)).fetchone()[0])

    def _erasure_counts(self, conn: sqlite3.Connection, subject: Subject) -> Erasure:
        """What deleting ``subject`` removes, counted inside the deleting transaction."""
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM templates WHERE subject_id = ?", (subject.id,))]
        chips, staged = conn.execute(
            "SELECT (SELECT COUNT(*) FROM templates WHERE subject_id = ?1 AND chip IS NOT NULL), "
            "(SELECT COUNT(*) FROM migration_staging m JOIN templates t ON t.id = m.template_id "
            "WHERE t.subject_id = ?1)",
            (subject.id,),
        ).fetchone()
        negatives = conn.execute("SELECT COUNT(*) FROM negatives WHERE subject_id = ?", (subject.id,)).fetchone()[0]
        return Erasure(
            subject.id, subject.name, subject.collection, self.backend_name, len(ids), int(chips), int(negatives),
            subject.consent is not None, len(ids), int(staged), self._forget_logged_adds(conn, ids), tuple(ids),
        )  # fmt: skip

    def _forget_logged_adds(self, conn: sqlite3.Connection, template_ids: Sequence[int]) -> int:
        """Delete the change-log rows that recorded these templates being added (their removal is logged by
        the delete itself, which is all an index catching up needs: a template never seen is never added)."""
        dropped = 0
        for chunk in chunks(list(template_ids)):
            dropped += conn.execute(
                f"DELETE FROM index_log WHERE op = 1 AND template_id IN ({marks(chunk)})", chunk
            ).rowcount
        return dropped

    def _delete_subjects(self, conn: sqlite3.Connection, handle: int, subject_ids: list[str]) -> Delta:
        delta = self._index.begin(conn, handle, removed_subjects=list(subject_ids))
        for chunk in chunks(subject_ids):
            delta.remove_keys += [
                int(r[0]) for r in conn.execute(f"SELECT id FROM templates WHERE subject_id IN ({marks(chunk)})", chunk)
            ]
            conn.execute(f"DELETE FROM subjects WHERE id IN ({marks(chunk)})", chunk)
        self._db.after_commit(lambda: self._scrub(handle))
        return delta

    def _scrub(self, handle: int) -> None:
        """After an erasure: drop the collection's index snapshot (it held the erased vectors; the index in
        memory no longer does and is saved again on close) and move the WAL's pages into the database and
        truncate it (its frames held the rows as they were written). Deleted cells were already zeroed
        (``secure_delete``). Best effort: a reader in another process may delay the truncation."""
        self._index.snapshot_path(handle).unlink(missing_ok=True)
        try:
            busy = self._db.writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("could not checkpoint %s after an erasure: %s", self.path, exc)
            return
        if busy:
            log.warning("the WAL of %s could not be truncated after an erasure (a reader held it)", self.path)

    def _expired(self, now: datetime) -> list[Subject]:
        rows = self._db.reader().execute(
            f"SELECT {sql.SUBJECT_COLUMNS}, c.name FROM subjects s JOIN collections c ON c.id = s.collection_id "
            "WHERE s.expires_at IS NOT NULL AND s.expires_at <= ? ORDER BY c.name, s.name",
            (to_iso(now),),
        )
        return [sql.subject_from_row(r, str(r[7])) for r in rows.fetchall()]

    # -- templates --------------------------------------------------------------------------------------
    def _insert_templates(self, handle: int, ref: str, items: Sequence[NewTemplate]) -> list[Template] | None:
        now = to_iso(utcnow())
        ids: list[int] = []
        with self._db.write() as conn:
            row = sql.subject_row(conn, ref, handle)
            if row is None:
                return None
            sid = str(row[0])
            delta = self._index.begin(conn, handle)
            for item in items:
                vector, chip = item.seal(self.cipher, sid)
                cur = conn.execute(
                    "INSERT INTO templates (subject_id, model_id, vector, quality, box, source_sha256, chip, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, item.model_id, vector, item.quality, item.box_json, item.source_sha256, chip, now),
                )
                assert cur.lastrowid is not None
                ids.append(int(cur.lastrowid))
                delta.add_keys.append(int(cur.lastrowid))
                delta.add_vectors.append(item.vector)
                delta.add_subjects.append(sid)
            self._index.record(delta, conn)
        templates = {t.id: t for t in self._templates_of(handle, sid)}
        return [templates[i] for i in ids if i in templates]

    def _templates_of(self, handle: int, subject_id: str) -> list[Template]:
        rows = self._db.reader().execute(
            f"SELECT {sql.TEMPLATE_COLUMNS} FROM templates WHERE subject_id = ? ORDER BY id", (subject_id,)
        )
        return [sql.template_from_row(r) for r in rows.fetchall()]

    def _vectors_of(self, handle: int, subject_id: str) -> list[tuple[int, str, bytes]]:
        rows = self._db.reader().execute(
            "SELECT id, model_id, vector FROM templates WHERE subject_id = ? ORDER BY id", (subject_id,)
        )
        return [(int(r[0]), str(r[1]), r[2]) for r in rows.fetchall()]

    def _chip_of(self, template_id: int) -> tuple[str, bytes | None] | None:
        row = self._db.reader().execute("SELECT subject_id, chip FROM templates WHERE id = ?", (template_id,))
        found = row.fetchone()
        return None if found is None else (str(found[0]), found[1])

    def _delete_template(self, template_id: int) -> Erasure | None:
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT s.collection_id, s.id, s.name, t.chip IS NOT NULL, c.name, "
                "(SELECT COUNT(*) FROM migration_staging m WHERE m.template_id = t.id) FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id JOIN collections c ON c.id = s.collection_id WHERE t.id = ?",
                (template_id,),
            ).fetchone()
            if row is None:
                return None
            cid = int(row[0])
            delta = self._index.begin(conn, cid, remove_keys=[template_id])
            logged = self._forget_logged_adds(conn, [template_id])
            conn.execute("DELETE FROM templates WHERE id = ?", (template_id,))
            self._index.record(delta, conn)
            self._db.after_commit(lambda: self._scrub(cid))
        return Erasure(
            str(row[1]), str(row[2]), str(row[4]), self.backend_name, 1, int(row[3]), 0, False, 1, int(row[5]),
            logged, (template_id,),
        )  # fmt: skip

    # -- negatives --------------------------------------------------------------------------------------
    def _insert_negative(self, handle: int, coll: Collection, ref: str, vector: np.ndarray) -> bool:
        with self._db.write() as conn:
            row = sql.subject_row(conn, ref, handle)
            if row is None:
                return False
            sid = str(row[0])
            delta = self._index.begin(conn, handle, negatives=[(sid, vector)])
            conn.execute(
                "INSERT INTO negatives (subject_id, vector, created_at) VALUES (?, ?, ?)",
                (sid, seal_vector(self.cipher, vector, sid, coll.model_id, "neg"), to_iso(utcnow())),
            )
            self._index.record(delta, conn)
        return True

    def _negative_blobs(self, handle: int, subject_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        conn = self._db.reader()
        rows: list[tuple[str, bytes]] = []
        for chunk in chunks(subject_ids):
            rows += conn.execute(
                f"SELECT subject_id, vector FROM negatives WHERE subject_id IN ({marks(chunk)}) ORDER BY id", chunk
            ).fetchall()
        return rows

    # -- search -----------------------------------------------------------------------------------------
    def _subject_count(self, handle: int) -> int:
        row = self._db.reader().execute("SELECT COUNT(*) FROM subjects WHERE collection_id = ?", (handle,))
        return int(row.fetchone()[0])

    def _nearest(
        self, handle: int, coll: Collection, probes: np.ndarray, k: int, excluded: frozenset[str] = frozenset()
    ) -> Neighbours:
        return self._index.search(handle, coll, probes, k, excluded)

    def _excluded(self, handle: int, scope: SearchScope) -> frozenset[str]:
        """:meth:`SearchScope.admits` in SQL (JSON1). Without a purpose or required consent only the expired
        and the withdrawn are read, each through an index; otherwise every subject's consent is checked."""
        args = {"c": handle, "now": to_iso(scope.now), "purpose": scope.purpose}
        if not scope.strict:
            sql = (
                "SELECT id FROM subjects WHERE collection_id = :c AND expires_at IS NOT NULL AND expires_at <= :now "
                "UNION SELECT id FROM subjects WHERE collection_id = :c "
                "AND json_extract(consent, '$.withdrawn_at') IS NOT NULL"
            )
        else:
            sql = (
                "SELECT id FROM subjects WHERE collection_id = :c AND ("
                "(expires_at IS NOT NULL AND expires_at <= :now) OR consent IS NULL "
                "OR json_extract(consent, '$.withdrawn_at') IS NOT NULL "
                "OR (:purpose IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM json_each(consent, '$.purposes') WHERE value = :purpose) "
                "AND coalesce(json_extract(consent, '$.purpose'), '') != :purpose))"
            )
        return frozenset(str(r[0]) for r in self._db.reader().execute(sql, args).fetchall())

    def _expiring(self, handle: int, now: datetime, until: datetime) -> int:
        row = self._db.reader().execute(
            "SELECT COUNT(*) FROM subjects WHERE collection_id = ? AND expires_at > ? AND expires_at <= ?",
            (handle, to_iso(now), to_iso(until)),
        )
        return int(row.fetchone()[0])

    # -- policy -----------------------------------------------------------------------------------------
    def _load_policy(self, handle: int) -> CollectionPolicy:
        row = self._db.reader().execute("SELECT policy FROM collections WHERE id = ?", (handle,)).fetchone()
        return CollectionPolicy.from_json(None if row is None else row[0])

    def _store_policy(self, handle: int, collection: str, policy: CollectionPolicy) -> None:
        with self._db.write() as conn:
            conn.execute("UPDATE collections SET policy = ? WHERE id = ?", (policy.to_json(), handle))

    def _subject_names(self, handle: int, subject_ids: Sequence[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        conn = self._db.reader()
        for chunk in chunks(subject_ids):
            names.update(conn.execute(f"SELECT id, name FROM subjects WHERE id IN ({marks(chunk)})", chunk).fetchall())
        return names

    # -- the index --------------------------------------------------------------------------------------
    def flush_index(self) -> None:
        """Write a snapshot of every loaded index that changed and is still current."""
        self._index.flush()

    def rebuild_index(self, collection: str = DEFAULT_COLLECTION) -> None:
        """Drop the cached index of a collection and build it again from SQLite."""
        cid, coll = self._collection(collection)
        with self._index.lock:
            self._index.states[cid] = self._index.rebuild(cid, coll)

    # -- housekeeping -----------------------------------------------------------------------------------
    def _counts(self, handle: int) -> tuple[int, int, int]:
        row = self._db.reader().execute(
            "SELECT (SELECT COUNT(*) FROM subjects WHERE collection_id = ?1), "
            "(SELECT COUNT(*) FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ?1), "
            "(SELECT COUNT(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id WHERE s.collection_id = ?1)",
            (handle,),
        )
        subjects, templates, negatives = row.fetchone()
        return int(subjects), int(templates), int(negatives)

    def _index_kind(self, coll: Collection, templates: int) -> str:
        return "exact" if templates < self.ann_min_size else "hnsw"

    def _disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def prune_change_log(self, *, keep: int = CHANGE_LOG_KEEP) -> int:
        """Delete the change-log rows of all but the newest ``keep`` generations of each collection, and raise
        its ``log_since`` to match: an index (a snapshot, another process's) older than that is rebuilt from
        the templates instead of caught up. Run on close; returns the rows deleted."""
        if keep < 0:
            raise GalleryError(f"keep must be at least 0, got {keep}")
        dropped = 0
        with self._db.write() as conn:
            for cid, gen, since in conn.execute("SELECT id, generation, log_since FROM collections").fetchall():
                floor = max(int(since), int(gen) - keep)
                if floor > int(since):
                    dropped += conn.execute(
                        "DELETE FROM index_log WHERE collection_id = ? AND generation <= ?", (cid, floor)
                    ).rowcount
                    conn.execute("UPDATE collections SET log_since = ? WHERE id = ?", (floor, cid))
        return dropped

    def scrub(self) -> str:
        """VACUUM (the database file is rewritten without free pages), truncate the WAL, and save fresh index
        snapshots. Deleted cells were already zeroed on delete (``secure_delete``)."""
        cids = [int(r[0]) for r in self._db.reader().execute("SELECT id FROM collections").fetchall()]
        for cid in cids:
            self._index.snapshot_path(cid).unlink(missing_ok=True)
        self.prune_change_log()
        busy = self._db.vacuum()
        with self._index.lock:
            self._index.states.clear()  # rebuilt (and saved on close) from what remains
        return "database vacuumed, WAL truncated" + (" (a reader delayed the truncation)" if busy else "")

    def integrity_check(self) -> list[str]:
        """SQLite's own integrity and foreign-key checks; an empty list means consistent."""
        conn = self._db.reader()
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        problems += [f"foreign key: {tuple(r)}" for r in conn.execute("PRAGMA foreign_key_check").fetchall()]
        return problems
