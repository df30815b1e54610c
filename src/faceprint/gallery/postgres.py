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

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from faceprint.gallery import sql
from faceprint.gallery.common import GalleryBase, Neighbours, NewTemplate
from faceprint.gallery.crypto import chip_aad, key_header, seal_vector, vector_aad
from faceprint.gallery.errors import GalleryError, SubjectExists
from faceprint.gallery.location import redact_location
from faceprint.gallery.model import (
    Collection,
    CollectionPolicy,
    Erasure,
    Sealed,
    SearchScope,
    Subject,
    Template,
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

log = logging.getLogger(__name__)

#: Placeholders of the subject columns: JSON text becomes jsonb.
_CASTS = {"metadata": "%s::jsonb", "consent": "%s::jsonb"}


def _subject_row(conn: psycopg.Connection, ref: str, cid: int, *, lock: str = "") -> Any:
    return sql.subject_row(conn, ref, cid, mark="%s", lock=lock)


class PostgresGallery(GalleryBase[int]):
    """:class:`~faceprint.gallery.base.Gallery` on PostgreSQL with pgvector (see the module docstring);
    collections are addressed by their row id."""

    backend_name = "PostgreSQL"

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
        self._init_cipher(key)

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        register_vector(conn)
        conn.execute("SET TIME ZONE 'UTC'")

    # -- lifecycle --------------------------------------------------------------------------------------
    def _load_key_check(self) -> tuple[bytes, str | None] | None:
        with self._conn() as conn:
            rows = dict(conn.execute("SELECT key, value FROM faceprint_meta").fetchall())
        if "key_check" not in rows:
            return None
        return bytes(rows["key_check"]), bytes(rows["key_id"]).decode() if "key_id" in rows else None

    def _store_key_check(self, check: bytes, key_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO faceprint_meta VALUES ('key_check', %s), ('key_id', %s)", (check, key_id.encode())
            )

    def _load_meta(self, name: str) -> bytes | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM faceprint_meta WHERE key = %s", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def _store_meta(self, values: Mapping[str, bytes | None]) -> None:
        with self._tx() as conn:
            for name, value in values.items():
                if value is None:
                    conn.execute("DELETE FROM faceprint_meta WHERE key = %s", (name,))
                else:
                    conn.execute(
                        "INSERT INTO faceprint_meta (key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (name, value),
                    )

    def _sealed_rows(self, exclude_key_id: str, limit: int) -> list[Sealed]:
        head = key_header(exclude_key_id)
        out: list[Sealed] = []
        with self._conn() as conn:
            for tid, sid, model, blob in conn.execute(
                "SELECT id, subject_id, model_id, vector_enc FROM templates "
                "WHERE substring(vector_enc from 1 for 9) <> %s LIMIT %s",
                (head, limit),
            ).fetchall():
                out.append(Sealed("templates", int(tid), "vector_enc", vector_aad(sid, model), bytes(blob)))
            for tid, sid, blob in conn.execute(
                "SELECT id, subject_id, chip FROM templates WHERE chip IS NOT NULL "
                "AND substring(chip from 1 for 9) <> %s LIMIT %s",
                (head, limit),
            ).fetchall():
                out.append(Sealed("templates", int(tid), "chip", chip_aad(sid), bytes(blob)))
            for nid, sid, model, blob in conn.execute(
                "SELECT n.id, n.subject_id, c.model_id, n.vector_enc FROM negatives n JOIN subjects s "
                "ON s.id = n.subject_id JOIN collections c ON c.id = s.collection_id "
                "WHERE substring(n.vector_enc from 1 for 9) <> %s LIMIT %s",
                (head, limit),
            ).fetchall():
                out.append(Sealed("negatives", int(nid), "vector_enc", vector_aad(sid, model, "neg"), bytes(blob)))
        return out[:limit]

    def _swap_sealed(self, swaps: Sequence[tuple[Sealed, bytes]]) -> int:
        done = 0
        with self._tx() as conn:
            for row, new in swaps:
                cur = conn.execute(
                    f"UPDATE {row.table} SET {row.column} = %s WHERE id = %s AND {row.column} = %s",  # type: ignore[arg-type]
                    (new, row.row, row.blob),
                )
                done += cur.rowcount
        return done

    @contextmanager
    def _key_setup(self) -> Iterator[None]:
        with self._pinned() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield

    def _release(self) -> None:
        self._pool.close()

    # -- connections and transactions -------------------------------------------------------------------
    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """A connection for reads: the thread's pinned connection (sees its uncommitted writes) or a pooled one."""
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
        """One transaction; inside a pinned one (:meth:`bulk`) a savepoint of it."""
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def _pinned(self) -> Iterator[psycopg.Connection]:
        """One transaction on a connection pinned to this thread, so every read and write inside it (through
        :meth:`_conn`) is part of it; nested, a savepoint."""
        if getattr(self._local, "conn", None) is not None:
            with self._tx() as conn:
                yield conn
            return
        with self._conn() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Group many writes into one transaction: all of them are stored, or none; inside, a failed statement
        the caller handles rolls back to its savepoint only."""
        with self._pinned():
            yield

    # -- collections ------------------------------------------------------------------------------------
    def _create_collection(self, name: str, model_id: str, dim: int) -> None:
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO collections (name, model_id, dim, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, model_id, dim, utcnow()),
            ).fetchone()
            if row is not None:
                ddl = collection_index_sql(int(row[0]), dim)
                if ddl is None:
                    log.warning("collection %s: %d-d vectors are searched exactly (no HNSW)", name, dim)
                else:
                    conn.execute(ddl)  # type: ignore[arg-type]

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

    def list_collections(self) -> list[Collection]:
        with self._conn() as conn:
            rows = conn.execute('SELECT name, model_id, dim, created_at FROM collections ORDER BY name COLLATE "C"')
            return [Collection(r[0], r[1], int(r[2]), r[3]) for r in rows.fetchall()]

    # -- subjects ---------------------------------------------------------------------------------------
    def _insert_subject(self, handle: int, new: Subject) -> Subject:
        columns = sql.subject_values(new, sql.SUBJECT_FIELDS, lambda t: t)
        try:
            with self._tx() as conn:
                conn.execute(
                    f"INSERT INTO subjects (collection_id, {', '.join(c for c, _ in columns)}) "  # type: ignore[arg-type]
                    f"VALUES (%s, {', '.join(_CASTS.get(c, '%s') for c, _ in columns)})",
                    (handle, *(v for _, v in columns)),
                )
        except pg_errors.UniqueViolation:
            raise SubjectExists(new.name, new.collection) from None
        return self.get_subject(new.id, collection=new.collection)

    def _find_subject(self, handle: int, collection: str, ref: str) -> Subject | None:
        with self._conn() as conn:
            row = _subject_row(conn, ref, handle)
        return None if row is None else sql.subject_from_row(row, collection)

    def _subject_page(
        self, handle: int, collection: str, after: tuple[str, str], limit: int
    ) -> tuple[list[Subject], int]:
        with self._tx() as conn:  # one snapshot for the count and the page
            total = conn.execute("SELECT count(*) FROM subjects WHERE collection_id = %s", (handle,)).fetchone()
            rows = conn.execute(
                f"SELECT {sql.SUBJECT_COLUMNS} FROM subjects s WHERE s.collection_id = %s "  # type: ignore[arg-type]
                'AND (s.name COLLATE "C", s.id COLLATE "C") > (%s, %s) '
                'ORDER BY s.name COLLATE "C", s.id COLLATE "C" LIMIT %s',
                (handle, *after, limit),
            ).fetchall()
        return [sql.subject_from_row(r, collection) for r in rows], int(total[0]) if total else 0

    def _update_subject(self, handle: int, current: Subject, updated: Subject, changed: frozenset[str]) -> bool:
        columns = sql.subject_values(updated, sorted(changed), lambda t: t)
        sets = ", ".join(f"{c} = {_CASTS.get(c, '%s')}" for c, _ in columns)
        try:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE subjects SET {sets} WHERE id = %s",  # type: ignore[arg-type]
                    (*(v for _, v in columns), current.id),
                )
        except pg_errors.UniqueViolation:
            raise SubjectExists(updated.name, current.collection) from None
        return cur.rowcount > 0

    def _delete_subject(self, handle: int, ref: str) -> Erasure | None:
        with self._tx() as conn:
            row = _subject_row(conn, ref, handle, lock="FOR UPDATE")
            if row is None:
                return None
            name = conn.execute("SELECT name FROM collections WHERE id = %s", (handle,)).fetchone()
            subject = sql.subject_from_row(row, str(name[0]) if name else "")
            ids = [int(r[0]) for r in conn.execute(
                "SELECT id FROM templates WHERE subject_id = %s ORDER BY id", (subject.id,)
            ).fetchall()]  # fmt: skip
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM templates WHERE subject_id = %(s)s AND chip IS NOT NULL), "
                "(SELECT count(*) FROM negatives WHERE subject_id = %(s)s)",
                {"s": subject.id},
            ).fetchone()
            assert counts is not None
            conn.execute("DELETE FROM subjects WHERE id = %s", (subject.id,))  # templates, negatives cascade
        return Erasure(
            subject.id, subject.name, subject.collection, self.backend_name, len(ids), int(counts[0]),
            int(counts[1]), subject.consent is not None, len(ids), 0, 0, tuple(ids),
        )  # fmt: skip

    def _expired(self, now: datetime) -> list[Subject]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {sql.SUBJECT_COLUMNS}, c.name FROM subjects s JOIN collections c "  # type: ignore[arg-type]
                "ON c.id = s.collection_id WHERE s.expires_at IS NOT NULL AND s.expires_at <= %s "
                'ORDER BY c.name COLLATE "C", s.name COLLATE "C"',
                (now,),
            ).fetchall()
        return [sql.subject_from_row(r, r[7]) for r in rows]

    # -- templates --------------------------------------------------------------------------------------
    def _insert_templates(self, handle: int, ref: str, items: Sequence[NewTemplate]) -> list[Template] | None:
        with self._tx() as conn:
            row = _subject_row(conn, ref, handle, lock="FOR SHARE")  # a concurrent delete waits for us
            if row is None:
                return None
            sid = str(row[0])
            params = []
            now = utcnow()
            for item in items:
                vector, chip = item.seal(self.cipher, sid)
                params.append(
                    (sid, handle, item.model_id, item.vector, vector, item.quality, item.box_json,
                     item.source_sha256, chip, now)
                )  # fmt: skip
            rows: list[Any] = []
            if params:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO templates (subject_id, collection_id, model_id, embedding, vector_enc, "
                        "quality, box, source_sha256, chip, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) "
                        f"RETURNING {sql.TEMPLATE_COLUMNS}",
                        params,
                        returning=True,
                    )
                    while True:
                        rows.extend(cur.fetchall())
                        if not cur.nextset():
                            break
        return [sql.template_from_row(r) for r in rows]

    def _templates_of(self, handle: int, subject_id: str) -> list[Template]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {sql.TEMPLATE_COLUMNS} FROM templates WHERE subject_id = %s ORDER BY id",  # type: ignore[arg-type]
                (subject_id,),
            ).fetchall()
        return [sql.template_from_row(r) for r in rows]

    def _vectors_of(self, handle: int, subject_id: str) -> list[tuple[int, str, bytes]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, model_id, vector_enc FROM templates WHERE subject_id = %s ORDER BY id", (subject_id,)
            ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def _chip_of(self, template_id: int) -> tuple[str, bytes | None] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT subject_id, chip FROM templates WHERE id = %s", (template_id,)).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else bytes(row[1]))

    def _delete_template(self, template_id: int) -> Erasure | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT t.subject_id, s.name, c.name, t.chip IS NOT NULL FROM templates t "
                "JOIN subjects s ON s.id = t.subject_id JOIN collections c ON c.id = t.collection_id "
                "WHERE t.id = %s FOR UPDATE OF t",
                (template_id,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM templates WHERE id = %s", (template_id,))
        return Erasure(
            str(row[0]), str(row[1]), str(row[2]), self.backend_name, 1, int(bool(row[3])), 0, False, 1, 0, 0,
            (template_id,),
        )  # fmt: skip

    # -- negatives --------------------------------------------------------------------------------------
    def _insert_negative(self, handle: int, coll: Collection, ref: str, vector: np.ndarray) -> bool:
        with self._tx() as conn:
            row = _subject_row(conn, ref, handle, lock="FOR SHARE")
            if row is None:
                return False
            sid = str(row[0])
            conn.execute(
                "INSERT INTO negatives (subject_id, vector_enc, created_at) VALUES (%s, %s, %s)",
                (sid, seal_vector(self.cipher, vector, sid, coll.model_id, "neg"), utcnow()),
            )
        return True

    def _negative_blobs(self, handle: int, subject_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT subject_id, vector_enc FROM negatives WHERE subject_id = ANY(%s) ORDER BY id",
                (list(subject_ids),),
            ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

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
            f"WHERE collection_id = {int(cid)} AND subject_id <> ALL(%(x)s) "
            f"ORDER BY {expr} {DISTANCE_OP} {probe} LIMIT %(k)s"
            ") n JOIN subjects s ON s.id = n.subject_id"
        )

    def _subject_count(self, handle: int) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT count(*) FROM subjects WHERE collection_id = %s", (handle,)).fetchone()
        return int(row[0]) if row else 0

    def _nearest(
        self, handle: int, coll: Collection, probes: np.ndarray, k: int, excluded: frozenset[str] = frozenset()
    ) -> Neighbours:
        sql = self._search_sql(handle, coll.dim)
        left_out = sorted(excluded)
        with self._pinned() as conn:  # one snapshot for the hits, the names and the negatives
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(self.ef_search, k)),))
            if left_out:  # HNSW filters after its walk; an iterative scan keeps walking until k rows pass
                conn.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
            hits = [
                [
                    Hit(r[1], r[2], float(r[3]))
                    for r in conn.execute(sql, {"q": probe, "k": k, "x": left_out}).fetchall()  # type: ignore[arg-type]
                ]
                for probe in probes
            ]
            negatives = self._negatives_of(handle, coll, sorted({h.subject_id for face in hits for h in face}))
        return Neighbours(hits, negatives)

    def _excluded(self, handle: int, scope: SearchScope) -> frozenset[str]:
        """:meth:`SearchScope.admits` in SQL (jsonb). Without a purpose or required consent only the expired
        and the withdrawn are read, each through an index; otherwise every subject's consent is checked."""
        args = {"c": handle, "now": scope.now, "purpose": scope.purpose}
        if not scope.strict:
            sql = (
                "SELECT id FROM subjects WHERE collection_id = %(c)s AND expires_at IS NOT NULL "
                "AND expires_at <= %(now)s UNION SELECT id FROM subjects WHERE collection_id = %(c)s "
                "AND (consent->>'withdrawn_at') IS NOT NULL"
            )
        else:
            sql = (
                "SELECT id FROM subjects WHERE collection_id = %(c)s AND ("
                "(expires_at IS NOT NULL AND expires_at <= %(now)s) OR consent IS NULL "
                "OR (consent->>'withdrawn_at') IS NOT NULL "
                "OR (%(purpose)s::text IS NOT NULL "
                "AND NOT coalesce(consent->'purposes', '[]'::jsonb) @> jsonb_build_array(%(purpose)s::text) "
                "AND coalesce(consent->>'purpose', '') <> %(purpose)s::text))"
            )
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()  # type: ignore[arg-type]
        return frozenset(str(r[0]) for r in rows)

    def _expiring(self, handle: int, now: datetime, until: datetime) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT count(*) FROM subjects WHERE collection_id = %s AND expires_at > %s AND expires_at <= %s",
                (handle, now, until),
            ).fetchone()
        return int(row[0]) if row else 0

    def _load_policy(self, handle: int) -> CollectionPolicy:
        with self._conn() as conn:
            row = conn.execute("SELECT policy FROM collections WHERE id = %s", (handle,)).fetchone()
        return CollectionPolicy.from_json(None if row is None else row[0])

    def _store_policy(self, handle: int, collection: str, policy: CollectionPolicy) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE collections SET policy = %s WHERE id = %s", (policy.to_json(), handle))

    def _subject_names(self, handle: int, subject_ids: Sequence[str]) -> dict[str, str]:
        with self._conn() as conn:
            rows = conn.execute("SELECT id, name FROM subjects WHERE id = ANY(%s)", (list(subject_ids),)).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    # -- housekeeping -----------------------------------------------------------------------------------
    def _counts(self, handle: int) -> tuple[int, int, int]:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM subjects WHERE collection_id = %(c)s), "
                "(SELECT count(*) FROM templates WHERE collection_id = %(c)s), "
                "(SELECT count(*) FROM negatives n JOIN subjects s ON s.id = n.subject_id "
                "WHERE s.collection_id = %(c)s)",
                {"c": handle},
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def scrub(self) -> str:
        """VACUUM FULL the gallery's tables (each is rewritten into a new file, its indexes rebuilt; the old
        files are truncated at commit and unlinked at the next checkpoint), then CHECKPOINT when allowed. Takes
        an exclusive lock per table while it runs. The WAL keeps the old rows until its segments are recycled."""
        with self._conn() as conn:
            for table in ("templates", "negatives", "subjects"):
                conn.execute(f"VACUUM FULL {table}")  # type: ignore[arg-type]
            try:
                conn.execute("CHECKPOINT")
                done = "checkpointed"
            except pg_errors.InsufficientPrivilege:
                done = "not checkpointed (needs the pg_checkpoint role): old files go at the next checkpoint"
        return f"tables rewritten (VACUUM FULL); {done}"

    def _index_kind(self, coll: Collection, templates: int) -> str:
        return "pgvector-hnsw" if coll.dim <= HNSW_MAX_DIM else "exact"

    def _disk_bytes(self) -> int:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size('templates') + pg_total_relation_size('subjects') "
                "+ pg_total_relation_size('negatives')"
            ).fetchone()
        return int(row[0]) if row else 0
