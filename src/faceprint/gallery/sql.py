"""What the two SQL backends (embedded SQLite, PostgreSQL) share: the subject and template columns they read,
how such a row becomes a record, and how a subject's fields become column values.

SQLite hands back JSON as text and times as ISO strings, PostgreSQL (jsonb, timestamptz) parsed JSON and
datetimes; both are accepted here. Statements are written once with ``?`` placeholders; PostgreSQL's
psycopg takes ``%s`` (:func:`placeholders`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from faceprint.gallery.model import Consent, Subject, Template, from_iso, metadata_json

SUBJECT_COLUMNS = (
    "s.id, s.name, s.metadata, s.consent, s.created_at, s.expires_at, "
    "(SELECT count(*) FROM templates t WHERE t.subject_id = s.id)"
)
TEMPLATE_COLUMNS = "id, subject_id, model_id, quality, box, source_sha256, created_at, chip IS NOT NULL"


def placeholders(sql: str, mark: str) -> str:
    """``sql`` with each ``?`` replaced by ``mark`` (statements here hold no literal question marks)."""
    return sql if mark == "?" else sql.replace("?", mark)


def _json(value: object) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _time(value: object) -> datetime | None:
    return from_iso(value) if isinstance(value, str) else value  # type: ignore[return-value]


def subject_from_row(row: Sequence[Any], collection: str) -> Subject:
    """A row of :data:`SUBJECT_COLUMNS` as a :class:`Subject`."""
    consent = _json(row[3])
    created = _time(row[4])
    assert created is not None
    return Subject(
        id=str(row[0]),
        name=str(row[1]),
        collection=collection,
        metadata=dict(_json(row[2]) or {}),
        consent=None if consent is None else Consent.from_dict(consent),
        created_at=created,
        expires_at=_time(row[5]),
        template_count=int(row[6]),
    )


def template_from_row(row: Sequence[Any]) -> Template:
    """A row of :data:`TEMPLATE_COLUMNS` as a :class:`Template`."""
    box = _json(row[4])
    created = _time(row[6])
    assert created is not None
    return Template(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        None if row[3] is None else float(row[3]),
        None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
        row[5],
        created,
        bool(row[7]),
    )


def subject_row(conn: Any, ref: str, collection_id: int, *, mark: str = "?", lock: str = "") -> Sequence[Any] | None:
    """The subject's :data:`SUBJECT_COLUMNS` by id, else by name; ``lock``: "FOR SHARE" / "FOR UPDATE"
    (PostgreSQL, within a transaction)."""
    for column in ("id", "name"):
        sql = f"SELECT {SUBJECT_COLUMNS} FROM subjects s WHERE s.collection_id = ? AND s.{column} = ?"
        row = conn.execute(placeholders(sql, mark) + (f" {lock}" if lock else ""), (collection_id, ref)).fetchone()
        if row is not None:
            return row
    return None


def subject_values(
    subject: Subject, fields: Iterable[str], stamp: Callable[[datetime | None], object]
) -> list[tuple[str, object]]:
    """``(column, value)`` of a subject's ``fields``: metadata and consent as JSON text (metadata checked),
    times through ``stamp`` (ISO text for SQLite, the datetime itself for PostgreSQL)."""
    values: dict[str, Callable[[], object]] = {
        "id": lambda: subject.id,
        "name": lambda: subject.name,
        "metadata": lambda: metadata_json(subject.metadata),
        "consent": lambda: None if subject.consent is None else json.dumps(subject.consent.to_dict()),
        "created_at": lambda: stamp(subject.created_at),
        "expires_at": lambda: stamp(subject.expires_at),
    }
    return [(name, values[name]()) for name in fields]


#: The columns ``subjects`` rows are inserted with, after ``collection_id``.
SUBJECT_FIELDS = ("id", "name", "metadata", "consent", "created_at", "expires_at")
