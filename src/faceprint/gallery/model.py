"""Frozen records the gallery hands out: subjects, templates, consent, search results, reports."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from faceprint.gallery.errors import GalleryError, UnknownPurpose
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


#: What a purpose may look like: lower-case words joined by hyphens (``access-control``, ``attendance``).
PURPOSE_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
#: The purposes a new collection knows (``faceprint gallery policy --purposes`` changes them).
DEFAULT_PURPOSES = ("access-control", "attendance")


def check_purpose(purpose: str, known: Sequence[str] | None = None) -> str:
    """``purpose`` if it is well formed (and one of ``known`` when given), else :class:`UnknownPurpose`."""
    if not isinstance(purpose, str) or not PURPOSE_RE.match(purpose) or len(purpose) > 64:
        raise UnknownPurpose(str(purpose), known, "a purpose is lower-case words joined by hyphens, e.g. attendance")
    if known is not None and purpose not in known:
        raise UnknownPurpose(purpose, known)
    return purpose


@dataclass(frozen=True)
class Consent:
    """Who consented, when, and to which purposes (kept with the subject, deleted with it).

    ``withdrawn_at`` set: the consent was withdrawn then; the subject is matched for no purpose from that
    moment. Records written before purposes were a list carry one ``purpose``; they read as one purpose when
    it is well formed, and as a consent to no listed purpose otherwise (free text cannot bind a use).
    """

    given_by: str
    given_at: datetime
    purposes: tuple[str, ...] = ()
    withdrawn_at: datetime | None = None

    @property
    def purpose(self) -> str:
        """The purposes as one string (for messages and older readers)."""
        return ", ".join(self.purposes)

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None

    def allows(self, purpose: str) -> bool:
        return self.active and purpose in self.purposes

    def to_dict(self) -> dict[str, object]:
        return {
            "given_by": self.given_by,
            "given_at": to_iso(self.given_at),
            "purposes": list(self.purposes),
            "withdrawn_at": to_iso(self.withdrawn_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Consent:
        given_at = from_iso(data["given_at"])
        assert given_at is not None
        purposes = data.get("purposes")
        if purposes is None:  # a record from before purposes were a list
            old = str(data.get("purpose") or "")
            purposes = [old] if PURPOSE_RE.match(old) else []
        return cls(data["given_by"], given_at, tuple(purposes), from_iso(data.get("withdrawn_at")))


@dataclass(frozen=True)
class CollectionPolicy:
    """How a collection protects the people in it.

    ``retention``: how long a new subject is kept (its ``expires_at`` = creation + retention) unless the
    enrolment sets an expiry itself; ``None``: no default. ``consent_required``: subjects without an active
    consent record are never matched. ``purposes``: the purposes consents and purpose-bound callers may name.
    """

    retention: timedelta | None = None
    consent_required: bool = False
    purposes: tuple[str, ...] = DEFAULT_PURPOSES

    def to_dict(self) -> dict[str, object]:
        return {
            "retention_days": None if self.retention is None else self.retention.total_seconds() / 86400,
            "consent_required": self.consent_required,
            "purposes": list(self.purposes),
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "retention_s": None if self.retention is None else int(self.retention.total_seconds()),
                "consent_required": self.consent_required,
                "purposes": list(self.purposes),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> CollectionPolicy:
        if not text:
            return cls()
        data = json.loads(text)
        seconds = data.get("retention_s")
        return cls(
            None if seconds is None else timedelta(seconds=int(seconds)),
            bool(data.get("consent_required", False)),
            tuple(data.get("purposes", DEFAULT_PURPOSES)),
        )


def parse_duration(text: str) -> timedelta:
    """``365d``, ``12w``, ``36h``, ``90m`` → a timedelta (GalleryError naming the text otherwise)."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*([dwhm])\s*", text or "")
    if not found or int(found.group(1)) == 0:
        raise GalleryError(f"invalid retention {text!r}: write a positive number and a unit, e.g. 365d, 12w, 36h")
    unit = {"d": "days", "w": "weeks", "h": "hours", "m": "minutes"}[found.group(2)]
    return timedelta(**{unit: int(found.group(1))})


@dataclass(frozen=True)
class SearchScope:
    """Which subjects a search may return, fixed when the search starts: never an expired subject; with a
    ``purpose``, only subjects with an active consent to it; in a ``consent_required`` collection only
    subjects with an active consent; never a subject whose consent was withdrawn."""

    now: datetime
    purpose: str | None = None
    consent_required: bool = False

    @property
    def strict(self) -> bool:
        """Whether a subject without a consent record is left out."""
        return self.purpose is not None or self.consent_required

    def admits(self, expires_at: datetime | None, consent: Consent | None) -> bool:
        if expires_at is not None and expires_at <= self.now:
            return False
        if consent is None:
            return not self.strict
        if self.purpose is not None:
            return consent.allows(self.purpose)
        return consent.active


@dataclass(frozen=True)
class Erasure:
    """What deleting a subject (or one face) removed, counted per kind of record (the facts an erasure
    receipt states). ``template_ids`` are the ids that were deleted (ids, never vectors)."""

    subject_id: str
    subject: str
    collection: str
    backend: str
    templates: int
    chips: int
    negatives: int
    consent_record: bool
    index_entries: int
    staged_migration_rows: int
    change_log_rows: int
    template_ids: tuple[int, ...] = ()
    at: datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, object]:
        return {
            "subject_id": self.subject_id,
            "subject": self.subject,
            "collection": self.collection,
            "backend": self.backend,
            "deleted": {
                "templates": self.templates,
                "chips": self.chips,
                "negatives": self.negatives,
                "consent_record": self.consent_record,
                "index_entries": self.index_entries,
                "staged_migration_rows": self.staged_migration_rows,
                "change_log_rows": self.change_log_rows,
            },
            "template_ids": list(self.template_ids),
            "at": to_iso(self.at),
        }


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
    expiring_7d: int = 0  # subjects whose retention ends within 7 days
    expiring_30d: int = 0

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
            "expiring_7d": self.expiring_7d,
            "expiring_30d": self.expiring_30d,
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


# -- key rotation (GalleryBase.rotate_key) -------------------------------------------------------------------
@dataclass(frozen=True)
class Sealed:
    """One encrypted value of a gallery: where it is (``table``, ``row``, ``column``: the backend's own
    address), the associated data it is bound to, and its ciphertext."""

    table: str
    row: int | str
    column: str
    aad: bytes
    blob: bytes


@dataclass(frozen=True)
class RotationReport:
    """What a key rotation did: from which key to which, how many values it re-encrypted in this run."""

    old_key_id: str
    new_key_id: str
    reencrypted: int
    resumed: bool
