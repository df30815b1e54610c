"""GalleryBase: what every gallery backend shares, so that each backend writes only its storage steps.

:class:`~faceprint.gallery.base.Gallery` stays the protocol callers (service, Ray, CLI) type against;
GalleryBase is the implementation the embedded, PostgreSQL and Milvus backends inherit. It owns:

- the template key: reading, or for a new gallery writing, the key check value (:meth:`_open_cipher`);
- the encryption of vectors and chips (:mod:`faceprint.gallery.crypto`), so every backend binds a ciphertext
  to its row the same way;
- argument checks: the collection's embedding contract, subject names, sidecar lengths, chips on a backend
  that keeps none, page cursors and limits, ``top_k``;
- ``update_subject``'s UNSET handling: a backend is handed the subject before and after;
- identification: nearest templates (the backend's ``_nearest``) → per-subject scores → negatives → the one
  threshold rule (:class:`~faceprint.matching.ThresholdRule`: ``fmr`` | ``fpir`` | ``threshold``) → one-to-one
  matches → names, and the rule reported in every answer.

A backend addresses a collection by a handle of its own (``H``: a row id, a pair of Milvus collection names)
that :meth:`GalleryBase._find_collection` returns together with the :class:`Collection`. Storage steps that
find no subject return ``None``/``False`` and the base raises the error, so every backend raises the same one.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np

from faceprint.gallery.base import DEFAULT_COLLECTION, UNSET, Unset
from faceprint.gallery.crypto import (
    TemplateCipher,
    key_id,
    open_chip,
    open_vector,
    resolve_key,
    seal_chip,
    seal_vector,
)
from faceprint.gallery.errors import (
    CollectionNotFound,
    ContractMismatch,
    GalleryError,
    GalleryKeyError,
    SubjectNotFound,
    TemplateNotFound,
)
from faceprint.gallery.model import (
    Candidate,
    Collection,
    CollectionPolicy,
    Consent,
    Erasure,
    GalleryStats,
    Identification,
    Metadata,
    Page,
    RotationReport,
    Sealed,
    SearchScope,
    Subject,
    Template,
    check_purpose,
    utcnow,
)
from faceprint.gallery.scoring import Hit, aggregate, apply_negatives, choose_matches
from faceprint.matching import Calibration, ThresholdRule, check_one_rule, normalise
from faceprint.tracing import set_attributes, span
from faceprint.types import Box, Faceprint

H = TypeVar("H")

#: Nearest templates fetched per probe: enough to see several templates of each likely subject.
MIN_NEIGHBOURS = 64


def neighbours_wanted(top_k: int) -> int:
    return max(MIN_NEIGHBOURS, 8 * top_k)


def check_contract(coll: Collection, faceprints: Sequence[Faceprint]) -> None:
    """A collection is pinned to one embedding model; anything else is refused, never compared."""
    for fp in faceprints:
        if fp.model_id != coll.model_id or fp.dim != coll.dim:
            raise ContractMismatch(coll.name, f"{coll.model_id} ({coll.dim}-d)", f"{fp.model_id} ({fp.dim}-d)")


def check_consent(consent: Consent | None, policy: CollectionPolicy) -> None:
    """A consent may only name purposes the collection knows (UnknownPurpose)."""
    if consent is not None:
        for purpose in consent.purposes:
            check_purpose(purpose, policy.purposes)


def excluded_by(scope: SearchScope, rows: Iterable[tuple[str, datetime | None, Consent | None]]) -> frozenset[str]:
    """The subjects among ``rows`` (id, expires_at, consent) that ``scope`` does not admit."""
    return frozenset(sid for sid, expires_at, consent in rows if not scope.admits(expires_at, consent))


def check_name(name: str) -> None:
    if not name or not name.strip():
        raise GalleryError("a subject needs a non-empty name")


def check_sidecars(
    n: int, source_sha256: Sequence[str | None] | None, chips: Sequence[np.ndarray] | None
) -> list[str | None]:
    shas = list(source_sha256) if source_sha256 is not None else [None] * n
    if len(shas) != n or (chips is not None and len(chips) != n):
        raise GalleryError("source_sha256 and chips must have one entry per faceprint")
    return shas


def parse_cursor(cursor: str | None) -> tuple[str, str]:
    """Page cursors are ``[name, id]`` of the last subject returned; no cursor → the start."""
    if not cursor:
        return "", ""
    try:
        name, sid = json.loads(cursor)
        return str(name), str(sid)
    except (ValueError, TypeError):
        raise GalleryError(f"invalid page cursor {cursor!r}") from None


def make_cursor(subject: Subject) -> str:
    return json.dumps([subject.name, subject.id])


@dataclass(frozen=True)
class NewTemplate:
    """A faceprint about to be stored, checked against the collection, its vector L2-normalised."""

    model_id: str
    vector: np.ndarray
    quality: float | None
    box: Box | None
    source_sha256: str | None
    chip: np.ndarray | None

    @classmethod
    def of(cls, fp: Faceprint, vector: np.ndarray, sha: str | None, chip: np.ndarray | None) -> NewTemplate:
        box = None if fp.detection is None else tuple(float(v) for v in fp.detection.box)
        quality = None if fp.quality is None else float(fp.quality)
        return cls(fp.model_id, vector.astype(np.float32), quality, box, sha, chip)  # type: ignore[arg-type]

    @property
    def box_json(self) -> str | None:
        return None if self.box is None else json.dumps([float(v) for v in self.box])

    def seal(self, cipher: TemplateCipher, subject_id: str) -> tuple[bytes, bytes | None]:
        """The encrypted vector and chip (``None`` without one), bound to the subject."""
        chip = None if self.chip is None else seal_chip(cipher, self.chip, subject_id)
        return seal_vector(cipher, self.vector, subject_id, self.model_id), chip


@dataclass(frozen=True)
class Neighbours:
    """What a backend's nearest-template search found for each probe, and the negatives of those subjects.

    A hit's ``subject`` may be ``""`` when the backend's index knows ids only; the base then looks up the
    names of what it reports (:meth:`GalleryBase._subject_names`).
    """

    hits: list[list[Hit]]
    negatives: Mapping[str, np.ndarray]


def group_negatives(cipher: TemplateCipher, model_id: str, rows: Iterable[tuple[str, bytes]]) -> dict[str, np.ndarray]:
    """Encrypted negatives ``(subject id, blob)`` → subject id → N×D matrix."""
    grouped: dict[str, list[np.ndarray]] = {}
    for sid, blob in rows:
        grouped.setdefault(sid, []).append(open_vector(cipher, blob, sid, model_id, "neg"))
    return {sid: np.stack(v) for sid, v in grouped.items()}


class GalleryBase(ABC, Generic[H]):
    """The shared half of every backend (see the module docstring); subclasses implement the storage steps."""

    #: How messages name the backend.
    backend_name: ClassVar[str]
    #: Whether the backend stores aligned chips (``add_templates(chips=…)``); one that cannot refuses them.
    keeps_chips: ClassVar[bool] = True

    cipher: TemplateCipher
    _closed: bool = False

    # -- lifecycle --------------------------------------------------------------------------------------
    def _init_cipher(self, key: bytes | None) -> None:
        """Check the template key (set it up for a new gallery); on failure the storage is released."""
        try:
            self.cipher = self._open_cipher(key)
            self.cipher.refresh = self._refresh_keys
        except BaseException:  # a wrong or missing key must not leave connections open
            self._closed = True
            self._release()
            raise

    def _open_cipher(self, key: bytes | None) -> TemplateCipher:
        stored = self._load_key_check()
        if stored is None:
            with self._key_setup():
                stored = self._load_key_check()  # another process may have set it up meanwhile
                if stored is None:  # a new gallery: the only place a key file may be created
                    cipher = TemplateCipher(*resolve_key(key, create=True))
                    self._store_key_check(cipher.check_value(), cipher.key_id)
                    return cipher
        cipher = TemplateCipher(*resolve_key(key, create=False))
        state = self._rotation_state()
        if state is not None and cipher.key_id == state["target"] and cipher.matches(b64decode(state["check"])):
            raise GalleryKeyError(
                f"a rotation of this gallery's key to key id {cipher.key_id} is under way: finish it with "
                "`faceprint gallery rotate-key --new-key-file FILE`, holding the old key (FACEPRINT_KEY or "
                "FACEPRINT_KEY_FILE); the new key opens the gallery once it is done"
            )
        cipher.verify(*stored)
        self.cipher = cipher
        self._refresh_keys()
        return cipher

    # -- key rotation -----------------------------------------------------------------------------------
    def _rotation_state(self) -> dict[str, str] | None:
        raw = self._load_meta("rotation")
        return None if raw is None else json.loads(raw)

    def _refresh_keys(self) -> None:
        """Take up the keys another process's rotation left for us: the new key of a rotation under way
        (wrapped under the old one: from now on this process writes with it) and retired keys (wrapped under
        the current one, for rows written with them meanwhile)."""
        state = self._rotation_state()
        if state is not None:
            target = state["target"]
            if not self.cipher.holds(target):
                new = self.cipher.unwrap(b64decode(state["wrapped"]), target)
                if new is not None:
                    self.cipher.add(new)
            if self.cipher.holds(target):
                self.cipher.use(target)
        raw = self._load_meta("retired")
        for kid, wrapped in (json.loads(raw) if raw else {}).items():
            if not self.cipher.holds(kid):
                old = self.cipher.unwrap(b64decode(wrapped), kid)
                if old is not None:
                    self.cipher.add(old)

    def rotate_key(
        self, new_key: bytes, *, batch: int = 256, progress: Callable[[str, int], None] | None = None
    ) -> RotationReport:
        """Re-encrypt every template, chip, negative and staged vector under ``new_key``, online.

        Crash-safe: the rotation is recorded first (the new key wrapped under the old one, so every client
        holding the old key reads and writes with both); then values are re-encrypted batch by batch, each
        batch one compare-and-swap (a value changed meanwhile is left for the next pass), so every value is at
        all times under the old key or the new one; last, one write makes the new key the gallery's. A rerun
        with the same new key resumes. Afterwards the old key is refused; it is kept wrapped under the new key
        for values a client unaware of the rotation wrote meanwhile, until ``rotate_key`` is run again with
        the new key (a sweep), which re-encrypts those and forgets it. ``progress(phase, count)``: after
        ``started``, each ``batch``, ``reencrypted`` and ``finished``.
        """
        if batch < 1:
            raise GalleryError(f"batch must be at least 1, got {batch}")
        step = progress or (lambda phase, count: None)
        new_id = key_id(new_key)
        self._refresh_keys()
        stored = self._load_key_check()
        assert stored is not None
        old_id = stored[1] or self.cipher.legacy_id
        state = self._rotation_state()
        resumed = state is not None
        if state is not None and state["target"] != new_id:
            raise GalleryKeyError(f"a rotation to key id {state['target']} is under way; finish it with that key first")
        if state is None and new_id != old_id:
            record = {
                "target": new_id,
                "from": old_id,
                "wrapped": b64encode(self.cipher.wrap(new_key)).decode(),
                "check": b64encode(TemplateCipher(new_key).check_value()).decode(),
            }
            self._store_meta({"rotation": json.dumps(record).encode()})
        self.cipher.add(new_key)
        self.cipher.use(new_id)
        step("started", 0)
        done = 0
        while rows := self._sealed_rows(new_id, batch):
            swaps = [(row, self.cipher.encrypt(self.cipher.decrypt(row.blob, row.aad), row.aad)) for row in rows]
            done += self._swap_sealed(swaps)
            step("batch", done)
        step("reencrypted", done)
        retired = {} if new_id == old_id else {old_id: b64encode(self.cipher.wrap(self.cipher.raw(old_id))).decode()}
        self._store_meta({
            "key_check": TemplateCipher(new_key).check_value(),
            "key_id": new_id.encode(),
            "retired": json.dumps(retired).encode() if retired else None,
            "rotation": None,
        })  # fmt: skip
        self._after_rotation()
        step("finished", done)
        return RotationReport(old_id, new_id, done, resumed)

    def _after_rotation(self) -> None:
        """Drop what is still encrypted under the old key outside the rows (the embedded index snapshots)."""

    @abstractmethod
    def _load_meta(self, name: str) -> bytes | None:
        """A value of the gallery's own settings (``key_check``, ``key_id``, ``rotation``, ``retired``)."""

    @abstractmethod
    def _store_meta(self, values: Mapping[str, bytes | None]) -> None:
        """Set (``None``: delete) several settings at once (in one transaction where the engine has them)."""

    @abstractmethod
    def _sealed_rows(self, exclude_key_id: str, limit: int) -> list[Sealed]:
        """Up to ``limit`` encrypted values (vectors, chips, negatives, staged vectors) not under that key."""

    @abstractmethod
    def _swap_sealed(self, swaps: Sequence[tuple[Sealed, bytes]]) -> int:
        """Replace each value by its new ciphertext where it still holds the old one (compare-and-swap), in
        one transaction where the engine has them; returns how many were replaced."""

    @property
    def template_key_id(self) -> str:
        """The id of the key templates are encrypted under (a fingerprint, never the key)."""
        return self.cipher.key_id

    def _key_setup(self) -> AbstractContextManager[object]:
        """Serialises the first-time key setup between processes (a transaction, a lock); none by default."""
        return nullcontext()

    @abstractmethod
    def _load_key_check(self) -> tuple[bytes, str | None] | None:
        """The stored key check value and key id, or ``None`` for a gallery that has no key yet."""

    @abstractmethod
    def _store_key_check(self, check: bytes, key_id: str) -> None: ...

    def close(self) -> None:
        """Release connections (the gallery is unusable afterwards); closing twice is harmless."""
        if self._closed:
            return
        self._before_close()
        self._closed = True
        self._release()

    def _before_close(self) -> None:
        """Work to do while the storage is still open (the embedded backend saves its index snapshots)."""

    @abstractmethod
    def _release(self) -> None:
        """Close connections and clients."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collections ------------------------------------------------------------------------------------
    def ensure_collection(self, name: str, model_id: str, dim: int) -> Collection:
        """Create the collection, or check that an existing one has this contract (ContractMismatch)."""
        found = self._find_collection(name)
        if found is None:
            self._create_collection(name, model_id, int(dim))
            found = self._find_collection(name)
            assert found is not None
        coll = found[1]
        if coll.model_id != model_id or coll.dim != dim:
            raise ContractMismatch(name, f"{coll.model_id} ({coll.dim}-d)", f"{model_id} ({dim}-d)")
        return coll

    def _collection(self, name: str) -> tuple[H, Collection]:
        found = self._find_collection(name)
        if found is None:
            raise CollectionNotFound(name)
        return found

    def get_collection(self, name: str = DEFAULT_COLLECTION) -> Collection:
        return self._collection(name)[1]

    @abstractmethod
    def list_collections(self) -> list[Collection]: ...

    @abstractmethod
    def _find_collection(self, name: str) -> tuple[H, Collection] | None: ...

    @abstractmethod
    def _create_collection(self, name: str, model_id: str, dim: int) -> None:
        """Create an empty collection unless one of that name exists (losing a creation race is fine)."""

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
    ) -> Subject:
        check_name(name)
        handle, _ = self._collection(collection)
        policy = self._load_policy(handle)
        check_consent(consent, policy)
        now = utcnow()
        if expires_at is None and policy.retention is not None:
            expires_at = now + policy.retention  # the collection's default retention
        new = Subject(subject_id or uuid.uuid4().hex, name, collection, dict(metadata or {}), consent, now, expires_at)
        return self._insert_subject(handle, new)

    def find_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject | None:
        handle, _ = self._collection(collection)
        return self._find_subject(handle, collection, ref)

    def get_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Subject:
        subject = self.find_subject(ref, collection=collection)
        if subject is None:
            raise SubjectNotFound(ref, collection)
        return subject

    def list_subjects(
        self, *, collection: str = DEFAULT_COLLECTION, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """One page of subjects in (name, id) order; ``next_cursor`` continues after its last one."""
        if limit < 1:
            raise GalleryError(f"limit must be at least 1, got {limit}")
        handle, _ = self._collection(collection)
        rows, total = self._subject_page(handle, collection, parse_cursor(cursor), limit + 1)
        items = tuple(rows[:limit])
        return Page(items, make_cursor(items[-1]) if len(rows) > limit else None, total)

    def update_subject(
        self,
        ref: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        name: str | Unset = UNSET,
        metadata: Metadata | Unset = UNSET,
        consent: Consent | Unset | None = UNSET,
        expires_at: datetime | Unset | None = UNSET,
    ) -> Subject:
        handle, _ = self._collection(collection)
        current = self.get_subject(ref, collection=collection)
        changes: dict[str, Any] = {}
        if not isinstance(name, Unset):
            check_name(name)
            changes["name"] = name
        if not isinstance(metadata, Unset):
            changes["metadata"] = dict(metadata)
        if not isinstance(consent, Unset):
            check_consent(consent, self._load_policy(handle))
            changes["consent"] = consent
        if not isinstance(expires_at, Unset):
            changes["expires_at"] = expires_at
        if changes and not self._update_subject(handle, current, replace(current, **changes), frozenset(changes)):
            raise SubjectNotFound(ref, collection)  # deleted by another client meanwhile
        return self.get_subject(current.id, collection=collection)

    def delete_subject(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> Erasure:
        """Delete the subject, its templates, negatives and consent record; gone from search at once. Returns
        what was deleted (the facts of an erasure receipt)."""
        handle, _ = self._collection(collection)
        erasure = self._delete_subject(handle, ref)
        if erasure is None:
            raise SubjectNotFound(ref, collection)
        return erasure

    def withdraw_consent(
        self, ref: str, *, collection: str = DEFAULT_COLLECTION, delete_templates: bool = False
    ) -> tuple[Subject, list[Erasure]]:
        """Record that the subject withdrew consent: from now on it is matched for no purpose. With
        ``delete_templates`` its templates are deleted too (the subject record stays, with the withdrawal)."""
        subject = self.get_subject(ref, collection=collection)
        now = utcnow()
        given = subject.consent or Consent("", now)
        withdrawn = Consent(given.given_by, given.given_at, given.purposes, given.withdrawn_at or now)
        subject = self.update_subject(subject.id, collection=collection, consent=withdrawn)
        erased: list[Erasure] = []
        if delete_templates:
            for template in self.list_templates(subject.id, collection=collection):
                try:
                    erased.append(self.delete_template(template.id))
                except TemplateNotFound:
                    continue  # deleted meanwhile
            subject = self.get_subject(subject.id, collection=collection)
        return subject, [replace(e, subject=subject.name, collection=collection) for e in erased]

    # -- the collection's protection policy -------------------------------------------------------------
    def collection_policy(self, collection: str = DEFAULT_COLLECTION) -> CollectionPolicy:
        handle, _ = self._collection(collection)
        return self._load_policy(handle)

    def set_collection_policy(
        self,
        collection: str = DEFAULT_COLLECTION,
        *,
        retention: timedelta | Unset | None = UNSET,
        consent_required: bool | Unset = UNSET,
        purposes: Sequence[str] | Unset = UNSET,
    ) -> CollectionPolicy:
        """Change the collection's default retention (``None``: none), ``consent_required`` or purposes.
        A new retention applies to subjects created from now on."""
        handle, _ = self._collection(collection)
        policy = self._load_policy(handle)
        changes: dict[str, Any] = {}
        if not isinstance(retention, Unset):
            if retention is not None and retention <= timedelta(0):
                raise GalleryError(f"a retention must be positive, got {retention}")
            changes["retention"] = retention
        if not isinstance(consent_required, Unset):
            changes["consent_required"] = bool(consent_required)
        if not isinstance(purposes, Unset):
            checked = tuple(dict.fromkeys(check_purpose(p) for p in purposes))
            if not checked:
                raise GalleryError("a collection needs at least one purpose")
            changes["purposes"] = checked
        policy = replace(policy, **changes)
        self._store_policy(handle, collection, policy)
        return policy

    @abstractmethod
    def _load_policy(self, handle: H) -> CollectionPolicy:
        """The collection's policy as stored now (read fresh: another process may have changed it)."""

    @abstractmethod
    def _store_policy(self, handle: H, collection: str, policy: CollectionPolicy) -> None: ...

    def purge_expired(self, *, now: datetime | None = None) -> list[Subject]:
        """Delete every subject (all collections) whose ``expires_at`` is at or before ``now``."""
        return [subject for subject, _ in self.erase_expired(now=now)]

    def erase_expired(self, *, now: datetime | None = None) -> list[tuple[Subject, Erasure]]:
        """:meth:`purge_expired`, saying what each deletion removed (one deletion per subject, each atomic)."""
        out: list[tuple[Subject, Erasure]] = []
        for subject in self._expired(now or utcnow()):
            handle, _ = self._collection(subject.collection)
            erasure = self._delete_subject(handle, subject.id)
            if erasure is not None:  # else deleted meanwhile
                out.append((subject, erasure))
        return out

    @abstractmethod
    def _expired(self, now: datetime) -> list[Subject]:
        """Every subject (all collections) whose ``expires_at`` is at or before ``now``, by collection and name."""

    @abstractmethod
    def _insert_subject(self, handle: H, new: Subject) -> Subject:
        """Store ``new`` (SubjectExists when its name or id is taken) and return it as stored."""

    @abstractmethod
    def _find_subject(self, handle: H, collection: str, ref: str) -> Subject | None:
        """The subject with id ``ref``, else the one named ``ref``."""

    @abstractmethod
    def _subject_page(
        self, handle: H, collection: str, after: tuple[str, str], limit: int
    ) -> tuple[list[Subject], int]:
        """Up to ``limit`` subjects after ``(name, id)`` in that order, and how many the collection holds."""

    @abstractmethod
    def _update_subject(self, handle: H, current: Subject, updated: Subject, changed: frozenset[str]) -> bool:
        """Write the ``changed`` fields of ``updated``; ``False`` when the subject is gone; SubjectExists for a
        name another subject has."""

    @abstractmethod
    def _delete_subject(self, handle: H, ref: str) -> Erasure | None:
        """Delete the subject by id or name, with its templates and negatives, and say what went; ``None``
        when there is none."""

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
        handle, coll = self._collection(collection)
        check_contract(coll, faceprints)
        shas = check_sidecars(len(faceprints), source_sha256, chips)
        if chips is not None and not self.keeps_chips:
            raise GalleryError(
                f"the {self.backend_name} backend does not keep face chips; use PostgreSQL or the embedded gallery"
            )
        vectors = normalise(np.stack([fp.vector for fp in faceprints])) if faceprints else None
        items = [
            NewTemplate.of(fp, vectors[i], shas[i], None if chips is None else chips[i])  # type: ignore[index]
            for i, fp in enumerate(faceprints)
        ]
        with span("gallery.write", backend=self.backend_name, templates=len(items)):
            stored = self._insert_templates(handle, ref, items)
        if stored is None:
            raise SubjectNotFound(ref, collection)
        return stored

    def list_templates(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[Template]:
        handle, _ = self._collection(collection)
        return self._templates_of(handle, self.get_subject(ref, collection=collection).id)

    def template_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> dict[int, np.ndarray]:
        """Decrypted vectors of the subject's templates by template id (for export and migration)."""
        handle, _ = self._collection(collection)
        sid = self.get_subject(ref, collection=collection).id
        rows = self._vectors_of(handle, sid)
        return {tid: open_vector(self.cipher, blob, sid, model_id) for tid, model_id, blob in rows}

    def template_chip(self, template_id: int) -> np.ndarray | None:
        """The aligned chip kept with a template (only when it was enrolled with chips), decrypted."""
        found = self._chip_of(template_id)
        if found is None:
            raise TemplateNotFound(template_id)
        sid, blob = found
        return None if blob is None else open_chip(self.cipher, blob, sid)

    def delete_template(self, template_id: int) -> Erasure:
        """Delete one template (and its chip); returns what was deleted (subject and collection names are
        left empty: a template id alone does not name them)."""
        erasure = self._delete_template(template_id)
        if erasure is None:
            raise TemplateNotFound(template_id)
        return erasure

    @abstractmethod
    def _insert_templates(self, handle: H, ref: str, items: Sequence[NewTemplate]) -> list[Template] | None:
        """Store the templates for the subject ``ref`` in one transaction; ``None`` when there is no subject."""

    @abstractmethod
    def _templates_of(self, handle: H, subject_id: str) -> list[Template]:
        """The subject's templates in id order."""

    @abstractmethod
    def _vectors_of(self, handle: H, subject_id: str) -> Iterable[tuple[int, str, bytes]]:
        """``(template id, model id, encrypted vector)`` of the subject's templates in id order."""

    @abstractmethod
    def _chip_of(self, template_id: int) -> tuple[str, bytes | None] | None:
        """``(subject id, encrypted chip or None)`` of a template; ``None`` when there is no such template."""

    @abstractmethod
    def _delete_template(self, template_id: int) -> Erasure | None:
        """Delete the template and say what went; ``None`` when there is no such template."""

    # -- negatives --------------------------------------------------------------------------------------
    def add_negative(self, faceprint: Faceprint, ref: str, *, collection: str = DEFAULT_COLLECTION) -> None:
        """Record "this face is not that subject"; later searches honour it."""
        handle, coll = self._collection(collection)
        check_contract(coll, [faceprint])
        if not self._insert_negative(handle, coll, ref, normalise(faceprint.vector)):
            raise SubjectNotFound(ref, collection)

    def negative_vectors(self, ref: str, *, collection: str = DEFAULT_COLLECTION) -> list[np.ndarray]:
        handle, coll = self._collection(collection)
        sid = self.get_subject(ref, collection=collection).id
        return list(self._negatives_of(handle, coll, [sid]).get(sid, ()))

    def _negatives_of(self, handle: H, coll: Collection, subject_ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not subject_ids:
            return {}
        return group_negatives(self.cipher, coll.model_id, self._negative_blobs(handle, subject_ids))

    @abstractmethod
    def _insert_negative(self, handle: H, coll: Collection, ref: str, vector: np.ndarray) -> bool:
        """Store an (encrypted) negative for the subject ``ref``; ``False`` when there is no subject."""

    @abstractmethod
    def _negative_blobs(self, handle: H, subject_ids: Sequence[str]) -> Iterable[tuple[str, bytes]]:
        """``(subject id, encrypted vector)`` of those subjects' negatives, in the order they were recorded."""

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
        """One answer per probe (see :meth:`faceprint.gallery.base.Gallery.identify`)."""
        check_one_rule(fmr=fmr, fpir=fpir, threshold=threshold)
        if top_k < 1:
            raise GalleryError(f"top_k must be at least 1, got {top_k}")
        handle, coll = self._collection(collection)
        check_contract(coll, faceprints)
        if not faceprints:
            return []
        subjects = None if fpir is None else self._subject_count(handle)
        rule = ThresholdRule.choose(
            coll.model_id, fmr=fmr, fpir=fpir, threshold=threshold, subjects=subjects, calibration=calibration
        )
        with span("search", backend=self.backend_name, probes=len(faceprints), top_k=top_k):
            scope = self.search_scope(handle, purpose)
            excluded = self._excluded(handle, scope)
            probes = normalise(np.stack([fp.vector for fp in faceprints]))
            found = self._nearest(handle, coll, probes, neighbours_wanted(top_k), excluded)
            ranked = [
                apply_negatives(probe, aggregate([h for h in hits if h.subject_id not in excluded]), found.negatives)
                for probe, hits in zip(probes, found.hits, strict=True)
            ]
            matches = choose_matches(ranked, rule.threshold, one_to_one=one_to_one)
            ranked, matches = self._named(handle, ranked, matches, top_k)
            set_attributes(matches=sum(m is not None for m in matches))
        return [
            Identification(
                tuple(cands[:top_k]),
                match,
                rule.threshold,
                None if fp.detection is None else fp.detection.box,
                rule.fmr,
                rule.fpir,
            )
            for fp, cands, match in zip(faceprints, ranked, matches, strict=True)
        ]

    def _named(
        self, handle: H, ranked: list[list[Candidate]], matches: list[Candidate | None], top_k: int
    ) -> tuple[list[list[Candidate]], list[Candidate | None]]:
        """Names for the candidates reported whose search gave none; a subject deleted since is dropped."""
        unnamed = {c.subject_id for cands in ranked for c in cands[:top_k] if not c.subject}
        unnamed |= {m.subject_id for m in matches if m is not None and not m.subject}
        if not unnamed:
            return ranked, matches
        names = self._subject_names(handle, sorted(unnamed))

        def named(c: Candidate | None) -> Candidate | None:
            if c is None or c.subject:
                return c
            return replace(c, subject=names[c.subject_id]) if c.subject_id in names else None

        return [[n for c in cands if (n := named(c)) is not None] for cands in ranked], [named(m) for m in matches]

    def search_scope(self, handle: H, purpose: str | None) -> SearchScope:
        """The subjects a search starting now may return (checks ``purpose`` against the collection's)."""
        policy = self._load_policy(handle)
        if purpose is not None:
            check_purpose(purpose, policy.purposes)
        return SearchScope(utcnow(), purpose, policy.consent_required)

    @abstractmethod
    def _excluded(self, handle: H, scope: SearchScope) -> frozenset[str]:
        """The ids of the collection's subjects ``scope`` leaves out (:meth:`SearchScope.admits` is the rule;
        a backend that cannot ask its engine computes it with :func:`excluded_by`)."""

    @abstractmethod
    def _subject_count(self, handle: H) -> int:
        """How many subjects the collection holds (what an ``fpir`` is converted through)."""

    @abstractmethod
    def _nearest(
        self, handle: H, coll: Collection, probes: np.ndarray, k: int, excluded: frozenset[str] = frozenset()
    ) -> Neighbours:
        """The ``k`` nearest templates of each (normalised) probe among subjects not ``excluded`` (expired,
        without the consent asked for), and the negatives of the subjects found. A backend that filters after
        its search must fetch enough more that ``k`` remain."""

    @abstractmethod
    def _subject_names(self, handle: H, subject_ids: Sequence[str]) -> dict[str, str]:
        """Subject id → name, for those that still exist."""

    # -- housekeeping -----------------------------------------------------------------------------------
    def stats(self, collection: str = DEFAULT_COLLECTION) -> GalleryStats:
        handle, coll = self._collection(collection)
        subjects, templates, negatives = self._counts(handle)
        kind = self._index_kind(coll, templates)
        now = utcnow()
        return GalleryStats(
            coll.name, coll.model_id, coll.dim, subjects, templates, negatives, kind, self._disk_bytes(),
            self._expiring(handle, now, now + timedelta(days=7)), self._expiring(handle, now, now + timedelta(days=30)),
        )  # fmt: skip

    @abstractmethod
    def _expiring(self, handle: H, now: datetime, until: datetime) -> int:
        """How many subjects of the collection expire after ``now`` and at or before ``until``."""

    @abstractmethod
    def scrub(self) -> str:
        """Rewrite storage so deleted records' bytes are gone from the backend's files (see the protocol)."""

    @abstractmethod
    def _counts(self, handle: H) -> tuple[int, int, int]:
        """Subjects, templates and negatives of the collection."""

    @abstractmethod
    def _index_kind(self, coll: Collection, templates: int) -> str: ...

    @abstractmethod
    def _disk_bytes(self) -> int: ...

    @abstractmethod
    def bulk(self) -> AbstractContextManager[None]:
        """Group the writes made inside the block into one atomic transaction (imports, bulk loads)."""
