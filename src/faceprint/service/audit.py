"""The audit log: one append-only row per verify, identify, enrolment and deletion.

What is recorded: time, key id, action, endpoint, HTTP status, collection, subject ids, scores, threshold,
decision, model id and the sha256 of its weights, request id. What never is: image bytes, vectors, file
names given by the client.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faceprint.service.store import ServiceStore


@dataclass(frozen=True)
class AuditEntry:
    action: str
    endpoint: str
    status: int
    key_id: str | None = None
    request_id: str | None = None
    collection: str | None = None
    subject_ids: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    threshold: float | None = None
    decision: str | None = None
    model_id: str | None = None
    model_sha256: str | None = None  # the version of model_id's weights that made the decision
    detail: dict[str, object] = field(default_factory=dict)
    at: str = ""
    id: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at,
            "request_id": self.request_id,
            "key_id": self.key_id,
            "action": self.action,
            "endpoint": self.endpoint,
            "status": self.status,
            "collection": self.collection,
            "subject_ids": list(self.subject_ids),
            "scores": list(self.scores),
            "threshold": self.threshold,
            "decision": self.decision,
            "model_id": self.model_id,
            "model_sha256": self.model_sha256,
            "detail": self.detail,
        }


_COLS = (
    "id, at, request_id, key_id, action, endpoint, status, collection, subject_ids, scores, threshold, "
    "decision, model_id, detail, model_sha256"
)


class AuditLog:
    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    def append(self, entry: AuditEntry) -> int:
        with self.store.write() as conn:
            return self.insert(conn, entry)

    @staticmethod
    def insert(conn: sqlite3.Connection, entry: AuditEntry) -> int:
        """Append ``entry`` inside the caller's write transaction (a change and its record in one step)."""
        at = entry.at or datetime.now(UTC).isoformat(timespec="milliseconds")
        cur = conn.execute(
            f"INSERT INTO audit ({_COLS.removeprefix('id, ')}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                entry.request_id,
                entry.key_id,
                entry.action,
                entry.endpoint,
                entry.status,
                entry.collection,
                json.dumps(list(entry.subject_ids)),
                json.dumps([round(float(s), 6) for s in entry.scores]),
                entry.threshold,
                entry.decision,
                entry.model_id,
                json.dumps(entry.detail, sort_keys=True, default=str),
                entry.model_sha256,
            ),
        )
        return int(cur.lastrowid or 0)

    def query(
        self,
        *,
        limit: int = 100,
        since: str | None = None,
        until: str | None = None,
        action: str | None = None,
        key_id: str | None = None,
        subject_id: str | None = None,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first. ``since``/``until`` are ISO-8601 times (UTC), compared as text."""
        where, args = [], []
        for clause, value in (
            ("at >= ?", since),
            ("at < ?", until),
            ("action = ?", action),
            ("key_id = ?", key_id),
            ("id < ?", before_id),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        if subject_id is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(audit.subject_ids) WHERE value = ?)")
            args.append(subject_id)
        sql = f"SELECT {_COLS} FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.store.read().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [
            AuditEntry(
                id=r[0],
                at=r[1],
                request_id=r[2],
                key_id=r[3],
                action=r[4],
                endpoint=r[5],
                status=r[6],
                collection=r[7],
                subject_ids=tuple(json.loads(r[8])),
                scores=tuple(json.loads(r[9])),
                threshold=r[10],
                decision=r[11],
                model_id=r[12],
                detail=json.loads(r[13]),
                model_sha256=r[14],
            )
            for r in rows
        ]
