"""The protocols callers type against: :class:`Gallery`, which every backend implements (embedded SQLite,
PostgreSQL, Milvus), and :class:`Migratable`, which a backend that can re-embed a collection opts into.

One contract test suite (``tests/gallery_contract.py``) runs against every implementation, so behaviour
— errors included — is the same whichever backend an operator chooses. The backends share their code
through :class:`faceprint.gallery.common.GalleryBase`; callers never need to know that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np

from faceprint.gallery.model import (
    Collection,
    CollectionPolicy,
    Consent,
    Erasure,
    GalleryStats,
    Identification,
    Metadata,
    MigrationCounts,
    MigrationSwitch,
    Page,
    PendingChip,
    RotationReport,
    Subject,
    Template,
)
from faceprint.matching import Calibration
from faceprint.types import Faceprint

DEFAULT_COLLECTION = "default"


class Unset:
    """Marks an argument of :meth:`Gallery.update_subject` that is left as it is (``None`` clears)."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


class Gallery(Protocol):
    """Subjects, their templates and 1:N search, grouped in collections pinned to one embedding model.

    Subjects are referred to by id or by name (``ref``); names are unique within a collection.
    """

    # -- collections ------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, model_id: str, dim: int) -> Collection:
        """Create the collection, or check that an existing one has this contract (ContractMismatch)."""
        ...

    def get_collection(self, name: str = DEFAULT_COLLECTION) -> Collection: ...

    def list_collections(self) -> list[Collection]: ...

    # -- subjects ---------------------------------------------------------------------------------------
    def add_subject(
        self,
        name: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        metadata: Metadata | None = None,
        consent: Consent | None = None,
        expires_at: datetime | None = None,
        subject_id: str | None = None,
    ) -> Subject: ...

    def get_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject: ...

    def find_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject | None: ...

    def list_subjects(
        self, *, collection: str = DEFAULT_COLLECTION, limit: int = 100, cursor: str | None = None
    ) -> Page: ...

    def update_subject(
        self,
        ref: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        name: str | Unset = UNSET,
        metadata: Metadata | Unset = UNSET,
        consent: Consent | Unset | None = UNSET,
        expires_at: datetime | Unset | None = UNSET,
    ) -> Subject: ...

    def delete_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Erasure:
        """Delete the subject, its templates, negatives and consent record; gone from search at once. Returns
        what was deleted, counted (what an erasure receipt states)."""
        ...

    def purge_expired(self, *, now: datetime | None = None) -> list[Subject]:
        """Delete every subject (all collections) whose ``expires_at`` is at or before ``now``."""
        ...

    def erase_expired(self, *, now: datetime | None = None) -> list[tuple[Subject, Erasure]]:
        """:meth:`purge_expired`, with what each deletion removed (for erasure receipts)."""
        ...

    def withdraw_consent(
        self, ref: str, *, collection: str = DEFAULT_COLLECTION, delete_templates: bool = False
    ) -> tuple[Subject, list[Erasure]]:
        """Record a withdrawal of consent (the subject is matched for no purpose from now on); with
        ``delete_templates`` its templates go too. Returns the subject and what was deleted."""
        ...

    # -- protection policy ------------------------------------------------------------------------------
    def collection_policy(self, collection: str = DEFAULT_COLLECTION) -> CollectionPolicy: ...

    def set_collection_policy(
        self,
        collection: str = DEFAULT_COLLECTION,
        *,
        retention: timedelta | Unset | None = UNSET,
        consent_required: bool | Unset = UNSET,
        purposes: Sequence[str] | Unset = UNSET,
    ) -> CollectionPolicy:
        """Default retention of new subjects, whether consent is required, the purposes consents may name."""
        ...

    # -- templates --------------------------------------------------------------------------------------
    def add_templates(
        self,
        ref: str,
        faceprints: Sequence[Faceprint],
        *,
        collection: str = DEFAULT_COLLECTION,
        source_sha256: Sequence[str | None] | None = None,
        chips: Sequence[np.ndarray] | None = None,
    ) -> list[Template]:
        """Store the faceprints for the subject in one transaction (all or none)."""
        ...

    def list_templates(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[Template]: ...

    def template_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> dict[int, np.ndarray]:
        """Decrypted vectors of the subject's templates by template id (for export and migration)."""
        ...

    def delete_template(self, template_id: int) -> Erasure: ...

    # -- search -----------------------------------------------------------------------------------------
    def identify(
        self,
        faceprints: Sequence[Faceprint],
        *,
        collection: str = DEFAULT_COLLECTION,
        top_k: int = 5,
        fmr: float | None = None,
        threshold: float | None = None,
        calibration: Calibration | None = None,
        one_to_one: bool = True,
        fpir: float | None = None,
        purpose: str | None = None,
    ) -> list[Identification]:
        """One answer per probe; probes are faces of one photo (matched one-to-one) unless told otherwise.

        Expired subjects are never returned (from the moment they expire, purged or not), nor subjects whose
        consent was withdrawn. With a ``purpose`` (one the collection knows: UnknownPurpose) only subjects
        with an active consent to it are considered; in a ``consent_required`` collection only subjects with
        an active consent.

        The threshold follows at most one of ``threshold``, a per-comparison ``fmr`` (default 1e-3), or
        ``fpir``: the false-positive identification rate for the collection's current number of subjects
        (:class:`~faceprint.matching.ThresholdRule`; two at once: ``InvalidThresholdRule``). Every answer
        carries the rule: ``fmr`` (and ``fpir`` when one was given); both ``None`` for an explicit threshold.
        """
        ...

    def add_negative(self, faceprint: Faceprint, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        """Record "this face is not that subject"; later searches honour it."""
        ...

    def negative_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[np.ndarray]: ...

    # -- housekeeping -----------------------------------------------------------------------------------
    def bulk(self) -> AbstractContextManager[None]:
        """Group the writes made inside the block into one atomic transaction (imports, bulk loads)."""
        ...

    def stats(self, collection: str = DEFAULT_COLLECTION) -> GalleryStats: ...

    def rotate_key(
        self, new_key: bytes, *, batch: int = 256, progress: Callable[[str, int], None] | None = None
    ) -> RotationReport:
        """Re-encrypt every template, chip and negative under ``new_key``, online and crash-safe (a rerun
        resumes); afterwards the old key no longer opens the gallery (see docs/privacy.md#keys)."""
        ...

    def scrub(self) -> str:
        """Rewrite storage so the bytes of what was deleted are gone from the backend's files, as far as the
        engine allows (docs/privacy.md says how far); returns what was done, in words. Slow: run it after
        erasures, not per request."""
        ...

    @property
    def template_key_id(self) -> str:
        """The id of the key templates are encrypted under (a fingerprint, never the key)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Migratable(Protocol):
    """The staging steps :mod:`faceprint.gallery.migrate` drives to re-embed a collection with another model.

    A backend opts in by implementing them; ``migrate`` refuses any gallery that is not ``Migratable``. New
    vectors are staged while the collection keeps serving its current model; ``finish_migration`` switches
    everything in one transaction, so an interrupted run leaves the collection as it was and a new run
    re-embeds only what was not staged yet.
    """

    def template_chip(self, template_id: int) -> np.ndarray | None:
        """The aligned chip kept with a template (``None`` when it was enrolled without one), decrypted."""
        ...

    def migration_counts(self, collection: str, target_model: str) -> MigrationCounts:
        """What re-embedding ``collection`` for ``target_model`` involves (read-only)."""
        ...

    def start_migration(self, collection: str, target_model: str) -> None:
        """Forget vectors staged by an interrupted migration to another model (those for this one are kept)."""
        ...

    def migration_pending(self, collection: str, target_model: str, limit: int) -> list[PendingChip]:
        """Up to ``limit`` templates with a chip and no vector staged for ``target_model``, chips decrypted."""
        ...

    def stage_migration(
        self, collection: str, source_model: str, target_model: str, staged: Sequence[tuple[int, str, np.ndarray]]
    ) -> None:
        """Store new vectors ``(template id, subject id, vector)`` in one transaction; searches are unchanged."""
        ...

    def finish_migration(
        self,
        collection: str,
        source_model: str,
        target_model: str,
        dim: int,
        *,
        source_template: str | None,
        drop_missing: bool,
        embed: Callable[[list[PendingChip]], np.ndarray],
        batch: int = 64,
    ) -> MigrationSwitch:
        """Switch the collection to ``target_model`` in one transaction (see the embedded backend)."""
        ...
