"""The PostgreSQL + pgvector backend: many faceprint processes on many machines share one gallery.

Configured by a libpq DSN (``postgresql://user:pass@host:5432/db``; ``?options=-csearch_path%3Dname`` puts
the gallery in its own schema). PostgreSQL is the source of truth *and* the index: every search runs in the
database over the collection's HNSW index (:mod:`faceprint.gallery.pg_schema`), so every client sees every
committed enrolment at once, with no cache to keep fresh.

Transactions: each write method is one transaction (an enrolment is all or nothing); :meth:`bulk` pins one
pooled connection to the calling thread and nests every write inside it (savepoints), so a failed statement
inside a bulk block that the caller handles does not poison the rest. Needs ``psycopg[binary]``,
``psycopg-pool`` and ``pgvector`` (the ``[postgres]`` extra); they are imported only by this module.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from faceprint.gallery.base import DEFAULT_COLLECTION, UNSET, Unset
from faceprint.gallery.crypto import TemplateCipher, resolve_key
from faceprint.gallery.errors import (
    CollectionNotFound,
    ContractMismatch,
    GalleryError,
    SubjectExists,
    SubjectNotFound,
    TemplateNotFound,
)
from faceprint.gallery.model import (
    Collection,
    Consent,
    GalleryStats,
    Identification,
    Metadata,
    Page,
    Subject,
    Template,
    metadata_json,
    utcnow,
)
from faceprint.gallery.pg_schema import (
    DISTANCE_OP,
    HNSW_EF_SEARCH,
    HNSW_MAX_DIM,
    MIGRATION_LOCK,
    collection_index_sql,
    migrate,
    schema_version,
)
from faceprint.gallery.scoring import Hit
from faceprint.gallery.shared import (
    check_contract,
    check_name,
    check_sidecars,
    chip_aad,
    decide,
    make_cursor,
    neighbours_wanted,
    parse_cursor,
    redact_location,
    resolve_threshold,
    vector_aad,
)
from faceprint.matching import Calibration, normalise
from faceprint.types import Faceprint

log = logging.getLogger(__name__)

_SUBJECT_COLS = (
    "s.id, s.name, s.metadata, s.consent, s.created_at, s.expires_at, "
    "(SELECT count(*) FROM templates t WHERE t.subject_id = s.id)"
)


def _subject_from_row(row: Sequence[Any], collection: str) -> Subject:
    return Subject(
        id=row[0],
        name=row[1],
        collection=collection,
        metadata=dict(row[2] or {}),
        consent=None if row[3] is None else Consent.from_dict(row[3]),
        created_at=row[4],
        expires_at=row[5],
        template_count=int(row[6]),
    )


def _template_from_row(row: Sequence[Any]) -> Template:
    box = None if row[4] is None else tuple(float(v) for v in row[4])
    return Template(int(row[0]), row[1], row[2], row[3], box, row[5], row[6], bool(row[7]))  # type: ignore[arg-type]


class PostgresGallery:
    """:class:`~faceprint.gallery.base.Gallery` on PostgreSQL with pgvector (see the module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        key: bytes | None = None,
        create: bool = True,
        pool_size: int = 8,
        ef_search: int = HNSW_EF_SEARCH,
        connect_timeout: float = 10.0,
    ) -> None:
        """Connect, migrate the schema (``create``) and check the template key.

        ``pool_size``: the most connections this process opens (threads beyond it wait for one).
        ``ef_search``: HNSW search width (``hnsw.ef_search``); never below the neighbours asked for.
        """
        self.dsn = dsn
        self.location = redact_location(dsn)
        self.ef_search = int(ef_search)
        self._local = threading.local()
        self._collections: dict[str, tuple[int, Collection]] = {}
        self._closed = False
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout)) as conn:
                if schema_version(conn) is None and not create:
                    raise GalleryError(f"no faceprint gallery in the database {self.location}")
                migrate(conn)
        except psycopg.OperationalError as exc:
            raise GalleryError(f"cannot open the PostgreSQL gallery {self.location}: {exc}") from None
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
            name="faceprint-gallery",
        )
        self._pool.open(wait=True, timeout=connect_timeout)
        try:
            self.cipher = self._open_cipher(key)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        register_vector(conn)
        conn.execute("SET TIME ZONE 'UTC'")

    def _open_cipher(self, key: bytes | None) -> TemplateCipher:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            rows = dict(conn.execute("SELECT key, value FROM faceprint_meta").fetchall())
            if "key_check" not in rows:  # a new gallery: the only place a key file may be created
                secret, origin = resolve_key(key, create=True)
                cipher = TemplateCipher(secret, origin)
                conn.execute(
                    "INSERT INTO faceprint_meta VALUES ('key_check', %s), ('key_id', %s)",
                    (cipher.check_value(), cipher.key_id.encode()),
                )
                return cipher
        secret, origin = resolve_key(key, create=False)
        cipher = TemplateCipher(secret, origin)
        cipher.verify(bytes(rows["key_check"]), bytes(rows["key_id"]).decode() if "key_id" in rows else None)
        return cipher

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    def __enter__(self) -> PostgresGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections and transactions -------------------------------------------------------------------
    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """A connection for reads: the thread's bulk connection (sees its uncommitted writes) or a pooled one."""
        if self._closed:
            raise GalleryError(f"the gallery {self.location} is closed")
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            yield pinned
            return
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise GalleryError(f"no connection to {self.location} became free in time") from None
        except psycopg.OperationalError as exc:
            raise GalleryError(f"PostgreSQL gallery {self.location}: {exc}") from None

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        """One transaction; inside :meth:`bulk` a savepoint of the bulk transaction."""
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Group many writes into one transaction: all of them are stored, or none."""
        if getattr(self._local, "conn", None) is not None:
            with self._tx():
                yield
            return
        with self._conn() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield
            finally:
                self._local.conn = None

    # -- collections ------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, model_id: str, dim: int) -> Collection:
        found = self._find_collection(name)
        if found is None:
            with self._tx() as conn:
                row = conn.execute(
                    "INSERT INTO collections (name, model_id, dim, created_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING id",
                    (name, model_id, int(dim), utcnow()),
                ).fetchone()
                if row is not None:
                    ddl = collection_index_sql(int(row[0]), int(dim))
                    if ddl is None:
                        log.warning("collection %s: %d-d vectors are searched exactly (no HNSW)", name, dim)
                    else:
                        conn.execute(ddl)  # type: ignore[arg-type]
            found = self._find_collection(name)
            assert found is not None
        _, coll = found
        if coll.model_id != model_id or coll.dim != dim:
            raise ContractMismatch(name, f"{coll.model_id} ({coll.dim}-d)", f"{model_id} ({dim}-d)")
        return coll

    def _find_collection(self, name: str) -> tuple[int, Collection] | None:
        """Collections are never altered once created, so a found one is cached (one query fewer per call)."""
        found = self._collections.get(name)
        if found is None:
            with self._conn() as conn:
                row = conn.execute(
                    "SELECT id, name, model_id, dim, created_at FROM collections WHERE name = %s", (name,)
                ).fetchone()
            if row is None:
                return None
            found = self._collections[name] = (int(row[0]), Collection(row[1], row[2], int(row[3]), row[4]))
        return found

    def _collection(self, name: str) -> tuple[int, Collection]:
        found = self._find_collection(name)
        if found is None:
            raise CollectionNotFound(name)
        return found

    def get_collection(self, name: str = DEFAULT_COLLECTION) -> Collection:
        return self._collection(name)[1]

    def list_collections(self) -> list[Collection]:
        with self._conn() as conn:
            rows = conn.execute('SELECT name, model_id, dim, created_at FROM collections ORDER BY name COLLATE "C"')
            return [Collection(r[0], r[1], int(r[2]), r[3]) for r in rows.fetchall()]

    # -- subjects ---------------------------------------------------------------------------------------
    @staticmethod
    def _subject_row(conn: psycopg.Connection, ref: str, cid: int, *, lock: str = "") -> Any:
        """The subject's row by id, else by name; ``lock``: "FOR SHARE" / "FOR UPDATE" (within a transaction)."""
        suffix = f" {lock}" if lock else ""
        for col in ("id", "name"):
            row = conn.execute(
                f"SELECT {_SUBJECT_COLS} FROM subjects s WHERE s.collection_id = %s AND s.{col} = %s{suffix}",
                (cid, ref),
            ).fetchone()
            if row is not None:
                return row
        return None

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
        check_name(name)
        cid, _ = self._collection(collection)
        sid = subject_id or uuid.uuid4().hex
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO subjects (id, collection_id, name, metadata, consent, created_at, expires_at) "
                    "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s)",
                    (
                        sid,
                        cid,
                        name,
                        metadata_json(metadata or {}),
                        None if consent is None else json.dumps(consent.to_dict()),
                        utcnow(),
                        expires_at,
                    ),
                )
        except pg_errors.UniqueViolation:
            raise SubjectExists(name, collection) from None
        return self.get_subject(sid, collection=collection)

    def find_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject | None:
        cid, _ = self._collection(collection)
        with self._conn() as conn:
            row = self._subject_row(conn, ref, cid)
        return None if row is None else _subject_from_row(row, collection)

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
        after = parse_cursor(cursor) or ("", "")
        with self._tx() as conn:  # one snapshot for the count and the page
            total = conn.execute("SELECT count(*) FROM subjects WHERE collection_id = %s", (cid,)).fetchone()
            rows = conn.execute(
                f"SELECT {_SUBJECT_COLS} FROM subjects s WHERE s.collection_id = %s "
                'AND (s.name COLLATE "C", s.id COLLATE "C") > (%s, %s) '
                'ORDER BY s.name COLLATE "C", s.id COLLATE "C" LIMIT %s',
                (cid, after[0], after[1], limit + 1),
            ).fetchall()
        items = tuple(_subject_from_row(r, collection) for r in rows[:limit])
        next_cursor = make_cursor(items[-1].name, items[-1].id) if len(rows) > limit else None
        return Page(items, next_cursor, int(total[0]) if total else 0)

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
            check_name(name)
            sets.append("name = %s")
            values.append(name)
        if not isinstance(metadata, Unset):
            sets.append("metadata = %s::jsonb")
            values.append(metadata_json(metadata))
        if not isinstance(consent, Unset):
            sets.append("consent = %s::jsonb")
            values.append(None if consent is None else json.dumps(consent.to_dict()))
        if not isinstance(expires_at, Unset):
            sets.append("expires_at = %s")
            values.append(expires_at)
        if sets:
            try:
                with self._tx() as conn:
                    cur = conn.execute(f"UPDATE subjects SET {', '.join(sets)} WHERE id = %s", (*values, subject.id))
                    if cur.rowcount == 0:  # deleted by another client meanwhile
                        raise SubjectNotFound(ref, collection)
            except pg_errors.UniqueViolation:
                raise SubjectExists(str(name), collection) from None
        return self.get_subject(subject.id, collection=collection)

    def delete_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        cid, _ = self._collection(collection)
        with self._tx() as conn:
            row = self._subject_row(conn, ref, cid, lock="FOR UPDATE")
            if row is None:
                raise SubjectNotFound(ref, collection)
            conn.execute("DELETE FROM subjects WHERE id = %s", (row[0],))  # templates, negatives cascade

    def purge_expired(self, *, now: datetime | None = None) -> list[Subject]:
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_SUBJECT_COLS}, c.name FROM subjects s JOIN collections c ON c.id = s.collection_id "
                'WHERE s.expires_at IS NOT NULL AND s.expires_at <= %s ORDER BY c.name COLLATE "C", '
                's.name COLLATE "C" FOR UPDATE OF s',
                (now or utcnow(),),
            ).fetchall()
            purged = [_subject_from_row(r, r[7]) for r in rows]
            if purged:
                conn.execute("DELETE FROM subjects WHERE id = ANY(%s)", ([s.id for s in purged],))
        return purged

    # -- templates --------------------------------------------------------------------------------------
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
        check_contract(coll, faceprints)
        shas = check_sidecars(len(faceprints), source_sha256, chips)
        vectors = normalise(np.stack([fp.vector for fp in faceprints])).astype(np.float32) if faceprints else None
        now = utcnow()
        with self._tx() as conn:
            row = self._subject_row(conn, ref, cid, lock="FOR SHARE")  # a concurrent delete waits for us
            if row is None:
                raise SubjectNotFound(ref, collection)
            sid = str(row[0])
            params = []
            for i, fp in enumerate(faceprints):
                assert vectors is not None
                vec = vectors[i]
                chip = None
                if chips is not None:
                    arr = np.ascontiguousarray(chips[i], dtype=np.uint8)
                    header = json.dumps(list(arr.shape)).encode() + b"\n"
                    chip = self.cipher.encrypt(header + arr.tobytes(), chip_aad(sid))
                params.append(
                    (
                        sid,
                        cid,
                        fp.model_id,
                        vec,
                        self.cipher.encrypt(vec.astype("<f4").tobytes(), vector_aad(sid, fp.model_id)),
                        None if fp.quality is None else float(fp.quality),
                        None if fp.detection is None else json.dumps([float(v) for v in fp.detection.box]),
                        shas[i],
                        chip,
                        now,
                    )
                )
            rows: list[Any] = []
            if params:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO templates (subject_id, collection_id, model_id, embedding, vector_enc, "
                        "quality, box, source_sha256, chip, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) "
                        "RETURNING id, subject_id, model_id, quality, box, source_sha256, created_at, "
                        "chip IS NOT NULL",
                        params,
                        returning=True,
                    )
                    while True:
                        rows.extend(cur.fetchall())
                        if not cur.nextset():
                            break
        return [_template_from_row(r) for r in rows]

    def list_templates(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[Template]:
        subject = self.get_subject(ref, collection=collection)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, subject_id, model_id, quality, box, source_sha256, created_at, chip IS NOT NULL "
                "FROM templates WHERE subject_id = %s ORDER BY id",
                (subject.id,),
            ).fetchall()
        return [_template_from_row(r) for r in rows]

    def template_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> dict[int, np.ndarray]:
        subject = self.get_subject(ref, collection=collection)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, model_id, vector_enc FROM templates WHERE subject_id = %s ORDER BY id", (subject.id,)
            ).fetchall()
        return {
            int(r[0]): np.frombuffer(self.cipher.decrypt(bytes(r[2]), vector_aad(subject.id, r[1])), "<f4").copy()
            for r in rows
        }

    def template_chip(self, template_id: int) -> np.ndarray | None:
        """The aligned chip kept with a template (only when it was enrolled with chips), decrypted."""
        with self._conn() as conn:
            row = conn.execute("SELECT subject_id, chip FROM templates WHERE id = %s", (template_id,)).fetchone()
        if row is None:
            raise TemplateNotFound(template_id)
        if row[1] is None:
            return None
        header, _, pixels = self.cipher.decrypt(bytes(row[1]), chip_aad(row[0])).partition(b"\n")
        return np.frombuffer(pixels, dtype=np.uint8).reshape(json.loads(header)).copy()

    def delete_template(self, template_id: int) -> None:
        with self._tx() as conn:
            if conn.execute("DELETE FROM templates WHERE id = %s RETURNING id", (template_id,)).fetchone() is None:
                raise TemplateNotFound(template_id)

    # -- negatives --------------------------------------------------------------------------------------
    def add_negative(self, faceprint: Faceprint, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        cid, coll = self._collection(collection)
        check_contract(coll, [faceprint])
        vec = normalise(faceprint.vector).astype("<f4")
        with self._tx() as conn:
            row = self._subject_row(conn, ref, cid, lock="FOR SHARE")
            if row is None:
                raise SubjectNotFound(ref, collection)
            sid = str(row[0])
            conn.execute(
                "INSERT INTO negatives (subject_id, vector_enc, created_at) VALUES (%s, %s, %s)",
                (sid, self.cipher.encrypt(vec.tobytes(), vector_aad(sid, coll.model_id, "neg")), utcnow()),
            )

    def negative_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[np.ndarray]:
        subject = self.get_subject(ref, collection=collection)
        coll = self.get_collection(collection)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT vector_enc FROM negatives WHERE subject_id = %s ORDER BY id", (subject.id,)
            ).fetchall()
        aad = vector_aad(subject.id, coll.model_id, "neg")
        return [np.frombuffer(self.cipher.decrypt(bytes(r[0]), aad), dtype="<f4").copy() for r in rows]

    def _negatives_of(self, conn: psycopg.Connection, coll: Collection, subject_ids: list[str]) -> dict:
        if not subject_ids:
            return {}
        grouped: dict[str, list[np.ndarray]] = {}
        for sid, blob in conn.execute(
            "SELECT subject_id, vector_enc FROM negatives WHERE subject_id = ANY(%s)", (subject_ids,)
        ).fetchall():
            vec = np.frombuffer(self.cipher.decrypt(bytes(blob), vector_aad(sid, coll.model_id, "neg")), "<f4")
            grouped.setdefault(sid, []).append(vec)
        return {sid: np.stack(v) for sid, v in grouped.items()}

    # -- search -----------------------------------------------------------------------------------------
    def _search_sql(self, cid: int, dim: int) -> str:
        """Nearest templates of one collection. The collection id and dimension are inlined (they are ints
        from our own catalogue): a partial index is only usable when the planner sees its predicate's
        constant, and psycopg prepares repeated statements, whose generic plans would hide it."""
        expr = f"embedding::vector({int(dim)})" if dim <= HNSW_MAX_DIM else "embedding"
        probe = f"%(q)s::vector({int(dim)})"
        return (
            "SELECT n.id, n.subject_id, s.name, n.score FROM ("
            f"SELECT id, subject_id, -({expr} {DISTANCE_OP} {probe}) AS score FROM templates "
            f"WHERE collection_id = {int(cid)} ORDER BY {expr} {DISTANCE_OP} {probe} LIMIT %(k)s"
            ") n JOIN subjects s ON s.id = n.subject_id"
        )

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
    ) -> list[Identification]:
        cid, coll = self._collection(collection)
        limit = resolve_threshold(coll, top_k=top_k, fmr=fmr, threshold=threshold, calibration=calibration)
        check_contract(coll, faceprints)
        if not faceprints:
            return []
        probes = normalise(np.stack([fp.vector for fp in faceprints])).astype(np.float32)
        wanted = neighbours_wanted(top_k)
        sql = self._search_sql(cid, coll.dim)
        hits: list[list[Hit]] = []
        with self._tx() as conn:  # one snapshot for the hits, the names and the negatives
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(self.ef_search, wanted)),))
            for probe in probes:
                rows = conn.execute(sql, {"q": probe, "k": wanted}).fetchall()  # type: ignore[arg-type]
                hits.append([Hit(r[1], r[2], float(r[3])) for r in rows])
            negatives = self._negatives_of(conn, coll, sorted({h.subject_id for face in hits for h in face}))
        return decide(faceprints, probes, hits, negatives, top_k=top_k, threshold=limit, one_to_one=one_to_one)

    # -- housekeeping -----------------------------------------------------------------------------------
    def stats(self, collection: str = DEFAULT_COLLECTION) -> GalleryStats:
        cid, coll = self._collection(collection)
        with self._tx() as conn:
            subjects, templates, negatives, disk = conn.execute(
                "SELECT (SELECT count(*) FROM subjects WHERE collection_id = %(c)s), "
                "(SELECT count(*) FROM templates WHERE collection_id = %(c)s), "
                "(SELECT count(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id "
                "WHERE s.collection_id = %(c)s), "
                "pg_total_relation_size('templates') + pg_total_relation_size('subjects') "
                "+ pg_total_relation_size('negatives')",
                {"c": cid},
            ).fetchone()  # type: ignore[misc]
        kind = "pgvector-hnsw" if coll.dim <= HNSW_MAX_DIM else "exact"
        return GalleryStats(
            coll.name, coll.model_id, coll.dim, int(subjects), int(templates), int(negatives), kind, int(disk)
        )
