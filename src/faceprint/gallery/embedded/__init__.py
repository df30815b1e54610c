"""The embedded gallery backend (the default): a directory with SQLite as the source of truth and an
in-process vector index cache. See :mod:`faceprint.gallery.embedded.gallery`."""

from faceprint.gallery.embedded.gallery import DB_NAME, EmbeddedGallery

__all__ = ["DB_NAME", "EmbeddedGallery"]
