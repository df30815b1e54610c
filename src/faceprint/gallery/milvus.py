"""The Milvus backend: the gallery in a Milvus server (``milvus://host:19530[/database]``) or in a Milvus Lite
file (``faces.db``), through pymilvus's ``MilvusClient``.

Everything lives in Milvus, so every client of one server shares one gallery with no other store to run:

``<prefix>_catalog``     the template-key check value and one row per faceprint collection (name, model,
                         dimension, created_at); Milvus wants a vector field in every collection, so it
                         has a 2-d placeholder vector.
``<prefix>_s_<hash>``    a collection's subjects: id (primary key), name, expiry, metadata/consent (JSON).
``<prefix>_t_<hash>``    its templates and negatives: int64 id, kind (0 template, 1 negative), subject id,
                         provenance (JSON), the AES-256-GCM copy of the vector (base64) and the plaintext
                         vector under an HNSW index (inner product: vectors are L2-normalised).

Consistency level ``Strong`` on every collection: a search or query waits until it sees every write
acknowledged before it started, so a returned enrolment is searchable at once by every client.

Milvus has no multi-statement transactions. One ``add_templates`` is one insert request (Milvus applies a
request whole), and a deletion removes the templates before the subject row, so a search never returns a
template whose subject is gone. :meth:`bulk` buffers the writes of its block (nothing is written when the
block raises) and sends them as a few large requests at the end; a crash while those are being sent can
leave part of the batch, which re-running the import with ``skip_existing`` completes. Milvus does not
enforce unique names either: the check-then-insert of a name can race between two clients writing at the
same moment (single-writer enrolment, or PostgreSQL, where that matters).

Template ids are made by the client (:class:`_Ids`, snowflake-style) so that :meth:`bulk` can return them
before anything is written. Chips (``--keep-chips``) are refused: a chip is larger than a Milvus VARCHAR.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from faceprint.gallery.common import GalleryBase, Neighbours, NewTemplate, excluded_by
from faceprint.gallery.crypto import key_header, seal_vector, vector_aad
from faceprint.gallery.errors import GalleryError, SubjectExists
from faceprint.gallery.location import redact_location
from faceprint.gallery.model import (
    Collection,
    CollectionPolicy,
    Consent,
    Erasure,
    Metadata,
    Sealed,
    SearchScope,
    Subject,
    Template,
    from_iso,
    metadata_json,
    to_iso,
    utcnow,
)
from faceprint.gallery.scoring import Hit

log = logging.getLogger(__name__)

CONSISTENCY = "Strong"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 100
TEMPLATE, NEGATIVE = 0, 1
_TEXT_MAX = 65_535  # Milvus VARCHAR limit (bytes)
_NAME_MAX = 1_024
_QUERY_BATCH = 4_096
_QUERY_WINDOW = 16_384  # Milvus's largest offset + limit of one query
_PLACEHOLDER = [0.0, 0.0]


class _Ids:
    """Snowflake-style int64 ids: milliseconds since 2024 (41 bits) ‖ random node (10 bits) ‖ sequence (12).

    Increasing within a process and time-ordered across processes; two clients collide only if they drew
    the same node number and write in the same millisecond with the same sequence number.
    """

    _EPOCH_MS = 1_704_067_200_000

    def __init__(self) -> None:
        self._node = secrets.randbelow(1 << 10)
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            candidate = ((int(time.time() * 1000) - self._EPOCH_MS) << 22) | (self._node << 12)
            self._last = max(candidate, self._last + 1)
            return self._last


def _q(value: str) -> str:
    """A Milvus filter string literal."""
    return json.dumps(value, ensure_ascii=False)


def _in(field_name: str, values: Iterable[str]) -> str:
    return f"{field_name} in [{', '.join(_q(v) for v in values)}]"


def _micros(value: datetime | None) -> int:
    if value is None:
        return -1
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


@dataclass
class _Batch:
    """Writes buffered by :meth:`MilvusGallery.bulk`, per Milvus collection pair."""

    subjects: dict[str, dict[str, dict | None]] = field(default_factory=dict)  # s-coll → id → row | None
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # s-coll → name → id (pending rows)
    deleted: dict[str, set[str]] = field(default_factory=dict)  # s-coll → subject ids to delete first
    rows: dict[str, list[dict]] = field(default_factory=dict)  # t-coll → template/negative rows
    dropped: dict[str, set[int]] = field(default_factory=dict)  # t-coll → template ids to delete


@dataclass(frozen=True)
class _Names:
    subjects: str
    templates: str
    collection: str = ""


def parse_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``milvus://[user:pass@]host:port[/db][?token=…]`` → pymilvus uri and client keywords; a path → itself."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("milvus", "milvus+http", "milvus+https"):
        return str(Path(uri).expanduser()), {}
    http = "https" if parts.scheme.lower().endswith("https") else "http"
    kwargs: dict[str, str] = {}
    if parts.username:
        kwargs["token"] = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    query = parse_qs(parts.query)
    if "token" in query:
        kwargs["token"] = query["token"][0]
    if parts.path.strip("/"):
        kwargs["db_name"] = parts.path.strip("/")
    return f"{http}://{parts.hostname}:{parts.port or 19530}", kwargs


class MilvusGallery(GalleryBase[_Names]):
    """:class:`~faceprint.gallery.base.Gallery` on Milvus or Milvus Lite (see the module docstring); a
    collection is addressed by the names of its two Milvus collections."""

    backend_name = "Milvus"
    keeps_chips = False

    def __init__(
        self,
        uri: str,
        *,
        key: bytes | None = None,
        create: bool = True,
        prefix: str = "faceprint",
        ef_search: int = HNSW_EF_SEARCH,
    ) -> None:
        """``prefix`` names this gallery's Milvus collections (several galleries can share a server)."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,100}", prefix):
            raise GalleryError(f"invalid Milvus collection prefix {prefix!r}")
        self.location = redact_location(uri)
        self.prefix = prefix
        self.ef_search = int(ef_search)
        target, kwargs = parse_uri(uri)
        self._local_path = None if target.startswith(("http://", "https://")) else Path(target)
        if self._local_path is not None and not create and not self._local_path.exists():
            raise GalleryError(f"no gallery at {self._local_path}")
        try:
            self._client = MilvusClient(uri=target, **kwargs)
        except MilvusException as exc:
            raise GalleryError(f"cannot open the Milvus gallery {self.location}: {exc}") from None
        self._catalog = f"{prefix}_catalog"
        self._ids = _Ids()
        self._local = threading.local()
        self._loaded: set[str] = set()
        self._collections: dict[str, Collection] = {}  # a collection's contract never changes once made
        try:
            if not self._client.has_collection(self._catalog):
                if not create:
                    raise GalleryError(f"no faceprint gallery {prefix!r} in {self.location}")
                self._create_catalog()
        except BaseException:
            self._client.close()
            raise
        self._init_cipher(key)

    # -- lifecycle --------------------------------------------------------------------------------------
    def _release(self) -> None:
        self._client.close()

    @property
    def client(self) -> MilvusClient:
        if self._closed:
            raise GalleryError(f"the gallery {self.location} is closed")
        return self._client

    def _load_key_check(self) -> tuple[bytes, str | None] | None:
        rows = {r["key"]: r["value"] for r in self._query(self._catalog, _in("key", ["key_check", "key_id"]))}
        if "key_check" not in rows:
            return None
        return base64.b64decode(rows["key_check"]), rows.get("key_id")

    def _store_key_check(self, check: bytes, key_id: str) -> None:
        self.client.upsert(
            self._catalog,
            [
                {"key": "key_check", "value": _b64(check), "placeholder": _PLACEHOLDER},
                {"key": "key_id", "value": key_id, "placeholder": _PLACEHOLDER},
            ],
        )

    @staticmethod
    def _meta_key(name: str) -> str:
        return name if name in ("key_check", "key_id") else f"meta:{name}"

    def _load_meta(self, name: str) -> bytes | None:
        rows = self._query(self._catalog, f"key == {_q(self._meta_key(name))}")
        if not rows:
            return None
        value = rows[0]["value"]
        return value.encode() if name == "key_id" else base64.b64decode(value)

    def _store_meta(self, values: Mapping[str, bytes | None]) -> None:
        """Upserts in one request, then deletes: a crash between leaves the rotation record, which a rerun
        finishes."""
        upserts = [
            {
                "key": self._meta_key(name),
                "value": value.decode() if name == "key_id" else _b64(value),
                "placeholder": _PLACEHOLDER,
            }
            for name, value in values.items()
            if value is not None
        ]
        if upserts:
            self.client.upsert(self._catalog, upserts)
        gone = [self._meta_key(name) for name, value in values.items() if value is None]
        if gone:
            self.client.delete(self._catalog, ids=gone)

    def _sealed_rows(self, exclude_key_id: str, limit: int) -> list[Sealed]:
        head = _b64(key_header(exclude_key_id))  # 9 bytes: 12 base64 characters, a prefix of every such value
        out: list[Sealed] = []
        for coll in self.list_collections():
            names = self._names(coll.name)
            for row in self._query(
                names.templates, f'not (enc like "{head}%")', ["id", "kind", "subject_id", "info", "enc"]
            ):
                model = coll.model_id if row["kind"] == NEGATIVE else json.loads(row["info"])["model_id"]
                kind = "neg" if row["kind"] == NEGATIVE else "tpl"
                aad = vector_aad(row["subject_id"], model, kind)
                out.append(Sealed(names.templates, int(row["id"]), "enc", aad, base64.b64decode(row["enc"])))
                if len(out) >= limit:
                    return out
        return out

    def _swap_sealed(self, swaps: Sequence[tuple[Sealed, bytes]]) -> int:
        """Milvus has no compare-and-swap: each row is read again, upserted with its new ``enc`` only if it
        still holds the old one, and deleted again if its subject was deleted meanwhile (an upsert of a row
        deleted since would otherwise bring it back)."""
        done = 0
        by_table: dict[str, list[tuple[Sealed, bytes]]] = {}
        for row, new in swaps:
            by_table.setdefault(row.table, []).append((row, new))
        for table, items in by_table.items():
            current = {
                int(r["id"]): r
                for r in self._query(table, f"id in [{', '.join(str(int(row.row)) for row, _ in items)}]", ["*"])
            }
            upserts = []
            for row, new in items:
                stored = current.get(int(row.row))
                if stored is not None and base64.b64decode(stored["enc"]) == row.blob:
                    upserts.append({**stored, "enc": _b64(new)})
            if not upserts:
                continue
            self.client.upsert(self._ready(table), upserts)
            subjects_table = table.replace(f"{self.prefix}_t_", f"{self.prefix}_s_", 1)
            sids = sorted({r["subject_id"] for r in upserts})
            alive = {r["id"] for r in self._query(subjects_table, _in("id", sids), ["id"])}
            dead = [int(r["id"]) for r in upserts if r["subject_id"] not in alive]
            if dead:
                self.client.delete(self._ready(table), ids=dead)
            done += len(upserts) - len(dead)
        return done

    # -- schema -----------------------------------------------------------------------------------------
    def _create_catalog(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=_NAME_MAX + 16)
        schema.add_field("value", DataType.VARCHAR, max_length=_TEXT_MAX)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        self._create(self._catalog, schema, "placeholder", "FLAT", {})

    def _create(
        self, name: str, schema: Any, vector_field: str, index: str, params: dict, scalars: Sequence[str] = ()
    ) -> None:
        """Create a collection with its vector index and INVERTED indexes on the ``scalars`` it is looked up by."""
        index_params = self._client.prepare_index_params()
        index_params.add_index(vector_field, index_type=index, metric_type="IP", params=params)
        for scalar in scalars:
            index_params.add_index(scalar, index_type="INVERTED")
        try:
            self._client.create_collection(
                name, schema=schema, index_params=index_params, consistency_level=CONSISTENCY
            )
        except MilvusException:
            if not self._client.has_collection(name):  # lost a creation race: fine; anything else is not
                raise
        self._loaded.add(name)

    def _create_collection_pair(self, names: _Names, dim: int) -> None:
        self._create_subjects(names.subjects)
        self._create_templates(names.templates, dim)

    def _create_subjects(self, name: str) -> None:
        subjects = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        subjects.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        subjects.add_field("name", DataType.VARCHAR, max_length=_NAME_MAX)
        subjects.add_field("expires", DataType.INT64)  # µs since the epoch, -1: never
        subjects.add_field("info", DataType.VARCHAR, max_length=_TEXT_MAX)
        subjects.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        self._create(name, subjects, "placeholder", "FLAT", {}, scalars=["name"])

    def _create_templates(self, name: str, dim: int) -> None:
        templates = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        templates.add_field("id", DataType.INT64, is_primary=True)
        templates.add_field("kind", DataType.INT8)
        templates.add_field("subject_id", DataType.VARCHAR, max_length=64)
        templates.add_field("info", DataType.VARCHAR, max_length=4_096)
        templates.add_field("enc", DataType.VARCHAR, max_length=_TEXT_MAX)
        templates.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
        self._create(name, templates, "vector", "HNSW", params, scalars=["subject_id"])

    def _names(self, name: str) -> _Names:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return _Names(f"{self.prefix}_s_{digest}", f"{self.prefix}_t_{digest}", name)

    def _ready(self, name: str) -> str:
        """Load a collection once per process (a fresh Milvus Lite process starts with nothing loaded)."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)
        return name

    # -- reading ----------------------------------------------------------------------------------------
    def _query(self, name: str, expr: str, fields: Sequence[str] | None = None) -> list[dict]:
        """Every row matching ``expr``: one query, or an iterator past Milvus's 16,384-row query window."""
        out_fields = list(fields) if fields else ["*"]
        try:
            rows = self.client.query(self._ready(name), filter=expr, output_fields=out_fields, limit=_QUERY_WINDOW)
            if len(rows) < _QUERY_WINDOW:
                return [dict(r) for r in rows]
            iterator = self.client.query_iterator(
                self._ready(name), batch_size=_QUERY_BATCH, filter=expr, output_fields=out_fields
            )
            rows = []
            while batch := iterator.next():
                rows.extend(dict(r) for r in batch)
            iterator.close()
            return rows
        except MilvusException as exc:
            raise GalleryError(f"Milvus gallery {self.location}: {exc}") from None

    def _count(self, name: str, expr: str) -> int:
        rows = self.client.query(self._ready(name), filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    # -- bulk -------------------------------------------------------------------------------------------
    def _batch(self) -> _Batch | None:
        return getattr(self._local, "batch", None)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Buffer the block's writes; send them when it ends, drop them when it raises (module docstring)."""
        if self._batch() is not None:
            yield
            return
        batch = _Batch()
        self._local.batch = batch
        try:
            yield
        finally:
            self._local.batch = None
        self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        client = self.client
        for scoll, ids in batch.deleted.items():
            tcoll = f"{self.prefix}_t_{scoll[len(self.prefix) + 3 :]}"  # the pair of <prefix>_s_<hash>
            for chunk in _chunks(sorted(ids)):
                client.delete(self._ready(tcoll), filter=_in("subject_id", chunk))
                client.delete(self._ready(scoll), ids=chunk)
        for tcoll, pks in batch.dropped.items():
            for chunk in _chunks(sorted(pks)):
                client.delete(self._ready(tcoll), ids=chunk)
        for scoll, subjects in batch.subjects.items():
            rows = [r for r in subjects.values() if r is not None]
            for chunk in _chunks(rows):
                client.upsert(self._ready(scoll), chunk)
        for tcoll, rows in batch.rows.items():
            for chunk in _chunks(rows):
                client.insert(self._ready(tcoll), chunk)
        # Seal what a bulk load wrote, as Milvus advises after an import: sealed segments are indexed
        # (HNSW, INVERTED) where a growing segment is scanned row by row.
        for name in {*batch.subjects, *batch.deleted, *batch.rows, *batch.dropped}:
            client.flush(name)

    def _write_subject(self, names: _Names, row: dict) -> None:
        batch = self._batch()
        if batch is None:
            self.client.upsert(self._ready(names.subjects), [row])
        else:
            batch.subjects.setdefault(names.subjects, {})[row["id"]] = row
            batch.names.setdefault(names.subjects, {})[row["name"]] = row["id"]

    def _write_rows(self, names: _Names, rows: list[dict]) -> None:
        batch = self._batch()
        if batch is None:
            if rows:
                self.client.insert(self._ready(names.templates), rows)  # one request: all or nothing
        else:
            batch.rows.setdefault(names.templates, []).extend(rows)

    # -- collections ------------------------------------------------------------------------------------
    def _create_collection(self, name: str, model_id: str, dim: int) -> None:
        self._create_collection_pair(self._names(name), dim)
        record = {"model_id": model_id, "dim": dim, "created_at": to_iso(utcnow())}
        row = {"key": f"collection:{name}", "value": json.dumps(record), "placeholder": _PLACEHOLDER}
        self.client.upsert(self._catalog, [row])

    @staticmethod
    def _collection_from_row(row: dict) -> Collection:
        record = json.loads(row["value"])
        created = from_iso(record["created_at"])
        assert created is not None
        return Collection(row["key"].split(":", 1)[1], record["model_id"], int(record["dim"]), created)

    def _find_collection(self, name: str) -> tuple[_Names, Collection] | None:
        if name not in self._collections:
            rows = self._query(self._catalog, f"key == {_q('collection:' + name)}")
            if not rows:
                return None
            self._collections[name] = self._collection_from_row(rows[0])
        return self._names(name), self._collections[name]

    def list_collections(self) -> list[Collection]:
        rows = self._query(self._catalog, 'key like "collection:%"')
        return sorted((self._collection_from_row(r) for r in rows), key=lambda c: c.name)

    # -- subjects ---------------------------------------------------------------------------------------
    def _subject_rows(self, names: _Names, ref: str, *, by: tuple[str, ...] = ("id", "name")) -> dict | None:
        """The subject's row by id, else by name, as this thread sees it (its bulk batch included)."""
        batch = self._batch()
        pending = {} if batch is None else batch.subjects.get(names.subjects, {})
        deleted = set() if batch is None else batch.deleted.get(names.subjects, set())
        by_name = {} if batch is None else batch.names.get(names.subjects, {})
        for sid in (ref, by_name.get(ref)):
            row = pending.get(sid) if sid is not None else None
            if row is not None and (row["id"] == ref or row["name"] == ref):
                return row
        for column in by:
            for row in self._query(names.subjects, f"{column} == {_q(ref)}"):
                if row["id"] in pending or row["id"] in deleted:
                    continue  # replaced (renamed) or deleted in this batch
                return row
        return None

    def _template_rows(self, names: _Names, subject_ids: Sequence[str], kind: int, fields: Sequence[str]) -> list:
        if not subject_ids:
            return []
        rows: list[dict] = []
        for chunk in _chunks(list(subject_ids)):
            rows += self._query(names.templates, f"kind == {kind} and {_in('subject_id', chunk)}", fields)
        batch = self._batch()
        if batch is not None:
            wanted = set(subject_ids)
            gone = batch.deleted.get(names.subjects, set())
            dropped = batch.dropped.get(names.templates, set())
            rows = [r for r in rows if r["subject_id"] not in gone and r["id"] not in dropped]
            rows += [r for r in batch.rows.get(names.templates, []) if r["kind"] == kind and r["subject_id"] in wanted]
        return sorted(rows, key=lambda r: r["id"])

    def _subject(self, names: _Names, row: dict, collection: str, count: int | None = None) -> Subject:
        info = json.loads(row["info"])
        if count is None:
            count = len(self._template_rows(names, [row["id"]], TEMPLATE, ["id", "subject_id", "kind"]))
        created = from_iso(info["created_at"])
        assert created is not None
        return Subject(
            id=row["id"],
            name=row["name"],
            collection=collection,
            metadata=info["metadata"],
            consent=None if info["consent"] is None else Consent.from_dict(info["consent"]),
            created_at=created,
            expires_at=from_iso(info["expires_at"]),
            template_count=count,
        )

    @staticmethod
    def _subject_row(
        sid: str,
        name: str,
        metadata: Metadata,
        consent: Consent | None,
        created_at: str | None,
        expires_at: datetime | None,
    ) -> dict:
        if len(name.encode()) > _NAME_MAX:
            raise GalleryError(f"a subject name is limited to {_NAME_MAX} bytes on Milvus")
        info = json.dumps(
            {
                "metadata": json.loads(metadata_json(metadata)),
                "consent": None if consent is None else consent.to_dict(),
                "created_at": created_at,
                "expires_at": to_iso(expires_at),
            },
            ensure_ascii=False,
        )
        if len(info.encode()) > _TEXT_MAX:
            raise GalleryError(f"a subject's metadata and consent are limited to {_TEXT_MAX} bytes on Milvus")
        return {"id": sid, "name": name, "expires": _micros(expires_at), "info": info, "placeholder": _PLACEHOLDER}

    def _insert_subject(self, handle: _Names, new: Subject) -> Subject:
        if self._subject_rows(handle, new.name, by=("name",)) is not None or (
            self._subject_rows(handle, new.id, by=("id",)) is not None
        ):
            raise SubjectExists(new.name, new.collection)
        self._write_subject(handle, self._row_of(new))
        return new

    def _row_of(self, subject: Subject) -> dict:
        return self._subject_row(
            subject.id, subject.name, subject.metadata, subject.consent, to_iso(subject.created_at), subject.expires_at
        )

    def _find_subject(self, handle: _Names, collection: str, ref: str) -> Subject | None:
        row = self._subject_rows(handle, ref)
        return None if row is None else self._subject(handle, row, collection)

    def _subject_page(
        self, handle: _Names, collection: str, after: tuple[str, str], limit: int
    ) -> tuple[list[Subject], int]:
        """Milvus cannot sort a query, so this reads every subject's name and id (not their metadata) and
        sorts here: fine to a few million subjects per collection."""
        keys = sorted((r["name"], r["id"]) for r in self._query(handle.subjects, 'id != ""', ["id", "name"]))
        ids = [sid for name, sid in keys if (name, sid) > after][:limit]
        rows = {r["id"]: r for r in self._query(handle.subjects, _in("id", ids))} if ids else {}
        counts: dict[str, int] = {}
        for t in self._template_rows(handle, ids, TEMPLATE, ["id", "subject_id", "kind"]):
            counts[t["subject_id"]] = counts.get(t["subject_id"], 0) + 1
        items = [self._subject(handle, rows[s], collection, counts.get(s, 0)) for s in ids if s in rows]
        return items, len(keys)

    def _update_subject(self, handle: _Names, current: Subject, updated: Subject, changed: frozenset[str]) -> bool:
        if "name" in changed:
            other = self._subject_rows(handle, updated.name)
            if other is not None and other["id"] != current.id:
                raise SubjectExists(updated.name, current.collection)
        self._write_subject(handle, self._row_of(updated))
        return True

    def _delete_subjects(self, names: _Names, subject_ids: list[str]) -> None:
        """Templates and negatives first, then the subject rows: search never meets an orphan template."""
        batch = self._batch()
        if batch is not None:
            for sid in subject_ids:
                batch.subjects.get(names.subjects, {}).pop(sid, None)
                batch.deleted.setdefault(names.subjects, set()).add(sid)
            pending = batch.rows.get(names.templates, [])
            batch.rows[names.templates] = [r for r in pending if r["subject_id"] not in set(subject_ids)]
            return
        for chunk in _chunks(subject_ids):
            self.client.delete(self._ready(names.templates), filter=_in("subject_id", chunk))
            self.client.delete(self._ready(names.subjects), ids=chunk)

    def _delete_subject(self, handle: _Names, ref: str) -> Erasure | None:
        row = self._subject_rows(handle, ref)
        if row is None:
            return None
        collection = self._collection_of(handle)
        subject = self._subject(handle, row, collection)
        ids = [int(r["id"]) for r in self._template_rows(handle, [subject.id], TEMPLATE, ["id", "subject_id", "kind"])]
        negatives = len(self._template_rows(handle, [subject.id], NEGATIVE, ["id", "subject_id", "kind"]))
        self._delete_subjects(handle, [subject.id])
        return Erasure(
            subject.id, subject.name, collection, self.backend_name, len(ids), 0, negatives,
            subject.consent is not None, len(ids) + negatives, 0, 0, tuple(ids),
        )  # fmt: skip

    @staticmethod
    def _collection_of(names: _Names) -> str:
        return names.collection

    def _expired(self, now: datetime) -> list[Subject]:
        cutoff = _micros(now)
        expired: list[Subject] = []
        for coll in self.list_collections():
            names = self._names(coll.name)
            rows = self._query(names.subjects, f"expires >= 0 and expires <= {cutoff}")
            expired += sorted((self._subject(names, r, coll.name) for r in rows), key=lambda s: s.name)
        return expired

    # -- templates --------------------------------------------------------------------------------------
    def _insert_templates(self, handle: _Names, ref: str, items: Sequence[NewTemplate]) -> list[Template] | None:
        row = self._subject_rows(handle, ref)
        if row is None:
            return None
        sid = row["id"]
        now = utcnow()
        rows, out = [], []
        for item in items:
            tid = self._ids.next()
            info = {
                "model_id": item.model_id,
                "quality": item.quality,
                "box": item.box,
                "sha256": item.source_sha256,
                "created_at": to_iso(now),
            }
            enc, _ = item.seal(self.cipher, sid)
            rows.append(
                {
                    "id": tid,
                    "kind": TEMPLATE,
                    "subject_id": sid,
                    "info": json.dumps(info),
                    "enc": _b64(enc),
                    "vector": item.vector.tolist(),
                }
            )
            out.append(Template(tid, sid, item.model_id, item.quality, item.box, item.source_sha256, now))
        self._write_rows(handle, rows)
        return out

    @staticmethod
    def _template(row: dict) -> Template:
        info = json.loads(row["info"])
        created = from_iso(info["created_at"])
        assert created is not None
        box = None if info["box"] is None else tuple(float(v) for v in info["box"])
        return Template(
            int(row["id"]), row["subject_id"], info["model_id"], info["quality"], box, info["sha256"], created
        )  # type: ignore[arg-type]

    def _templates_of(self, handle: _Names, subject_id: str) -> list[Template]:
        rows = self._template_rows(handle, [subject_id], TEMPLATE, ["id", "kind", "subject_id", "info"])
        return [self._template(r) for r in rows]

    def _vectors_of(self, handle: _Names, subject_id: str) -> list[tuple[int, str, bytes]]:
        rows = self._template_rows(handle, [subject_id], TEMPLATE, ["id", "kind", "subject_id", "info", "enc"])
        return [(int(r["id"]), json.loads(r["info"])["model_id"], base64.b64decode(r["enc"])) for r in rows]

    def _stored_template(self, names: _Names, template_id: int) -> dict | None:
        rows = self._query(names.templates, f"id == {int(template_id)} and kind == {TEMPLATE}", ["id", "subject_id"])
        return rows[0] if rows else None

    def _chip_of(self, template_id: int) -> tuple[str, bytes | None] | None:
        """Milvus keeps no chips: a template it holds has none."""
        for coll in self.list_collections():
            row = self._stored_template(self._names(coll.name), template_id)
            if row is not None:
                return row["subject_id"], None
        return None

    def _delete_template(self, template_id: int) -> Erasure | None:
        batch = self._batch()
        for coll in self.list_collections():
            names = self._names(coll.name)
            if batch is not None:
                pending = batch.rows.get(names.templates, [])
                found = [r for r in pending if r["id"] == template_id and r["kind"] == TEMPLATE]
                if found:
                    batch.rows[names.templates] = [r for r in pending if r["id"] != template_id]
                    return self._template_erasure(names, coll.name, found[0]["subject_id"], template_id)
            stored = self._stored_template(names, template_id)
            if stored is None:
                continue
            if batch is not None:
                batch.dropped.setdefault(names.templates, set()).add(int(template_id))
            else:
                self.client.delete(self._ready(names.templates), ids=[int(template_id)])
            return self._template_erasure(names, coll.name, stored["subject_id"], template_id)
        return None

    def _template_erasure(self, names: _Names, collection: str, subject_id: str, template_id: int) -> Erasure:
        row = self._subject_rows(names, subject_id, by=("id",))
        name = "" if row is None else row["name"]
        return Erasure(subject_id, name, collection, self.backend_name, 1, 0, 0, False, 1, 0, 0, (template_id,))

    # -- negatives --------------------------------------------------------------------------------------
    def _insert_negative(self, handle: _Names, coll: Collection, ref: str, vector: np.ndarray) -> bool:
        row = self._subject_rows(handle, ref)
        if row is None:
            return False
        sid = row["id"]
        enc = seal_vector(self.cipher, vector, sid, coll.model_id, "neg")
        info = json.dumps({"created_at": to_iso(utcnow())})
        negative = {"id": self._ids.next(), "kind": NEGATIVE, "subject_id": sid, "info": info, "enc": _b64(enc)}
        self._write_rows(handle, [{**negative, "vector": vector.astype(np.float32).tolist()}])
        return True

    def _negative_blobs(self, handle: _Names, subject_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        rows = self._template_rows(handle, subject_ids, NEGATIVE, ["id", "kind", "subject_id", "enc"])
        return [(r["subject_id"], base64.b64decode(r["enc"])) for r in rows]

    # -- search -----------------------------------------------------------------------------------------
    def _subject_count(self, handle: _Names) -> int:
        return self._count(handle.subjects, 'id != ""')

    def _nearest(
        self, handle: _Names, coll: Collection, probes: np.ndarray, k: int, excluded: frozenset[str] = frozenset()
    ) -> Neighbours:
        try:
            results = self.client.search(
                self._ready(handle.templates),
                data=probes.astype(np.float32).tolist(),
                filter=f"kind == {TEMPLATE}" + (f" and not {_in('subject_id', sorted(excluded))}" if excluded else ""),
                limit=k,
                output_fields=["subject_id"],
                search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, k)}},
            )
        except MilvusException as exc:
            raise GalleryError(f"Milvus gallery {self.location}: {exc}") from None
        names = self._subject_names(handle, sorted({h["entity"]["subject_id"] for face in results for h in face}))
        hits = [
            [
                Hit(h["entity"]["subject_id"], names[h["entity"]["subject_id"]], float(h["distance"]))
                for h in face
                if h["entity"]["subject_id"] in names  # deleted meanwhile
            ]
            for face in results
        ]
        return Neighbours(hits, self._negatives_of(handle, coll, list(names)))

    def _excluded(self, handle: _Names, scope: SearchScope) -> frozenset[str]:
        return excluded_by(scope, self._scope_rows(handle, scope))

    def _scope_rows(self, handle: _Names, scope: SearchScope) -> list[tuple[str, datetime | None, Consent | None]]:
        """Milvus keeps consent inside the ``info`` text, so withdrawn ones are found with ``like``."""
        expr = 'id != ""'
        if not scope.strict:
            expr = f'(expires >= 0 and expires <= {_micros(scope.now)}) or (info like "%\\"withdrawn_at\\": \\"%")'
        out = []
        for row in self._query(handle.subjects, expr, ["id", "info"]):
            info = json.loads(row["info"])
            consent = None if info["consent"] is None else Consent.from_dict(info["consent"])
            out.append((row["id"], from_iso(info["expires_at"]), consent))
        return out

    def _expiring(self, handle: _Names, now: datetime, until: datetime) -> int:
        return self._count(handle.subjects, f"expires > {_micros(now)} and expires <= {_micros(until)}")

    def _load_policy(self, handle: _Names) -> CollectionPolicy:
        name = self._collection_of(handle)
        rows = self._query(self._catalog, f"key == {_q('policy:' + name)}")
        return CollectionPolicy.from_json(rows[0]["value"] if rows else None)

    def _store_policy(self, handle: _Names, collection: str, policy: CollectionPolicy) -> None:
        row = {"key": f"policy:{collection}", "value": policy.to_json(), "placeholder": _PLACEHOLDER}
        self.client.upsert(self._catalog, [row])

    def _subject_names(self, handle: _Names, subject_ids: Sequence[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for chunk in _chunks(subject_ids):
            for r in self._query(handle.subjects, _in("id", chunk), ["id", "name"]):
                names[r["id"]] = r["name"]
        return names

    # -- housekeeping -----------------------------------------------------------------------------------
    def _counts(self, handle: _Names) -> tuple[int, int, int]:
        return (
            self._count(handle.subjects, 'id != ""'),
            self._count(handle.templates, f"kind == {TEMPLATE}"),
            self._count(handle.templates, f"kind == {NEGATIVE}"),
        )

    def scrub(self) -> str:
        """Rebuild every collection of the gallery without its deleted rows.

        Milvus deletes are tombstones: the rows stay in sealed segment files until a compaction rewrites
        them, which Milvus decides on its own (Milvus Lite never does). So each collection's live rows are
        copied into a staging collection (a catalog row marks it complete), the collection is dropped, with
        its files, made again and refilled from the copy, and the copy dropped. A crash leaves the marker and
        the copy; the next scrub restores from them before anything else.
        """
        rebuilt = 0
        for coll in self.list_collections():
            names = self._names(coll.name)
            self._rebuild(names.subjects, self._create_subjects, 'id != ""')
            self._rebuild(names.templates, lambda name, dim=coll.dim: self._create_templates(name, dim), "id >= 0")
            rebuilt += 2
        return f"{rebuilt} Milvus collection(s) rebuilt without deleted rows"

    def _rebuild(self, name: str, create: Callable[[str], None], every: str) -> None:
        client, staging, marker = self.client, f"{name}_scrub", f"scrub:{name}"
        if not self._query(self._catalog, f"key == {_q(marker)}"):  # no complete copy yet: make one
            if client.has_collection(staging):
                client.drop_collection(staging)
            self._loaded.discard(staging)
            create(staging)
            self._copy(name, staging, every)
            client.upsert(self._catalog, [{"key": marker, "value": name, "placeholder": _PLACEHOLDER}])
        if client.has_collection(name):
            client.drop_collection(name)  # its segment files go with it
        self._loaded.discard(name)
        create(name)
        self._copy(staging, name, every)
        client.delete(self._catalog, ids=[marker])
        client.drop_collection(staging)
        self._loaded.discard(staging)

    def _copy(self, source: str, target: str, every: str) -> None:
        rows = self._query(source, every, ["*"])
        for chunk in _chunks(rows):
            self.client.insert(self._ready(target), chunk)
        self.client.flush(target)

    def _index_kind(self, coll: Collection, templates: int) -> str:
        return "milvus-hnsw"

    def _disk_bytes(self) -> int:
        return _du(self._local_path) if self._local_path is not None else 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _chunks(items: Sequence, size: int = 1_000) -> Iterator[list]:
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):  # a file compacted away meanwhile
                total += (Path(root) / name).stat().st_size
    return total
