"""Subject access: everything stored about one person, as JSON, never a vector or a chip.

What it holds: the subject record (name, metadata, consent, enrolment and expiry times), each enrolled face's
provenance (when, quality, box, the sha256 of the photo it came from, whether a chip is kept), how many
negatives ("this face is not them") exist, the collection's protection policy, and what the caller adds from
its own stores (the service's audit entries and erasure receipts that name the subject).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from faceprint.gallery.base import DEFAULT_COLLECTION, Gallery
from faceprint.gallery.model import to_iso, utcnow

EXPORT_VERSION = 1


def personal_data(
    gallery: Gallery,
    ref: str,
    *,
    collection: str = DEFAULT_COLLECTION,
    audit: Sequence[Mapping[str, Any]] = (),
    erasures: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The subject ``ref`` (id or name) and what concerns them; ``audit``/``erasures``: entries naming them."""
    subject = gallery.get_subject(ref, collection=collection)
    faces = []
    for template in gallery.list_templates(subject.id, collection=collection):
        face = template.to_dict()
        face["chip_kept"] = template.has_chip
        faces.append(face)
    return {
        "version": EXPORT_VERSION,
        "generated_at": to_iso(utcnow()),
        "subject": subject.to_dict(),
        "faces": faces,
        "negatives": len(gallery.negative_vectors(subject.id, collection=collection)),
        "collection_policy": gallery.collection_policy(collection).to_dict(),
        "audit": [dict(e) for e in audit],
        "erasures": [dict(r) for r in erasures],
        "not_included": "face templates (vectors) and face chips: biometric data, never exported here",
    }
