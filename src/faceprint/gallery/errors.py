"""The gallery's errors, all under :class:`faceprint.errors.FaceprintError`.

FaceprintError
└── GalleryError               anything a gallery refuses (exit code 2 in the CLI)
    ├── SubjectNotFound        no subject with that id/name in the collection
    ├── TemplateNotFound       no template with that id
    ├── SubjectExists          a subject with that name already exists in the collection
    ├── CollectionNotFound     the named collection does not exist
    ├── ContractMismatch       faceprints from another model/dimension than the collection's
    ├── GalleryLocked          another process holds the gallery's write lock
    ├── GalleryCorrupt         the store is unreadable or fails its integrity checks
    ├── StorageError           the store's files cannot be opened or written (I/O error, cannot open)
    │   ├── StorageFull        the disk (or SQLite's page limit) is full: nothing was stored
    │   └── StorageReadOnly    the files or their file system are read-only
    ├── MissingChips           `migrate` needs a kept chip for every template (--keep-chips)
    ├── MigrationUnsupported   this backend cannot re-embed a collection (yet)
    └── GalleryKeyError        the template key is missing or wrong
        ├── MissingKey
        └── WrongKey
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from faceprint.errors import FaceprintError


class GalleryError(FaceprintError):
    """Root of the gallery errors."""

    exit_code = 2


class SubjectNotFound(GalleryError):
    def __init__(self, ref: str, collection: str) -> None:
        super().__init__(f"no subject {ref!r} in collection {collection!r}")
        self.ref = ref
        self.collection = collection


class TemplateNotFound(GalleryError):
    def __init__(self, template_id: int) -> None:
        super().__init__(f"no template {template_id}")
        self.template_id = template_id


class SubjectExists(GalleryError):
    def __init__(self, name: str, collection: str) -> None:
        super().__init__(f"a subject named {name!r} already exists in collection {collection!r}")
        self.name = name
        self.collection = collection


class CollectionNotFound(GalleryError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no collection {name!r} in this gallery")
        self.name = name


class ContractMismatch(GalleryError):
    """A collection is pinned to one embedding model; anything else is refused, never compared."""

    def __init__(self, collection: str, expected: str, got: str) -> None:
        super().__init__(
            f"collection {collection!r} holds faceprints of {expected}, not {got}; "
            "use the same model or migrate the collection"
        )
        self.collection = collection
        self.expected = expected
        self.got = got


class GalleryLocked(GalleryError):
    def __init__(self, path: str) -> None:
        super().__init__(f"gallery is locked: another process is writing to {path}; retry when it has finished")
        self.path = path


class GalleryCorrupt(GalleryError):
    pass


class StorageError(GalleryError):
    """A store (``where`` names it: the gallery or the service database) cannot be opened or written."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


class StorageFull(StorageError):
    def __init__(self, where: str) -> None:
        super().__init__(
            where, f"{where}: the disk is full (or the database reached its size limit); nothing was stored; "
            "free some space and retry"
        )  # fmt: skip


class StorageReadOnly(StorageError):
    def __init__(self, where: str) -> None:
        super().__init__(
            where, f"{where} is read-only: writes are refused; check that its file system is mounted read-write "
            "and that the service's user may write the database and its directory (SQLite keeps -wal and -shm "
            "files next to it)"
        )  # fmt: skip


#: SQLite primary result codes that are storage faults, not bugs or corruption.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 13, 14


def storage_fault(exc: sqlite3.Error, where: str, path: Path | None = None) -> StorageError | None:
    """The :class:`StorageError` that this SQLite error means, or ``None`` when it is no storage fault.
    ``path`` (the database file): an open or I/O failure where it or its directory is not writable (a
    read-only mount answers so even for root) is :class:`StorageReadOnly`."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else int(code) & 0xFF
    text = str(exc).lower()
    if primary == _SQLITE_FULL or "disk is full" in text:
        return StorageFull(where)
    if primary == _SQLITE_READONLY or "readonly database" in text:
        return StorageReadOnly(where)
    if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN) or "unable to open" in text or "disk i/o error" in text:
        if path is not None and (
            not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))
        ):
            return StorageReadOnly(where)
        return StorageError(where, f"{where} cannot be opened or written ({exc})")
    return None


class GalleryKeyError(GalleryError):
    """The key that encrypts templates is missing or is not this gallery's key."""


class MissingKey(GalleryKeyError):
    pass


class WrongKey(GalleryKeyError):
    pass


class MissingChips(GalleryError):
    """A collection cannot be re-embedded: some templates were enrolled without ``--keep-chips``."""

    def __init__(self, collection: str, missing: int, total: int, subjects: list[str], subject_count: int) -> None:
        named = ", ".join(repr(s) for s in subjects) + (f" and {subject_count - len(subjects)} more" if
                                                        subject_count > len(subjects) else "")  # fmt: skip
        super().__init__(
            f"collection {collection!r}: {missing} of {total} template(s) have no stored chip (they were enrolled "
            f"without --keep-chips), so they cannot be re-embedded; they belong to {subject_count} subject(s): "
            f"{named}. Re-enrol those subjects from their photos after migrating, or run migrate with "
            "--drop-missing to delete those templates as part of the migration"
        )
        self.collection = collection
        self.missing = missing
        self.total = total
        self.subjects = subjects


class MigrationUnsupported(GalleryError):
    pass


class UnknownPurpose(GalleryError):
    """A consent or a search names a purpose the collection does not know (or one that is malformed)."""

    def __init__(self, purpose: str, known: Sequence[str] | None, why: str | None = None) -> None:
        self.purpose = purpose
        self.known = tuple(known or ())
        choose = f"; the collection knows: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"unknown purpose {purpose!r}" + (f" ({why})" if why else "") + choose)
