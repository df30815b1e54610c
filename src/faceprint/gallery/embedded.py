"""The embedded backend: one directory, SQLite (WAL) as the source of truth, an in-process vector index.

Layout of a gallery directory::

    gallery.sqlite3 (+ -wal, -shm)   subjects, encrypted templates, negatives, consent, settings
    index-<collection id>.fpidx      encrypted snapshot of that collection's vector index (a cache)

Concurrency: one write connection serialised by a lock, one read connection per thread (WAL readers see
the last committed state and never block the writer). Other processes may write too; SQLite serialises
them, and a writer that waits longer than the busy timeout gets :class:`GalleryLocked`. Each collection
carries a ``generation`` that triggers bump on every change; the in-memory index records the generation it
reflects and is patched (own writes) or rebuilt (someone else's) before it answers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from faceprint.gallery.base import DEFAULT_COLLECTION, UNSET, Unset
from faceprint.gallery.crypto import TemplateCipher, resolve_key
from faceprint.gallery.errors import (
    CollectionNotFound,
    ContractMismatch,
    GalleryCorrupt,
    GalleryError,
    GalleryLocked,
    MissingChips,
    SubjectExists,
    SubjectNotFound,
    TemplateNotFound,
)
from faceprint.gallery.index import ANN_MIN_SIZE, AdaptiveIndex, load_index, save_index
from faceprint.gallery.model import (
    Collection,
    Consent,
    GalleryStats,
    Identification,
    Metadata,
    Page,
    Subject,
    Template,
    from_iso,
    metadata_json,
    to_iso,
    utcnow,
)
from faceprint.gallery.schema import BUSY_TIMEOUT_MS, connect, migrate
from faceprint.gallery.scoring import Hit, aggregate, apply_negatives, assign_one_to_one
from faceprint.matching import Calibration, ThresholdRule, normalise
from faceprint.types import Faceprint

log = logging.getLogger(__name__)

DB_NAME = "gallery.sqlite3"
_SQL_CHUNK = 500


def _vector_aad(subject_id: str, model_id: str, kind: str = "tpl") -> bytes:
    return f"faceprint:{kind}:{subject_id}:{model_id}".encode()


def _chip_aad(subject_id: str) -> bytes:
    return f"faceprint:chip:{subject_id}".encode()


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _Owners:
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

    def lookup(self, template_ids: np.ndarray) -> np.ndarray:
        """Subject slots of ``template_ids`` (-1 for unknown or missing ids); any shape."""
        ids = np.asarray(template_ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self.by_template))
        out = np.full(ids.shape, -1, dtype=np.int32)
        out[ok] = self.by_template[ids[ok]]
        return out


@dataclass(frozen=True)
class PendingChip:
    """A template still to be re-embedded by a migration, with its decrypted chip."""

    template_id: int
    subject_id: str
    subject: str
    chip: np.ndarray
    chip_template: str | None  # None: the template of the model the row was enrolled with


@dataclass(frozen=True)
class MigrationCounts:
    collection: Collection
    templates: int
    with_chips: int
    subjects: int
    subjects_missing_chips: list[str]
    chip_templates: dict[str | None, int]  # recorded chip template (None: the enrolling model's) → templates
    staged: int  # vectors for the target model kept from an interrupted run
    negatives: int

    @property
    def missing_chips(self) -> int:
        return self.templates - self.with_chips


@dataclass(frozen=True)
class MigrationSwitch:
    templates: int
    subjects: int
    dropped_templates: int
    dropped_negatives: int
    embedded_at_switch: int  # enrolled while the migration ran, embedded inside the switch transaction


@dataclass
class _IndexState:
    index: AdaptiveIndex
    generation: int
    negatives: dict[str, np.ndarray] = field(default_factory=dict)
    dirty: bool = False
    owners: _Owners = field(default_factory=_Owners)


@dataclass
class _Delta:
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


class EmbeddedGallery:
    """The default :class:`~faceprint.gallery.base.Gallery` backend (see the module docstring)."""

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
        self._busy_ms = int(lock_timeout * 1000)
        if not self.path.is_dir():
            if not create:
                raise GalleryError(f"no gallery at {self.path}")
            self.path.mkdir(parents=True, exist_ok=True)
        self.db_path = self.path / DB_NAME
        self.ann_min_size = ann_min_size
        self._write_lock = threading.RLock()
        self._index_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._indexes: dict[int, _IndexState] = {}
        self._tx_depth = 0
        self._tx_owner = 0
        self._pending: list[_Delta] = []
        self._closed = False
        try:
            self._wconn = connect(self.db_path, busy_timeout_ms=self._busy_ms)
            migrate(self._wconn)
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise GalleryLocked(str(self.path)) from None
            raise GalleryCorrupt(f"{self.db_path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise GalleryCorrupt(f"{self.db_path} is not a faceprint gallery database: {exc}") from None
        try:
            self.cipher = self._open_cipher(key)
        except BaseException:  # a wrong or missing key must not leave connections open
            self._close_connections()
            raise

    # -- lifecycle --------------------------------------------------------------------------------------
    def _open_cipher(self, key: bytes | None) -> TemplateCipher:
        check = self._meta("key_check")
        if check is None:
            with self._write() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
                if row is None:  # a new gallery: this is the only place a key file may be created
                    secret, origin = resolve_key(key, create=True)
                    cipher = TemplateCipher(secret, origin)
                    conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (cipher.check_value(),))
                    conn.execute("INSERT INTO meta VALUES ('key_id', ?)", (cipher.key_id,))
                    return cipher
                check = bytes(row[0])
        secret, origin = resolve_key(key, create=False)
        cipher = TemplateCipher(secret, origin)
        expected = self._meta("key_id")
        cipher.verify(check, None if expected is None else bytes(expected).decode())
        return cipher

    def close(self) -> None:
        """Save fresh index snapshots and close every connection (the gallery is unusable afterwards)."""
        if self._closed:
            return
        try:
            self.flush_index()
        except (GalleryError, OSError, sqlite3.Error):  # a cache that could not be saved is rebuilt later
            log.warning("could not save the vector index of %s; it will be rebuilt", self.path, exc_info=True)
        self._close_connections()

    def _close_connections(self) -> None:
        self._closed = True
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._wconn.close()

    def __enter__(self) -> EmbeddedGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush_index(self) -> None:
        """Write a snapshot of every loaded index that changed and is still current."""
        with self._index_lock:
            for cid, state in self._indexes.items():
                if state.dirty and state.generation == self._generation(cid):
                    save_index(self._index_path(cid), state.index, generation=state.generation, cipher=self.cipher)
                    state.dirty = False

    def _index_path(self, collection_id: int) -> Path:
        return self.path / f"index-{collection_id}.fpidx"

    # -- connections and transactions -------------------------------------------------------------------
    def _in_own_transaction(self) -> bool:
        return bool(self._tx_depth) and self._tx_owner == threading.get_ident()

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise GalleryError(f"the gallery at {self.path} is closed")
        if self._in_own_transaction():  # reads inside bulk() must see its uncommitted writes
            return self._wconn
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path, busy_timeout_ms=self._busy_ms)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; inside :meth:`bulk` it joins the open one. Index patches (deltas) recorded
        with :meth:`_finish` are applied after COMMIT, in commit order, and dropped on ROLLBACK."""
        if self._closed:
            raise GalleryError(f"the gallery at {self.path} is closed")
        with self._write_lock:
            conn = self._wconn
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
                    raise GalleryLocked(str(self.path)) from None
                raise
            self._tx_depth = 1
            self._tx_owner = threading.get_ident()
            self._pending = []
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._pending = []
                raise
            finally:
                self._tx_depth = 0
            pending, self._pending = self._pending, []
            for delta in pending:
                self._apply(delta)

    def _finish(self, delta: _Delta, conn: sqlite3.Connection) -> None:
        delta.generation_after = self._generation(delta.collection_id, conn)
        self._pending.append(delta)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Group many writes into one transaction (one fsync): all of them are stored, or none.

        For imports and bulk enrolment of already-computed faceprints; ordinary enrolment commits each
        photo on its own so that everything acknowledged survives a crash.
        """
        with self._write():
            yield

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        conn = self._reader()
        if self._in_own_transaction():
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _meta(self, key: str) -> bytes | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0]) if not isinstance(row[0], str) else row[0].encode()

    # -- collections ------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, model_id: str, dim: int) -> Collection:
        existing = self._find_collection(name)
        if existing is None:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO collections (name, model_id, dim, created_at) VALUES (?, ?, ?, ?)",
                    (name, model_id, int(dim), to_iso(utcnow())),
                )
            existing = self._find_collection(name)
            assert existing is not None
        _, coll = existing
        if coll.model_id != model_id or coll.dim != dim:
            raise ContractMismatch(name, f"{coll.model_id} ({coll.dim}-d)", f"{model_id} ({dim}-d)")
        return coll

    def _find_collection(self, name: str) -> tuple[int, Collection] | None:
        row = (
            self._reader()
            .execute("SELECT id, name, model_id, dim, created_at FROM collections WHERE name = ?", (name,))
            .fetchone()
        )
        if row is None:
            return None
        created = from_iso(row[4])
        assert created is not None
        return int(row[0]), Collection(row[1], row[2], int(row[3]), created)

    def _collection(self, name: str) -> tuple[int, Collection]:
        found = self._find_collection(name)
        if found is None:
            raise CollectionNotFound(name)
        return found

    def get_collection(self, name: str = DEFAULT_COLLECTION) -> Collection:
        return self._collection(name)[1]

    def list_collections(self) -> list[Collection]:
        rows = self._reader().execute("SELECT name FROM collections ORDER BY name").fetchall()
        return [self._collection(r[0])[1] for r in rows]

    def _generation(self, collection_id: int, conn: sqlite3.Connection | None = None) -> int:
        row = (
            (conn or self._reader())
            .execute("SELECT generation FROM collections WHERE id = ?", (collection_id,))
            .fetchone()
        )
        return -1 if row is None else int(row[0])

    # -- subjects ---------------------------------------------------------------------------------------
    _SUBJECT_COLS = (
        "s.id, s.name, s.metadata, s.consent, s.created_at, s.expires_at, "
        "(SELECT COUNT(*) FROM templates t WHERE t.subject_id = s.id)"
    )

    @staticmethod
    def _subject_from_row(row: Sequence[object], collection: str) -> Subject:
        consent = None if row[3] is None else Consent.from_dict(json.loads(str(row[3])))
        created = from_iso(str(row[4]))
        assert created is not None
        return Subject(
            id=str(row[0]),
            name=str(row[1]),
            collection=collection,
            metadata=json.loads(str(row[2])),
            consent=consent,
            created_at=created,
            expires_at=from_iso(None if row[5] is None else str(row[5])),
            template_count=int(row[6]),  # type: ignore[call-overload]
        )

    def add_subject(
        self,
        name: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        metadata: Metadata | None = None,
        consent: Consent | None = None,
        expires_at: datetime | None = None,
        subject_id: str | None = None,
    ) -> Subject:
        if not name or not name.strip():
            raise GalleryError("a subject needs a non-empty name")
        cid, _ = self._collection(collection)
        sid = subject_id or uuid.uuid4().hex
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO subjects (id, collection_id, name, metadata, consent, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        cid,
                        name,
                        metadata_json(metadata or {}),
                        None if consent is None else json.dumps(consent.to_dict()),
                        to_iso(utcnow()),
                        to_iso(expires_at),
                    ),
                )
        except sqlite3.IntegrityError:
            raise SubjectExists(name, collection) from None
        return self.get_subject(sid, collection=collection)

    def _subject_row(self, conn: sqlite3.Connection, ref: str, collection_id: int) -> Sequence[object] | None:
        sql = f"SELECT {self._SUBJECT_COLS} FROM subjects s WHERE s.collection_id = ? AND s.{{col}} = ?"
        row = conn.execute(sql.format(col="id"), (collection_id, ref)).fetchone()
        if row is None:
            row = conn.execute(sql.format(col="name"), (collection_id, ref)).fetchone()
        return row

    def find_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject | None:
        cid, _ = self._collection(collection)
        row = self._subject_row(self._reader(), ref, cid)
        return None if row is None else self._subject_from_row(row, collection)

    def get_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject:
        subject = self.find_subject(ref, collection=collection)
        if subject is None:
            raise SubjectNotFound(ref, collection)
        return subject

    def list_subjects(
        self, *, collection: str = DEFAULT_COLLECTION, limit: int = 100, cursor: str | None = None
    ) -> Page:
        if limit < 1:
            raise GalleryError(f"limit must be at least 1, got {limit}")
        cid, _ = self._collection(collection)
        after: tuple[str, str] = ("", "")
        if cursor:
            try:
                name, sid = json.loads(cursor)
                after = (str(name), str(sid))
            except (ValueError, TypeError):
                raise GalleryError(f"invalid page cursor {cursor!r}") from None
        with self._read() as conn:
            total = int(conn.execute("SELECT COUNT(*) FROM subjects WHERE collection_id = ?", (cid,)).fetchone()[0])
            rows = conn.execute(
                f"SELECT {self._SUBJECT_COLS} FROM subjects s WHERE s.collection_id = ? "
                "AND (s.name, s.id) > (?, ?) ORDER BY s.name, s.id LIMIT ?",
                (cid, after[0], after[1], limit + 1),
            ).fetchall()
        items = tuple(self._subject_from_row(r, collection) for r in rows[:limit])
        next_cursor = json.dumps([items[-1].name, items[-1].id]) if len(rows) > limit else None
        return Page(items, next_cursor, total)

    def update_subject(
        self,
        ref: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        name: str | Unset = UNSET,
        metadata: Metadata | Unset = UNSET,
        consent: Consent | Unset | None = UNSET,
        expires_at: datetime | Unset | None = UNSET,
    ) -> Subject:
        subject = self.get_subject(ref, collection=collection)
        sets: list[str] = []
        values: list[object] = []
        if not isinstance(name, Unset):
            if not name.strip():
                raise GalleryError("a subject needs a non-empty name")
            sets.append("name = ?")
            values.append(name)
        if not isinstance(metadata, Unset):
            sets.append("metadata = ?")
            values.append(metadata_json(metadata))
        if not isinstance(consent, Unset):
            sets.append("consent = ?")
            values.append(None if consent is None else json.dumps(consent.to_dict()))
        if not isinstance(expires_at, Unset):
            sets.append("expires_at = ?")
            values.append(to_iso(expires_at))
        if sets:
            try:
                with self._write() as conn:
                    conn.execute(f"UPDATE subjects SET {', '.join(sets)} WHERE id = ?", (*values, subject.id))
            except sqlite3.IntegrityError:
                raise SubjectExists(str(name), collection) from None
        return self.get_subject(subject.id, collection=collection)

    def delete_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        cid, _ = self._collection(collection)
        with self._write() as conn:
            row = self._subject_row(conn, ref, cid)
            if row is None:
                raise SubjectNotFound(ref, collection)
            self._finish(self._delete_subjects(conn, cid, [str(row[0])]), conn)

    def _delete_subjects(self, conn: sqlite3.Connection, cid: int, subject_ids: list[str]) -> _Delta:
        delta = _Delta(cid, self._generation(cid, conn), removed_subjects=list(subject_ids))
        for chunk in _chunks(subject_ids):
            marks = ",".join("?" * len(chunk))
            delta.remove_keys += [
                int(r[0]) for r in conn.execute(f"SELECT id FROM templates WHERE subject_id IN ({marks})", chunk)
            ]
            conn.execute(f"DELETE FROM subjects WHERE id IN ({marks})", chunk)
        return delta

    def purge_expired(self, *, now: datetime | None = None) -> list[Subject]:
        cutoff = to_iso(now or utcnow())
        purged: list[Subject] = []
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {self._SUBJECT_COLS}, c.name, c.id FROM subjects s JOIN collections c "
                "ON c.id = s.collection_id WHERE s.expires_at IS NOT NULL AND s.expires_at <= ?",
                (cutoff,),
            ).fetchall()
            by_collection: dict[int, list[str]] = {}
            for row in rows:
                purged.append(self._subject_from_row(row, str(row[7])))
                by_collection.setdefault(int(row[8]), []).append(str(row[0]))
            for cid, ids in by_collection.items():
                self._finish(self._delete_subjects(conn, cid, ids), conn)
        return purged

    # -- templates --------------------------------------------------------------------------------------
    def _check_contract(self, coll: Collection, faceprints: Sequence[Faceprint]) -> None:
        for fp in faceprints:
            if fp.model_id != coll.model_id or fp.dim != coll.dim:
                raise ContractMismatch(coll.name, f"{coll.model_id} ({coll.dim}-d)", f"{fp.model_id} ({fp.dim}-d)")

    def add_templates(
        self,
        ref: str,
        faceprints: Sequence[Faceprint],
        *,
        collection: str = DEFAULT_COLLECTION,
        source_sha256: Sequence[str | None] | None = None,
        chips: Sequence[np.ndarray] | None = None,
    ) -> list[Template]:
        cid, coll = self._collection(collection)
        self._check_contract(coll, faceprints)
        shas = list(source_sha256) if source_sha256 is not None else [None] * len(faceprints)
        if len(shas) != len(faceprints) or (chips is not None and len(chips) != len(faceprints)):
            raise GalleryError("source_sha256 and chips must have one entry per faceprint")
        vectors = normalise(np.stack([fp.vector for fp in faceprints])) if faceprints else None
        now = to_iso(utcnow())
        ids: list[int] = []
        with self._write() as conn:
            row = self._subject_row(conn, ref, cid)
            if row is None:
                raise SubjectNotFound(ref, collection)
            sid = str(row[0])
            delta = _Delta(cid, self._generation(cid, conn))
            for i, fp in enumerate(faceprints):
                assert vectors is not None
                vec = vectors[i]
                box = None if fp.detection is None else json.dumps([float(v) for v in fp.detection.box])
                chip = None
                if chips is not None:
                    chip_arr = np.ascontiguousarray(chips[i], dtype=np.uint8)
                    header = json.dumps(list(chip_arr.shape)).encode() + b"\n"
                    chip = self.cipher.encrypt(header + chip_arr.tobytes(), _chip_aad(sid))
                cur = conn.execute(
                    "INSERT INTO templates (subject_id, model_id, vector, quality, box, source_sha256, chip, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        fp.model_id,
                        self.cipher.encrypt(vec.astype("<f4").tobytes(), _vector_aad(sid, fp.model_id)),
                        None if fp.quality is None else float(fp.quality),
                        box,
                        shas[i],
                        chip,
                        now,
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(int(cur.lastrowid))
                delta.add_keys.append(int(cur.lastrowid))
                delta.add_vectors.append(vec)
                delta.add_subjects.append(sid)
            self._finish(delta, conn)
        templates = {t.id: t for t in self.list_templates(sid, collection=collection)}
        return [templates[i] for i in ids if i in templates]

    def list_templates(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[Template]:
        subject = self.get_subject(ref, collection=collection)
        rows = (
            self._reader()
            .execute(
                "SELECT id, subject_id, model_id, quality, box, source_sha256, created_at, chip IS NOT NULL "
                "FROM templates WHERE subject_id = ? ORDER BY id",
                (subject.id,),
            )
            .fetchall()
        )
        out = []
        for r in rows:
            created = from_iso(r[6])
            assert created is not None
            box = None if r[4] is None else tuple(float(v) for v in json.loads(r[4]))
            out.append(Template(int(r[0]), r[1], r[2], r[3], box, r[5], created, bool(r[7])))  # type: ignore[arg-type]
        return out

    def template_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> dict[int, np.ndarray]:
        subject = self.get_subject(ref, collection=collection)
        rows = (
            self._reader()
            .execute("SELECT id, model_id, vector FROM templates WHERE subject_id = ? ORDER BY id", (subject.id,))
            .fetchall()
        )
        return {
            int(r[0]): np.frombuffer(self.cipher.decrypt(r[2], _vector_aad(subject.id, r[1])), dtype="<f4").copy()
            for r in rows
        }

    def template_chip(self, template_id: int) -> np.ndarray | None:
        """The aligned chip kept with a template (only when it was enrolled with chips), decrypted."""
        row = self._reader().execute("SELECT subject_id, chip FROM templates WHERE id = ?", (template_id,)).fetchone()
        if row is None:
            raise TemplateNotFound(template_id)
        if row[1] is None:
            return None
        return self._decode_chip(row[1], str(row[0]))

    def _decode_chip(self, blob: bytes, subject_id: str) -> np.ndarray:
        data = self.cipher.decrypt(blob, _chip_aad(subject_id))
        header, _, pixels = data.partition(b"\n")
        return np.frombuffer(pixels, dtype=np.uint8).reshape(json.loads(header)).copy()

    def delete_template(self, template_id: int) -> None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT s.collection_id FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE t.id = ?",
                (template_id,),
            ).fetchone()
            if row is None:
                raise TemplateNotFound(template_id)
            delta = _Delta(int(row[0]), self._generation(int(row[0]), conn), remove_keys=[template_id])
            conn.execute("DELETE FROM templates WHERE id = ?", (template_id,))
            self._finish(delta, conn)

    # -- model migration (driven by faceprint.gallery.migrate) --------------------------------------------
    # New vectors are staged in `migration_staging` in small committed batches while the collection keeps
    # serving its current model; `finish_migration` swaps them in with one transaction. Until then nothing a
    # search reads has changed, so an interrupted run leaves the collection as it was, and the next run
    # re-embeds only what was not staged yet.
    def migration_counts(self, collection: str, target_model: str) -> MigrationCounts:
        """What re-embedding ``collection`` for ``target_model`` involves (read-only)."""
        cid, coll = self._collection(collection)
        with self._read() as conn:
            total, chips, subjects = conn.execute(
                "SELECT COUNT(*), SUM(t.chip IS NOT NULL), COUNT(DISTINCT t.subject_id) FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()
            missing_subjects = [
                str(r[0])
                for r in conn.execute(
                    "SELECT DISTINCT s.name FROM templates t JOIN subjects s ON s.id = t.subject_id "
                    "WHERE s.collection_id = ? AND t.chip IS NULL ORDER BY s.name",
                    (cid,),
                )
            ]
            chip_templates = {
                (None if r[0] is None else str(r[0])): int(r[1])
                for r in conn.execute(
                    "SELECT t.chip_template, COUNT(*) FROM templates t JOIN subjects s ON s.id = t.subject_id "
                    "WHERE s.collection_id = ? AND t.chip IS NOT NULL GROUP BY t.chip_template",
                    (cid,),
                )
            }
            staged = conn.execute(
                "SELECT COUNT(*) FROM migration_staging WHERE collection_id = ? AND model_id = ?", (cid, target_model)
            ).fetchone()[0]
            negatives = conn.execute(
                "SELECT COUNT(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()[0]
        return MigrationCounts(
            coll, int(total), int(chips or 0), int(subjects), missing_subjects, chip_templates, int(staged),
            int(negatives),
        )  # fmt: skip

    def start_migration(self, collection: str, target_model: str) -> None:
        """Forget vectors staged by an interrupted migration to another model (those for this one are kept)."""
        cid, _ = self._collection(collection)
        with self._write() as conn:
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ? AND model_id != ?", (cid, target_model))

    def migration_pending(self, collection: str, target_model: str, limit: int) -> list[PendingChip]:
        """Up to ``limit`` templates of the collection with a chip and no vector staged for ``target_model``,
        in id order, their chips decrypted."""
        cid, _ = self._collection(collection)
        return self._pending_chips(self._reader(), cid, target_model, limit)

    def _pending_chips(self, conn: sqlite3.Connection, cid: int, target_model: str, limit: int) -> list[PendingChip]:
        rows = conn.execute(
            "SELECT t.id, t.subject_id, s.name, t.chip, t.chip_template FROM templates t "
            "JOIN subjects s ON s.id = t.subject_id "
            "LEFT JOIN migration_staging m ON m.template_id = t.id AND m.model_id = ? "
            "WHERE s.collection_id = ? AND t.chip IS NOT NULL AND m.template_id IS NULL ORDER BY t.id LIMIT ?",
            (target_model, cid, int(limit)),
        ).fetchall()
        out: list[PendingChip] = []
        for tid, sid, name, blob, chip_template in rows:
            try:
                chip = self._decode_chip(blob, sid)
            except (GalleryError, ValueError) as exc:  # WrongKey (altered bytes), a broken header or size
                raise GalleryCorrupt(
                    f"the stored chip of template {tid} (subject {name!r}) is unreadable ({exc}); delete that "
                    f"template (`faceprint subjects delete {name!r} --template {tid}`) and re-enrol the subject "
                    "from a photo, then run migrate again: the templates already re-embedded are kept"
                ) from None
            out.append(PendingChip(int(tid), str(sid), str(name), chip, chip_template))
        return out

    def stage_migration(
        self, collection: str, source_model: str, target_model: str, staged: Sequence[tuple[int, str, np.ndarray]]
    ) -> None:
        """Store new vectors ``(template id, subject id, vector)`` for ``target_model`` in one transaction.

        Nothing a search reads changes. A template deleted meanwhile is skipped.
        """
        cid, _ = self._collection(collection)
        with self._write() as conn:
            self._check_source(conn, cid, collection, source_model)
            self._stage(conn, cid, target_model, staged)

    def _stage(
        self, conn: sqlite3.Connection, cid: int, target_model: str, staged: Sequence[tuple[int, str, np.ndarray]]
    ) -> None:
        for tid, sid, vec in staged:
            blob = self.cipher.encrypt(normalise(vec).astype("<f4").tobytes(), _vector_aad(sid, target_model))
            conn.execute(
                "INSERT OR REPLACE INTO migration_staging (template_id, collection_id, model_id, vector) "
                "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM templates WHERE id = ? AND subject_id = ?)",
                (tid, cid, target_model, blob, tid, sid),
            )

    @staticmethod
    def _check_source(conn: sqlite3.Connection, cid: int, collection: str, source_model: str) -> int:
        row = conn.execute("SELECT model_id, generation FROM collections WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise CollectionNotFound(collection)
        if row[0] != source_model:
            raise GalleryError(
                f"collection {collection!r} now holds {row[0]} faceprints, not {source_model}: another process "
                "changed it during the migration; run migrate again"
            )
        return int(row[1])

    def finish_migration(
        self,
        collection: str,
        source_model: str,
        target_model: str,
        dim: int,
        *,
        source_template: str | None,
        drop_missing: bool,
        embed: Callable[[list[PendingChip]], np.ndarray],
        batch: int = 64,
    ) -> MigrationSwitch:
        """Switch the collection to ``target_model`` in one transaction: every template gets its staged vector
        (templates enrolled since staging are embedded here with ``embed``), chip-less templates are deleted
        when ``drop_missing`` (else :class:`MissingChips`), negatives of the old model are deleted, and the
        collection's model, dimension and generation change; every cached index is invalidated.

        ``source_template``: the chip template of chips that do not record one (those enrolled with the source
        model), recorded now so later migrations know how they were cut.
        """
        cid, _ = self._collection(collection)
        with self._write() as conn:
            self._check_source(conn, cid, collection, source_model)
            in_collection = "SELECT id FROM subjects WHERE collection_id = ?"
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ? AND model_id != ?", (cid, target_model))
            missing = conn.execute(
                "SELECT t.id, s.name FROM templates t JOIN subjects s ON s.id = t.subject_id "
                "WHERE s.collection_id = ? AND t.chip IS NULL ORDER BY t.id",
                (cid,),
            ).fetchall()
            if missing and not drop_missing:
                total = conn.execute(
                    f"SELECT COUNT(*) FROM templates WHERE subject_id IN ({in_collection})", (cid,)
                ).fetchone()[0]
                names = sorted({str(r[1]) for r in missing})
                raise MissingChips(collection, len(missing), int(total), names[:10], len(names))
            for chunk in _chunks([int(r[0]) for r in missing]):
                conn.execute(f"DELETE FROM templates WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            late = 0
            while pending := self._pending_chips(conn, cid, target_model, batch):
                vectors = embed(pending)
                self._stage(conn, cid, target_model, [(p.template_id, p.subject_id, v) for p, v in
                                                      zip(pending, vectors, strict=True)])  # fmt: skip
                late += len(pending)
            templates, subjects, unstaged = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT t.subject_id), SUM(m.template_id IS NULL) FROM templates t "
                "LEFT JOIN migration_staging m ON m.template_id = t.id AND m.model_id = ? "
                f"WHERE t.subject_id IN ({in_collection})",
                (target_model, cid),
            ).fetchone()
            if unstaged:  # cannot happen (every template has a chip and was staged); never switch half a collection
                raise GalleryCorrupt(f"collection {collection!r}: {unstaged} template(s) have no new vector")
            conn.execute(
                "UPDATE templates SET model_id = ?, "
                "vector = (SELECT m.vector FROM migration_staging m WHERE m.template_id = templates.id), "
                "chip_template = CASE WHEN chip IS NULL THEN NULL ELSE COALESCE(chip_template, ?) END "
                f"WHERE subject_id IN ({in_collection})",
                (target_model, source_template, cid),
            )
            negatives = conn.execute(f"DELETE FROM negatives WHERE subject_id IN ({in_collection})", (cid,)).rowcount
            # A new generation that no index (in memory here or elsewhere, or a snapshot) can catch up to.
            conn.execute(
                "UPDATE collections SET model_id = ?, dim = ?, generation = generation + 1, "
                "log_since = generation + 1 WHERE id = ?",
                (target_model, int(dim), cid),
            )
            conn.execute("DELETE FROM index_log WHERE collection_id = ?", (cid,))
            conn.execute("DELETE FROM migration_staging WHERE collection_id = ?", (cid,))
        with self._index_lock:
            self._indexes.pop(cid, None)
        self._index_path(cid).unlink(missing_ok=True)
        return MigrationSwitch(int(templates), int(subjects), len(missing), int(negatives), late)

    # -- negatives --------------------------------------------------------------------------------------
    def add_negative(self, faceprint: Faceprint, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        cid, coll = self._collection(collection)
        self._check_contract(coll, [faceprint])
        vec = normalise(faceprint.vector)
        with self._write() as conn:
            row = self._subject_row(conn, ref, cid)
            if row is None:
                raise SubjectNotFound(ref, collection)
            sid = str(row[0])
            delta = _Delta(cid, self._generation(cid, conn), negatives=[(sid, vec)])
            conn.execute(
                "INSERT INTO negatives (subject_id, vector, created_at) VALUES (?, ?, ?)",
                (
                    sid,
                    self.cipher.encrypt(vec.astype("<f4").tobytes(), _vector_aad(sid, coll.model_id, "neg")),
                    to_iso(utcnow()),
                ),
            )
            self._finish(delta, conn)

    def negative_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[np.ndarray]:
        subject = self.get_subject(ref, collection=collection)
        coll = self.get_collection(collection)
        rows = (
            self._reader()
            .execute("SELECT vector FROM negatives WHERE subject_id = ? ORDER BY id", (subject.id,))
            .fetchall()
        )
        aad = _vector_aad(subject.id, coll.model_id, "neg")
        return [np.frombuffer(self.cipher.decrypt(r[0], aad), dtype="<f4").copy() for r in rows]

    # -- the index --------------------------------------------------------------------------------------
    def _apply(self, delta: _Delta) -> None:
        """Patch the in-memory index with a committed write, if it reflected the state just before it."""
        with self._index_lock:
            state = self._indexes.get(delta.collection_id)
            if state is None:
                return
            if state.generation != delta.generation_before:
                del self._indexes[delta.collection_id]  # someone else changed it too: rebuild on next use
                return
            if delta.remove_keys:
                state.index.remove(np.asarray(delta.remove_keys, dtype=np.int64))
                state.owners.clear(delta.remove_keys)
            if delta.add_keys:
                state.index.add(np.asarray(delta.add_keys, dtype=np.int64), np.stack(delta.add_vectors))
                state.owners.set(delta.add_keys, delta.add_subjects)
            for sid in delta.removed_subjects:
                state.negatives.pop(sid, None)
            for sid, vec in delta.negatives:
                prev = state.negatives.get(sid)
                state.negatives[sid] = vec[None, :] if prev is None else np.vstack([prev, vec])
            state.generation = delta.generation_after
            state.dirty = True

    def _current_index(self, cid: int, coll: Collection) -> _IndexState:
        """The collection's index at the database's current generation (call with ``_index_lock`` held).

        In order of cost: the index in memory if current; else the index in memory or the snapshot on
        disk brought up to date from the change log; else a full rebuild from the templates.
        """
        generation, log_since = self._generation_and_floor(cid)
        state = self._indexes.get(cid)
        if state is not None and state.generation == generation:
            return state
        if state is None or not log_since <= state.generation < generation:
            loaded = load_index(self._index_path(cid), dim=coll.dim, cipher=self.cipher, ann_min_size=self.ann_min_size)
            if loaded is not None and log_since <= loaded[1] <= generation:
                state = _IndexState(loaded[0], loaded[1], {}, owners=self._load_owners(cid))
            else:
                state = None
        state = self._catch_up(cid, coll, state) if state is not None else self._rebuild(cid, coll)
        self._indexes[cid] = state
        return state

    def _generation_and_floor(self, cid: int, conn: sqlite3.Connection | None = None) -> tuple[int, int]:
        row = (
            (conn or self._reader())
            .execute("SELECT generation, log_since FROM collections WHERE id = ?", (cid,))
            .fetchone()
        )
        return (-1, 0) if row is None else (int(row[0]), int(row[1]))

    def _catch_up(self, cid: int, coll: Collection, state: _IndexState) -> _IndexState:
        """Apply the logged template changes since ``state.generation`` (one read snapshot)."""
        with self._read() as conn:
            generation, _ = self._generation_and_floor(cid, conn)
            last_op: dict[int, int] = {}
            for tid, op in conn.execute(
                "SELECT template_id, op FROM index_log WHERE collection_id = ? AND generation > ? "
                "ORDER BY generation, rowid",
                (cid, state.generation),
            ):
                last_op[int(tid)] = int(op)
            removed = [t for t, op in last_op.items() if op < 0]
            added = [t for t, op in last_op.items() if op > 0]
            keys: list[int] = []
            owners: list[str] = []
            vectors: list[np.ndarray] = []
            for chunk in _chunks(added):
                marks = ",".join("?" * len(chunk))
                for tid, sid, model_id, blob in conn.execute(
                    f"SELECT id, subject_id, model_id, vector FROM templates WHERE id IN ({marks})", chunk
                ):
                    keys.append(int(tid))
                    owners.append(sid)
                    vectors.append(np.frombuffer(self.cipher.decrypt(blob, _vector_aad(sid, model_id)), dtype="<f4"))
            negatives = self._load_negatives(cid, coll)
        if removed:
            state.index.remove(np.asarray(removed, dtype=np.int64))
            state.owners.clear(removed)
        if keys:
            state.index.add(np.asarray(keys, dtype=np.int64), np.stack(vectors))
            state.owners.set(keys, owners)
        log.debug("index of %s caught up: +%d -%d templates", coll.name, len(keys), len(removed))
        return _IndexState(state.index, generation, negatives, dirty=True, owners=state.owners)

    def _load_owners(self, cid: int) -> _Owners:
        owners = _Owners()
        rows = (
            self._reader()
            .execute(
                "SELECT t.id, t.subject_id FROM templates t JOIN subjects s ON s.id = t.subject_id "
                "WHERE s.collection_id = ?",
                (cid,),
            )
            .fetchall()
        )
        owners.set([r[0] for r in rows], [r[1] for r in rows])
        return owners

    def _load_negatives(self, cid: int, coll: Collection) -> dict[str, np.ndarray]:
        rows = (
            self._reader()
            .execute(
                "SELECT n.subject_id, n.vector FROM negatives n JOIN subjects s ON s.id = n.subject_id "
                "WHERE s.collection_id = ?",
                (cid,),
            )
            .fetchall()
        )
        grouped: dict[str, list[np.ndarray]] = {}
        for sid, blob in rows:
            vec = np.frombuffer(self.cipher.decrypt(blob, _vector_aad(sid, coll.model_id, "neg")), dtype="<f4")
            grouped.setdefault(sid, []).append(vec)
        return {sid: np.stack(v) for sid, v in grouped.items()}

    def _rebuild(self, cid: int, coll: Collection) -> _IndexState:
        with self._read() as conn:
            generation = self._generation(cid, conn)
            rows = conn.execute(
                "SELECT t.id, t.subject_id, t.model_id, t.vector FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ? ORDER BY t.id",
                (cid,),
            ).fetchall()
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.empty((len(rows), coll.dim), dtype=np.float32)
            for i, (_, sid, model_id, blob) in enumerate(rows):
                vectors[i] = np.frombuffer(self.cipher.decrypt(blob, _vector_aad(sid, model_id)), dtype="<f4")
            negatives = self._load_negatives(cid, coll)
        log.debug("rebuilt the index of collection %s from %d templates", coll.name, len(rows))
        index = AdaptiveIndex.build(coll.dim, keys, vectors, ann_min_size=self.ann_min_size)
        owners = _Owners()
        owners.set(keys.tolist(), [r[1] for r in rows])
        return _IndexState(index, generation, negatives, dirty=True, owners=owners)

    def rebuild_index(self, collection: str = DEFAULT_COLLECTION) -> None:
        """Drop the cached index of a collection and build it again from SQLite."""
        cid, coll = self._collection(collection)
        with self._index_lock:
            self._indexes[cid] = self._rebuild(cid, coll)

    # -- search -----------------------------------------------------------------------------------------
    def identify(
        self,
        faceprints: Sequence[Faceprint],
        *,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = 5,
        fmr: float | None = None,
        threshold: float | None = None,
        calibration: Calibration | None = None,
        one_to_one: bool = True,
        fpir: float | None = None,
    ) -> list[Identification]:
        if top_k < 1:
            raise GalleryError(f"top_k must be at least 1, got {top_k}")
        if sum(v is not None for v in (fmr, fpir, threshold)) > 1:
            raise GalleryError("give at most one of fmr, fpir and threshold")
        cid, coll = self._collection(collection)
        self._check_contract(coll, faceprints)
        if not faceprints:
            return []
        subjects = None
        if fpir is not None:
            with self._read() as conn:
                subjects = conn.execute("SELECT COUNT(*) FROM subjects WHERE collection_id = ?", (cid,)).fetchone()[0]
        rule = ThresholdRule.choose(
            coll.model_id, fmr=fmr, fpir=fpir, threshold=threshold, subjects=subjects, calibration=calibration
        )
        threshold = rule.threshold
        probes = normalise(np.stack([fp.vector for fp in faceprints]))
        # Enough neighbours to see several templates of each likely subject.
        wanted = max(64, 8 * top_k)
        with self._index_lock:
            state = self._current_index(cid, coll)
            keys, scores = state.index.search(probes, min(wanted, max(1, len(state.index))))
            slots = state.owners.lookup(keys)
            owner_of = {int(s): state.owners.subjects[s] for s in np.unique(slots[slots >= 0]).tolist()}
            negatives = state.negatives
        ranked: list[list] = []
        for face in range(len(probes)):
            hits = [
                Hit(owner_of[slot], "", float(score))
                for slot, score in zip(slots[face].tolist(), scores[face].tolist(), strict=True)
                if slot >= 0
            ]
            ranked.append(apply_negatives(probes[face], aggregate(hits), negatives))
        if one_to_one:
            matches = assign_one_to_one(ranked, threshold)
        else:
            matches = [c[0] if c and c[0].score >= threshold else None for c in ranked]
        # Names only for what is reported (a rename does not touch the index, so they are read here).
        shown = {c.subject_id for cands in ranked for c in cands[:top_k]} | {m.subject_id for m in matches if m}
        names = self._subject_names(sorted(shown))
        ranked = [[replace(c, subject=names[c.subject_id]) for c in cands if c.subject_id in names] for cands in ranked]
        matches = [
            replace(m, subject=names[m.subject_id]) if m is not None and m.subject_id in names else None
            for m in matches
        ]
        return [
            Identification(
                tuple(cands[:top_k]),
                match,
                float(threshold),
                None if fp.detection is None else fp.detection.box,
                rule.fmr,
                rule.fpir,
            )
            for fp, cands, match in zip(faceprints, ranked, matches, strict=True)
        ]

    def _subject_names(self, subject_ids: list[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        conn = self._reader()
        for chunk in _chunks(subject_ids):
            marks = ",".join("?" * len(chunk))
            names.update(conn.execute(f"SELECT id, name FROM subjects WHERE id IN ({marks})", chunk).fetchall())
        return names

    # -- housekeeping -----------------------------------------------------------------------------------
    def stats(self, collection: str = DEFAULT_COLLECTION) -> GalleryStats:
        cid, coll = self._collection(collection)
        with self._read() as conn:
            subjects = conn.execute("SELECT COUNT(*) FROM subjects WHERE collection_id = ?", (cid,)).fetchone()[0]
            templates = conn.execute(
                "SELECT COUNT(*) FROM templates t JOIN subjects s ON s.id = t.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()[0]
            negatives = conn.execute(
                "SELECT COUNT(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id WHERE s.collection_id = ?",
                (cid,),
            ).fetchone()[0]
        kind = "exact" if templates < self.ann_min_size else "hnsw"
        disk = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
        return GalleryStats(
            coll.name, coll.model_id, coll.dim, int(subjects), int(templates), int(negatives), kind, disk
        )

    def integrity_check(self) -> list[str]:
        """SQLite's own integrity and foreign-key checks; an empty list means consistent."""
        conn = self._reader()
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        problems += [f"foreign key: {tuple(r)}" for r in conn.execute("PRAGMA foreign_key_check").fetchall()]
        return problems


def _chunks(items: Sequence, size: int = _SQL_CHUNK) -> Iterator[list]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]
