"""PostgreSQL schema of the pgvector gallery as numbered migrations, applied under an advisory lock.

One ``templates`` table serves every collection. Its ``embedding`` column is an untyped ``vector`` so
collections of different dimensions can share it; each collection gets its own *partial expression* HNSW
index, ``((embedding::vector(dim)) vector_ip_ops) WHERE collection_id = N`` (created by
:func:`collection_index_sql` when the collection is created). A search that repeats that expression and
predicate walks only that collection's graph, so no post-filtering can starve the result list.

``vector_enc`` holds the AES-256-GCM copy of the same vector (as the embedded backend stores it): it is what
export, migration and :meth:`template_vectors` read, authenticated by the gallery key. The plaintext
``embedding`` column exists because PostgreSQL must compute distances itself; see docs/deploy.md for what
that means for backups and disk encryption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faceprint.gallery.errors import GalleryCorrupt

if TYPE_CHECKING:
    import psycopg

#: pg_advisory_xact_lock key serialising migrations and first-time key setup across processes.
MIGRATION_LOCK = 0x66_61_63_65_70_72  # "facepr"

#: pgvector's HNSW index holds vectors of up to 2,000 dimensions; larger collections are searched exactly.
HNSW_MAX_DIM = 2000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
#: Search width; raised to the number of neighbours asked for when that is larger.
HNSW_EF_SEARCH = 100

#: Operator class and distance operator. Measured (docs/deploy.md): with L2-normalised vectors inner product
#: and cosine rank identically; ``vector_ip_ops`` skips the two norms per distance and was as fast or faster.
OPCLASS = "vector_ip_ops"
DISTANCE_OP = "<#>"  # negative inner product: ascending order = most similar first

MIGRATIONS: tuple[str, ...] = (
    # 0001: initial schema
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE faceprint_meta (
        key   text PRIMARY KEY,
        value bytea NOT NULL
    );
    CREATE TABLE collections (
        id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name       text NOT NULL UNIQUE,
        model_id   text NOT NULL,
        dim        integer NOT NULL CHECK (dim > 0),
        created_at timestamptz NOT NULL
    );
    CREATE TABLE subjects (
        id            text PRIMARY KEY,
        collection_id integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        name          text NOT NULL,
        metadata      jsonb NOT NULL DEFAULT '{}',
        consent       jsonb,
        created_at    timestamptz NOT NULL,
        expires_at    timestamptz,
        UNIQUE (collection_id, name)
    );
    CREATE INDEX subjects_expiry ON subjects (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE templates (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        subject_id    text NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        collection_id integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        model_id      text NOT NULL,
        embedding     vector NOT NULL,       -- plaintext, for the HNSW index
        vector_enc    bytea NOT NULL,        -- AES-256-GCM(float32 little-endian)
        quality       double precision,
        box           jsonb,                 -- [x1, y1, x2, y2]
        source_sha256 text,
        chip          bytea,                 -- AES-256-GCM(aligned chip), only when the operator keeps chips
        created_at    timestamptz NOT NULL
    );
    CREATE INDEX templates_subject ON templates (subject_id);
    CREATE TABLE negatives (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        subject_id text NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        vector_enc bytea NOT NULL,           -- AES-256-GCM(float32): a face that is NOT this subject
        created_at timestamptz NOT NULL
    );
    CREATE INDEX negatives_subject ON negatives (subject_id);
    """,
    # 0002: a collection's protection policy (faceprint.gallery.model.CollectionPolicy) as JSON text.
    """
    ALTER TABLE collections ADD COLUMN policy text;
    CREATE INDEX subjects_withdrawn ON subjects (collection_id) WHERE (consent->>'withdrawn_at') IS NOT NULL;
    CREATE INDEX subjects_collection_expiry ON subjects (collection_id, expires_at) WHERE expires_at IS NOT NULL;
    """,
)


def collection_index_sql(collection_id: int, dim: int) -> str | None:
    """DDL of the collection's partial HNSW index (``None`` above pgvector's dimension limit)."""
    if dim > HNSW_MAX_DIM:
        return None
    cid, d = int(collection_id), int(dim)
    return (
        f"CREATE INDEX IF NOT EXISTS templates_hnsw_{cid} ON templates "
        f"USING hnsw ((embedding::vector({d})) {OPCLASS}) WITH (m = {HNSW_M}, ef_construction = "
        f"{HNSW_EF_CONSTRUCTION}) WHERE collection_id = {cid}"
    )


def schema_version(conn: psycopg.Connection) -> int | None:
    """The applied migration number, or ``None`` when this database holds no faceprint gallery."""
    if conn.execute("SELECT to_regclass('faceprint_schema')").fetchone()[0] is None:  # type: ignore[index]
        return None
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM faceprint_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection) -> int:
    """Apply the migrations this database has not seen, in one transaction, under an advisory lock (two
    processes starting together neither collide nor apply a migration twice). Returns the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS faceprint_schema ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = schema_version(conn) or 0
        if version > len(MIGRATIONS):
            raise GalleryCorrupt(
                f"the gallery schema is version {version}, newer than this faceprint knows ({len(MIGRATIONS)}); "
                "upgrade faceprint"
            )
        for number in range(version, len(MIGRATIONS)):
            conn.execute(MIGRATIONS[number])  # type: ignore[arg-type]
            conn.execute("INSERT INTO faceprint_schema (version) VALUES (%s)", (number + 1,))
    return len(MIGRATIONS)
