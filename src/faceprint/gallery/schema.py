"""SQLite schema as numbered migrations, and the connection settings every process must use.

The database is the source of truth: every vector index is a cache rebuilt from it. ``generation`` on a
collection is bumped by triggers on every template/subject/negative change, in the same transaction, so
an index that records the generation it was built at can tell whether it is stale — even when another
process made the change.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from faceprint.gallery.errors import GalleryCorrupt

BUSY_TIMEOUT_MS = 5000

MIGRATIONS: tuple[str, ...] = (
    # 0001: initial schema
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE collections (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        model_id   TEXT NOT NULL,
        dim        INTEGER NOT NULL CHECK (dim > 0),
        created_at TEXT NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE subjects (
        id            TEXT PRIMARY KEY,
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        metadata      TEXT NOT NULL DEFAULT '{}',
        consent       TEXT,
        created_at    TEXT NOT NULL,
        expires_at    TEXT,
        UNIQUE (collection_id, name)
    );
    CREATE INDEX subjects_expiry ON subjects(expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE templates (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_id    TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        model_id      TEXT NOT NULL,
        vector        BLOB NOT NULL,   -- AES-256-GCM(float32 little-endian)
        quality       REAL,
        box           TEXT,            -- JSON [x1, y1, x2, y2]
        source_sha256 TEXT,
        chip          BLOB,            -- AES-256-GCM(aligned chip), only when the operator keeps chips
        created_at    TEXT NOT NULL
    );
    CREATE INDEX templates_subject ON templates(subject_id);
    CREATE TABLE negatives (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_id TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
        vector     BLOB NOT NULL,      -- AES-256-GCM(float32): a face that is NOT this subject
        created_at TEXT NOT NULL
    );
    CREATE INDEX negatives_subject ON negatives(subject_id);
    CREATE TRIGGER templates_ins AFTER INSERT ON templates BEGIN
        UPDATE collections SET generation = generation + 1
        WHERE id = (SELECT collection_id FROM subjects WHERE id = NEW.subject_id);
    END;
    CREATE TRIGGER templates_del AFTER DELETE ON templates BEGIN
        UPDATE collections SET generation = generation + 1
        WHERE id = (SELECT collection_id FROM subjects WHERE id = OLD.subject_id);
    END;
    CREATE TRIGGER negatives_ins AFTER INSERT ON negatives BEGIN
        UPDATE collections SET generation = generation + 1
        WHERE id = (SELECT collection_id FROM subjects WHERE id = NEW.subject_id);
    END;
    CREATE TRIGGER subjects_del AFTER DELETE ON subjects BEGIN
        UPDATE collections SET generation = generation + 1 WHERE id = OLD.collection_id;
    END;
    """,
    # 0002: a change log so an index snapshot or another process's index catches up instead of rebuilding.
    # Rows carry the collection generation *after* the change. Templates deleted by the cascade of a subject
    # delete are logged by a BEFORE trigger on subjects (cascaded rows no longer see their subject).
    # ``log_since``: changes before this generation were never logged (galleries made before 0002).
    """
    CREATE TABLE index_log (
        collection_id INTEGER NOT NULL,
        generation    INTEGER NOT NULL,
        template_id   INTEGER NOT NULL,
        op            INTEGER NOT NULL CHECK (op IN (1, -1))
    );
    CREATE INDEX index_log_by_generation ON index_log(collection_id, generation);
    ALTER TABLE collections ADD COLUMN log_since INTEGER NOT NULL DEFAULT 0;
    UPDATE collections SET log_since = generation;
    DROP TRIGGER templates_ins;
    DROP TRIGGER templates_del;
    CREATE TRIGGER templates_ins AFTER INSERT ON templates BEGIN
        UPDATE collections SET generation = generation + 1
        WHERE id = (SELECT collection_id FROM subjects WHERE id = NEW.subject_id);
        INSERT INTO index_log (collection_id, generation, template_id, op)
        SELECT c.id, c.generation, NEW.id, 1 FROM collections c JOIN subjects s ON s.collection_id = c.id
        WHERE s.id = NEW.subject_id;
    END;
    CREATE TRIGGER templates_del AFTER DELETE ON templates BEGIN
        UPDATE collections SET generation = generation + 1
        WHERE id = (SELECT collection_id FROM subjects WHERE id = OLD.subject_id);
        INSERT INTO index_log (collection_id, generation, template_id, op)
        SELECT c.id, c.generation, OLD.id, -1 FROM collections c JOIN subjects s ON s.collection_id = c.id
        WHERE s.id = OLD.subject_id;
    END;
    CREATE TRIGGER subjects_del_log BEFORE DELETE ON subjects BEGIN
        INSERT INTO index_log (collection_id, generation, template_id, op)
        SELECT OLD.collection_id, c.generation + 1, t.id, -1 FROM templates t, collections c
        WHERE t.subject_id = OLD.id AND c.id = OLD.collection_id;
    END;
    """,
    # 0003: model migration (`faceprint migrate`). New vectors are staged here, batch by batch, while the
    # collection keeps answering with its current model; one transaction then swaps them in. A staged row
    # goes with its template (cascade), so a template deleted meanwhile is never resurrected.
    # ``chip_template``: the chip template a kept chip was cut for; NULL means the template of the model the
    # row was enrolled with (every chip before this version), set explicitly once a migration changes it.
    """
    CREATE TABLE migration_staging (
        template_id   INTEGER PRIMARY KEY REFERENCES templates(id) ON DELETE CASCADE,
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        model_id      TEXT NOT NULL,
        vector        BLOB NOT NULL     -- AES-256-GCM(float32), bound to the subject and the new model
    );
    CREATE INDEX migration_staging_collection ON migration_staging(collection_id, model_id);
    ALTER TABLE templates ADD COLUMN chip_template TEXT;
    """,
    # 0004: a collection's protection policy (default retention, consent required, purposes) as JSON
    # (faceprint.gallery.model.CollectionPolicy); NULL: the defaults. The two indexes let every search find
    # the subjects it must leave out (expired, consent withdrawn) without reading the others.
    """
    ALTER TABLE collections ADD COLUMN policy TEXT;
    CREATE INDEX subjects_withdrawn ON subjects(collection_id)
        WHERE json_extract(consent, '$.withdrawn_at') IS NOT NULL;
    CREATE INDEX subjects_collection_expiry ON subjects(collection_id, expires_at) WHERE expires_at IS NOT NULL;
    """,
)


def connect(path: Path, *, readonly: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with WAL, full fsync on commit, foreign keys and a busy timeout.

    ``isolation_level=None``: transactions are explicit (``BEGIN IMMEDIATE`` for writes), so a write never
    upgrades a read lock halfway (the classic SQLite deadlock between two writers).
    """
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Erased records are overwritten with zeros, not merely unlinked from the b-tree (see docs/privacy.md).
    conn.execute("PRAGMA secure_delete = ON")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise GalleryCorrupt(f"{path}: cannot switch the database to WAL mode (got {mode})")
    # FULL: a commit is fsynced before it returns, so an acknowledged enrolment survives power loss too.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this database has not seen, each in its own transaction; returns the version."""
    version = user_version(conn)
    if version > len(MIGRATIONS):
        raise GalleryCorrupt(
            f"the gallery schema is version {version}, newer than this faceprint knows ({len(MIGRATIONS)}); "
            "upgrade faceprint"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            if user_version(conn) > number:
                conn.execute("COMMIT")
                continue
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return user_version(conn)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit behind our back)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        stripped = line.split("--", 1)[0]
        buf += stripped
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
