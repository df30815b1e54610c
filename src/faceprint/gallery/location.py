"""Where a gallery lives: an embedded directory, a PostgreSQL DSN or a Milvus URI / Milvus Lite file.

``--gallery`` and ``FACEPRINT_GALLERY`` accept all of them. Callers that turned the value into a
:class:`~pathlib.Path` first (the CLI and the service settings do) have had ``scheme://`` collapsed to
``scheme:/``; :func:`server_location` restores it. The one form that cannot be restored from a ``Path`` is
an empty host (``postgresql:///db``): write ``postgresql://localhost/db`` or ``?host=/run/postgresql``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from faceprint.gallery.errors import GalleryError

if TYPE_CHECKING:
    from faceprint.gallery.milvus import MilvusGallery
    from faceprint.gallery.postgres import PostgresGallery

POSTGRES_SCHEMES = ("postgresql", "postgres")
MILVUS_SCHEMES = ("milvus", "milvus+http", "milvus+https")
_SCHEME = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*):(?P<rest>/.*)$", re.IGNORECASE)
#: Marks an embedded gallery directory (see :mod:`faceprint.gallery.embedded`).
_EMBEDDED_DB = "gallery.sqlite3"


def server_location(path: str | PurePath | None) -> tuple[str, str] | None:
    """``("postgres", dsn)`` / ``("milvus", uri_or_file)`` for a server-backed gallery, ``None`` otherwise."""
    if path is None:
        return None
    text = str(path)
    match = _SCHEME.match(text)
    if match:
        scheme, rest = match["scheme"].lower(), match["rest"]
        if scheme in POSTGRES_SCHEMES or scheme in MILVUS_SCHEMES:
            if isinstance(path, PurePath) and not rest.startswith("//"):
                rest = "/" + rest  # undo Path's "//" → "/"
            kind = "postgres" if scheme in POSTGRES_SCHEMES else "milvus"
            return kind, f"{match['scheme']}:{rest}"
    local = Path(text).expanduser()
    if local.suffix == ".db" and not (local / _EMBEDDED_DB).is_file():
        return "milvus", str(local)  # Milvus Lite keeps its data in this file (a directory in Milvus Lite 3)
    return None


def is_server_location(path: str | PurePath | None) -> bool:
    return server_location(path) is not None


def open_backend(
    path: str | PurePath | None, *, key: bytes | None = None, create: bool = True
) -> PostgresGallery | MilvusGallery | None:
    """Open a PostgreSQL or Milvus gallery, or return ``None`` for an embedded one (imports lazily)."""
    found = server_location(path)
    if found is None:
        return None
    kind, location = found
    if kind == "postgres":
        try:
            from faceprint.gallery.postgres import PostgresGallery
        except ImportError as exc:
            raise _missing("postgres", "psycopg[binary], psycopg-pool and pgvector", exc) from None
        return PostgresGallery(location, key=key, create=create)
    try:
        from faceprint.gallery.milvus import MilvusGallery
    except ImportError as exc:
        raise _missing("milvus", "pymilvus (and milvus-lite for a local .db file)", exc) from None
    return MilvusGallery(location, key=key, create=create)


def _missing(extra: str, what: str, exc: ImportError) -> Exception:
    return GalleryError(f"the {extra} gallery backend needs {what}: pip install 'faceprint[{extra}]' ({exc})")


def display_location(path: str | PurePath | None) -> str:
    """How to name a gallery in logs and messages: the server URI with any password masked, or the path."""
    server = server_location(path)
    return redact_location(server[1]) if server else str(path)


def redact_location(location: str) -> str:
    """A DSN/URI fit for logs and messages: any password replaced by ``***``."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return location
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
