"""Frozen records the gallery hands out: subjects, templates, consent, search results, reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from faceprint.gallery.errors import GalleryError
from faceprint.matching import ThresholdRule
from faceprint.types import Box

JSONScalar = str | int | float | bool | None
Metadata = dict[str, JSONScalar]


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Consent:
    """Who consented, when, and for what purpose (kept with the subject, deleted with it)."""

    given_by: str
    given_at: datetime
    purpose: str

    def to_dict(self) -> dict[str, str | None]:
        return {"given_by": self.given_by, "given_at": to_iso(self.given_at), "purpose": self.purpose}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Consent:
        given_at = from_iso(data["given_at"])
        assert given_at is not None
        return cls(data["given_by"], given_at, data["purpose"])


@dataclass(frozen=True)
class Subject:
    """A person known to one collection. ``id`` is stable; ``name`` is unique within the collection."""

    id: str
    name: str
    collection: str
    metadata: Metadata = field(default_factory=dict)
    consent: Consent | None = None
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None
    template_count: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "collection": self.collection,
            "metadata": dict(self.metadata),
            "consent": None if self.consent is None else self.consent.to_dict(),
            "created_at": to_iso(self.created_at),
            "expires_at": to_iso(self.expires_at),
            "templates": self.template_count,
        }


@dataclass(frozen=True)
class Template:
    """One enrolled faceprint of a subject (the vector is decrypted only when asked for)."""

    id: int
    subject_id: str
    model_id: str
    quality: float | None
    box: Box | None
    source_sha256: str | None
    created_at: datetime
    has_chip: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "subject_id": self.subject_id,
            "model_id": self.model_id,
            "quality": None if self.quality is None else round(self.quality, 4),
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "source_sha256": self.source_sha256,
            "created_at": to_iso(self.created_at),
        }


@dataclass(frozen=True)
class Collection:
    """A named gallery inside one installation, pinned to one embedding contract."""

    name: str
    model_id: str
    dim: int
    created_at: datetime


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    subject: str
    score: float
    templates_matched: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"subject": self.subject, "subject_id": self.subject_id, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Identification:
    """The answer for one probe face: ranked candidates and the open-set decision.

    ``match`` is the top candidate when its score reaches ``threshold`` and ``None`` otherwise ("nobody we
    know"). With several faces in one photo the matches are assigned one-to-one, so a subject matches at most
    one face; a face that loses its best subject to a better-matching face falls back to its next candidate.
    ``fmr``/``fpir`` say which rule chose the threshold (:class:`~faceprint.matching.ThresholdRule`): a
    per-comparison ``fmr`` alone; an ``fpir`` with the per-comparison ``fmr`` it became for the collection's
    number of subjects; neither for an explicit threshold.
    """

    candidates: tuple[Candidate, ...]
    match: Candidate | None
    threshold: float
    box: Box | None = None
    fmr: float | None = None
    fpir: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "match": None if self.match is None else self.match.subject,
            "match_id": None if self.match is None else self.match.subject_id,
            "score": None if self.match is None else round(self.match.score, 6),
            "candidates": [c.to_dict() for c in self.candidates],
            "threshold": round(self.threshold, 6),
            "fmr": self.fmr,
            "fpir": self.fpir,
        }

    @property
    def rule(self) -> ThresholdRule:
        """The rule that chose :attr:`threshold` (``rule.describe()`` says it in words)."""
        return ThresholdRule(self.threshold, self.fmr, self.fpir)


@dataclass(frozen=True)
class Page:
    """One page of subjects; pass ``next_cursor`` back to get the next (``None`` at the end)."""

    items: tuple[Subject, ...]
    next_cursor: str | None
    total: int


@dataclass(frozen=True)
class GalleryStats:
    collection: str
    model_id: str
    dim: int
    subjects: int
    templates: int
    negatives: int
    index_kind: str
    disk_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "model_id": self.model_id,
            "dim": self.dim,
            "subjects": self.subjects,
            "templates": self.templates,
            "negatives": self.negatives,
            "index": self.index_kind,
            "disk_bytes": self.disk_bytes,
        }


def metadata_json(metadata: Metadata) -> str:
    """Validate free-form metadata (JSON scalars only, string keys) and serialise it."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool | type(None)):
            raise GalleryError(f"metadata must map strings to JSON scalars; {key!r} → {type(value).__name__}")
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False)


# -- re-embedding a collection (see faceprint.gallery.migrate and base.Migratable) --------------------------
@dataclass(frozen=True)
class PendingChip:
    """A template still to be re-embedded by a migration, with its decrypted chip."""

    template_id: int
    subject_id: str
    subject: str
    chip: np.ndarray
    chip_template: str | None  # None: the template of the model the row was enrolled with


@dataclass(frozen=True)
class MigrationCounts:
    """What re-embedding a collection for a target model involves (read before anything is written)."""

    collection: Collection
    templates: int
    with_chips: int
    subjects: int
    subjects_missing_chips: list[str]
    chip_templates: dict[str | None, int]  # recorded chip template (None: the enrolling model's) → templates
    staged: int  # vectors for the target model kept from an interrupted run
    negatives: int

    @property
    def missing_chips(self) -> int:
        return self.templates - self.with_chips


@dataclass(frozen=True)
class MigrationSwitch:
    """What the switch transaction of a migration did."""

    templates: int
    subjects: int
    dropped_templates: int
    dropped_negatives: int
    embedded_at_switch: int  # enrolled while the migration ran, embedded inside the switch transaction
