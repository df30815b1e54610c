"""Galleries: subjects, encrypted templates and 1:N identification (see docs/gallery.md).

>>> from faceprint.gallery import open_gallery
>>> with open_gallery("~/faces") as gallery:          # doctest: +SKIP
...     gallery.ensure_collection("default", pipeline.model_id, 128)
...     report = enrol_images(gallery, pipeline, "Ada", ["ada1.jpg", "ada2.jpg"])
...     answers = gallery.identify(pipeline.embed("door.jpg"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_data_path

from faceprint.gallery.base import DEFAULT_COLLECTION, UNSET, Gallery, Migratable
from faceprint.gallery.embedded import EmbeddedGallery
from faceprint.gallery.enrol import EnrolReport, ImageOutcome, enrol_images
from faceprint.gallery.errors import (
    CollectionNotFound,
    ContractMismatch,
    GalleryCorrupt,
    GalleryError,
    GalleryKeyError,
    GalleryLocked,
    MissingKey,
    SubjectExists,
    SubjectNotFound,
    TemplateNotFound,
    WrongKey,
)
from faceprint.gallery.location import open_backend
from faceprint.gallery.model import (
    Candidate,
    Collection,
    Consent,
    GalleryStats,
    Identification,
    Page,
    Subject,
    Template,
)
from faceprint.gallery.transfer import export_gallery, import_gallery

if TYPE_CHECKING:
    from faceprint.gallery.milvus import MilvusGallery
    from faceprint.gallery.postgres import PostgresGallery

__all__ = [
    "DEFAULT_COLLECTION",
    "UNSET",
    "Candidate",
    "Collection",
    "CollectionNotFound",
    "Consent",
    "ContractMismatch",
    "EmbeddedGallery",
    "EnrolReport",
    "Gallery",
    "GalleryCorrupt",
    "GalleryError",
    "GalleryKeyError",
    "GalleryLocked",
    "GalleryStats",
    "Identification",
    "ImageOutcome",
    "Migratable",
    "MissingKey",
    "Page",
    "Subject",
    "SubjectExists",
    "SubjectNotFound",
    "Template",
    "TemplateNotFound",
    "WrongKey",
    "default_gallery_path",
    "enrol_images",
    "export_gallery",
    "import_gallery",
    "open_gallery",
]


def default_gallery_path() -> Path:
    """``$FACEPRINT_HOME/gallery``; ``FACEPRINT_HOME`` defaults to the user data directory."""
    home = os.environ.get("FACEPRINT_HOME")
    if home:
        return Path(home).expanduser() / "gallery"
    return user_data_path("faceprint", appauthor=False) / "gallery"


def open_gallery(
    path: str | Path | None = None, *, key: bytes | None = None, create: bool = True
) -> EmbeddedGallery | PostgresGallery | MilvusGallery:
    """Open (or create) the gallery at ``path`` (default :func:`default_gallery_path`).

    ``postgresql://…`` / ``postgres://…`` → PostgreSQL + pgvector; ``milvus://host:port`` or a ``*.db`` path →
    Milvus (a server, or Milvus Lite in that file); anything else → the embedded directory. The server
    backends are imported only when asked for (see :mod:`faceprint.gallery.location`).
    """
    backend = open_backend(path, key=key, create=create)
    if backend is not None:
        return backend
    return EmbeddedGallery(
        Path(path).expanduser() if path is not None else default_gallery_path(), key=key, create=create
    )
