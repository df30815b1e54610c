"""API keys with scopes.

A key reads ``fpk_<id>_<secret>``: ``id`` (8 hex digits) is public and names the key in lists and audit
entries; ``secret`` is 32 random bytes. Only ``sha256(secret)`` is stored — a secret of 256 random bits
needs no slow password hash — and it is compared in constant time. A key is shown once, when created.

Scopes: ``admin`` (everything, including the audit log), ``enroll`` (create, change and delete subjects and
their faces), ``recognize`` (detect, verify, identify), ``read`` (list and show subjects, metrics).

A key may be bound to a consent purpose (``faceprint keys create --purpose attendance``): its identifications
then consider only subjects with an active consent to that purpose, whatever the request asks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import Depends, Request

from faceprint.errors import FaceprintError
from faceprint.gallery.errors import UnknownPurpose
from faceprint.gallery.model import check_purpose
from faceprint.service.errors import ApiError
from faceprint.service.store import ServiceStore

SCOPES = ("admin", "enroll", "recognize", "read")
_KEY_RE = re.compile(r"^fpk_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})$")


class ApiKeyError(FaceprintError):
    """A key cannot be created or revoked as asked."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None
    purpose: str | None = None  # bound: identification under this purpose only (consenting subjects)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "purpose": self.purpose,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (``None`` when auth is off) and its scopes."""

    key_id: str | None
    scopes: frozenset[str]
    purpose: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, store: ServiceStore) -> None:
        self.store = store
        self._touched: dict[str, str] = {}  # key id → minute of the last recorded use (saves writes)

    def create(
        self, scopes: list[str] | tuple[str, ...], name: str = "", purpose: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its full text (the only time the text exists outside the caller). ``purpose`` binds
        the key: its identifications consider only subjects who consented to that purpose."""
        wanted = tuple(dict.fromkeys(scopes))
        if purpose is not None:
            try:
                check_purpose(purpose)
            except UnknownPurpose as exc:
                raise ApiKeyError(str(exc)) from None
        bad = [s for s in wanted if s not in SCOPES]
        if not wanted or bad:
            raise ApiKeyError(f"unknown scope {', '.join(bad) or '(none given)'}; choose from {', '.join(SCOPES)}")
        secret = secrets.token_urlsafe(32)
        with self.store.write() as conn:
            while True:
                key_id = secrets.token_hex(4)
                if conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone() is None:
                    break
            created = _now()
            conn.execute(
                "INSERT INTO api_keys (id, name, scopes, secret_hash, created_at, purpose) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, name, " ".join(wanted), _hash(secret), created, purpose),
            )
        return ApiKey(key_id, name, wanted, created, purpose=purpose), f"fpk_{key_id}_{secret}"

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        sql = "SELECT id, name, scopes, created_at, revoked_at, last_used_at, purpose FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = self.store.read().execute(sql + " ORDER BY created_at, id").fetchall()
        return [ApiKey(r[0], r[1], tuple(r[2].split()), r[3], r[4], r[5], r[6]) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        with self.store.write() as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_now(), key_id)
            )
            if cur.rowcount == 0:
                exists = conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                raise ApiKeyError(f"key {key_id!r} is already revoked" if exists else f"no key with id {key_id!r}")
        return next(k for k in self.list() if k.id == key_id)

    def authenticate(self, text: str) -> ApiKey | None:
        """The live key whose text this is, or ``None`` (unknown, malformed, revoked or wrong secret)."""
        found = _KEY_RE.match(text.strip())
        if not found:
            return None
        key_id, secret = found.groups()
        row = (
            self.store.read()
            .execute(
                "SELECT id, name, scopes, created_at, revoked_at, last_used_at, secret_hash, purpose FROM api_keys "
                "WHERE id = ?",
                (key_id,),
            )
            .fetchone()
        )
        if row is None or row[4] is not None or not hmac.compare_digest(row[6], _hash(secret)):
            return None
        return ApiKey(row[0], row[1], tuple(row[2].split()), row[3], row[4], row[5], row[7])

    def use(self, text: str) -> ApiKey | None:
        """:meth:`authenticate`, then :meth:`touch` the key: what each request needs, in one call (the service
        runs it in one worker-thread hop instead of two)."""
        key = self.authenticate(text)
        if key is not None:
            self.touch(key.id)
        return key

    def touch(self, key_id: str) -> None:
        """Record the last use (to the minute, so a busy key does not write on every request)."""
        minute = _now()[:16]
        if self._touched.get(key_id) == minute:
            return
        self._touched[key_id] = minute
        with self.store.write() as conn:
            conn.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR "
                "substr(last_used_at, 1, 16) < ?)",
                (_now(), key_id, minute),
            )


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = request.headers.get("x-api-key")
    return value.strip() if value and value.strip() else None


def require(scope: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency: 401 without a valid key, 403 when the key lacks ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request) -> Principal:
        principal = await authenticate_request(request)
        if not principal.allows(scope):
            raise ApiError(
                403,
                "forbidden",
                f"this key lacks the {scope!r} scope (it has: {', '.join(sorted(principal.scopes))})",
                required_scope=scope,
            )
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


async def authenticate_request(request: Request) -> Principal:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    state = request.app.state
    if not state.settings.auth:
        principal = Principal(None, frozenset(SCOPES))
    else:
        text = presented_key(request)
        if text is None:
            raise ApiError(401, "unauthenticated", "an API key is required: send 'Authorization: Bearer KEY'")
        key = await to_thread.run_sync(state.keys.use, text)
        if key is None:
            raise ApiError(401, "invalid_key", "the API key is unknown, malformed or revoked")
        principal = Principal(key.id, frozenset(key.scopes), key.purpose)
    request.state.principal = principal
    return principal


# Route parameters: `principal: Admin` etc. (Annotated, so no call sits in a default value).
Admin = Annotated[Principal, Depends(require("admin"))]
Enroll = Annotated[Principal, Depends(require("enroll"))]
Recognize = Annotated[Principal, Depends(require("recognize"))]
Read = Annotated[Principal, Depends(require("read"))]
