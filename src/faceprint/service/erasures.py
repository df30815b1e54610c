"""Erasure receipts in the service database: issued (signed, stored append-only) whenever the service or the
CLI deletes a subject or a face, purges an expired subject or deletes templates on a consent withdrawal;
read back by id (``GET /v1/erasures/{id}``, ``faceprint audit receipt ID``). Signing and verification:
:mod:`faceprint.privacy.receipts`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from faceprint.gallery.base import Gallery
from faceprint.gallery.model import Erasure
from faceprint.privacy.errors import ReceiptNotFound
from faceprint.privacy.receipts import ReceiptFacts, SigningKeys, make_receipt
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.store import ServiceStore


def receipt_keys_dir(service_db: Path) -> Path:
    """Where an installation keeps its receipt signing keys: beside its service database."""
    return Path(service_db).parent / "receipt-keys"


class ErasureLog:
    def __init__(self, store: ServiceStore, keys: SigningKeys | None = None) -> None:
        self.store = store
        self.keys = keys or SigningKeys(receipt_keys_dir(store.path))

    def issue(self, erasure: Erasure, facts: ReceiptFacts) -> dict[str, Any]:
        """Sign a receipt for ``erasure`` and store it; returns the signed receipt."""
        signed = self.keys.sign(make_receipt(erasure, facts))
        body = signed["receipt"]
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO erasures (id, at, subject_id, kind, signed) VALUES (?, ?, ?, ?, ?)",
                (body["id"], body["at"], body["subject_id"], body["kind"], json.dumps(signed, sort_keys=True)),
            )
        return signed

    def get(self, receipt_id: str) -> dict[str, Any]:
        row = self.store.read().execute("SELECT signed FROM erasures WHERE id = ?", (receipt_id,)).fetchone()
        if row is None:
            raise ReceiptNotFound(receipt_id)
        return json.loads(row[0])

    def for_subject(self, subject_id: str) -> list[dict[str, Any]]:
        rows = (
            self.store.read()
            .execute("SELECT signed FROM erasures WHERE subject_id = ? ORDER BY at, id", (subject_id,))
            .fetchall()
        )
        return [json.loads(r[0]) for r in rows]


def purge_expired(gallery: Gallery, audit: AuditLog, erasures: ErasureLog, *, actor: str) -> list[dict[str, Any]]:
    """Delete every expired subject, each with a signed receipt and an audit entry (``subject.purge``);
    returns the receipts. What ``faceprint serve`` runs every FACEPRINT_PURGE_INTERVAL_S seconds and
    ``faceprint subjects purge-expired`` runs once."""
    issued = []
    for subject, erasure in gallery.erase_expired():
        facts = ReceiptFacts("retention", actor=actor, template_key_id=gallery.template_key_id)
        signed = erasures.issue(erasure, facts)
        audit.append(
            AuditEntry(
                action="subject.purge",
                endpoint=actor,
                status=200,
                collection=subject.collection,
                subject_ids=(subject.id,),
                decision="expired",
                detail={"receipt": signed["receipt"]["id"], "expired_at": str(subject.expires_at)},
            )
        )
        issued.append(signed)
    return issued
