"""Erasure receipts: signed statements of what deleting a subject (or a face) removed, verifiable offline.

A receipt is JSON::

    {"receipt": {...what, when, where, by whom...},
     "signature": "<base64 Ed25519 signature of the canonical receipt bytes>",
     "signing_key": {"id": "<key id>", "public_key": "<base64 raw Ed25519 public key>"}}

The canonical bytes are ``json.dumps(receipt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8, so any JSON tool can re-derive them. A receipt names the subject by id only: after an erasure the
name is personal data that must go too.

Signing keys (:class:`SigningKeys`) live in a directory of the installation (``$FACEPRINT_HOME/receipt-keys``,
0700): ``<id>.key`` the private key of the *active* key (PKCS#8 PEM, 0600), ``<id>.pub`` the public key of
every key ever used (kept so old receipts still verify), ``active`` the id of the key that signs. Rotation
(:meth:`SigningKeys.rotate`) writes the new key, switches ``active`` (an atomic rename), then destroys the old
private key, so a crash at any point leaves one usable active key and every public key; a rerun finishes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from faceprint.gallery.model import Erasure, to_iso, utcnow
from faceprint.gallery.private import PRIVATE_FILE, make_private_dir
from faceprint.privacy.errors import MalformedReceipt, ReceiptKeyError, ReceiptNotTrusted, ReceiptSignatureInvalid

RECEIPT_VERSION = 1
#: What a receipt may say was erased: a whole subject, one face, a subject whose retention ended, or the
#: faces of a subject who withdrew consent.
KINDS = ("subject", "face", "retention", "consent-withdrawal")
_REQUIRED = ("version", "id", "kind", "subject_id", "collection", "backend", "deleted", "at")


def canonical(receipt: Mapping[str, Any]) -> bytes:
    return json.dumps(receipt, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def public_key_id(public: bytes) -> str:
    """A short fingerprint of a raw Ed25519 public key."""
    return hashlib.sha256(b"faceprint receipt key\0" + public).hexdigest()[:16]


def _raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsynced, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class SigningKeys:
    """The installation's receipt signing keys in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _active_id(self) -> str | None:
        path = self.directory / "active"
        return path.read_text().strip() if path.is_file() else None

    def active(self, *, create: bool = True) -> tuple[str, Ed25519PrivateKey]:
        """The key that signs now (made on first use when ``create``)."""
        key_id = self._active_id()
        if key_id is None:
            if not create:
                raise ReceiptKeyError(f"no receipt signing key in {self.directory}")
            return self._make_active()
        path = self.directory / f"{key_id}.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ReceiptKeyError(f"the active receipt signing key {path} is unreadable: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey) or public_key_id(_raw_public(key)) != key_id:
            raise ReceiptKeyError(f"{path} is not the Ed25519 key {key_id}")
        return key_id, key

    def _make_active(self) -> tuple[str, Ed25519PrivateKey]:
        make_private_dir(self.directory)
        key = Ed25519PrivateKey.generate()
        key_id = public_key_id(_raw_public(key))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomic(self.directory / f"{key_id}.key", pem)
        _write_atomic(self.directory / f"{key_id}.pub", base64.b64encode(_raw_public(key)) + b"\n", 0o644)
        _write_atomic(self.directory / "active", key_id.encode() + b"\n")
        return key_id, key

    def public_keys(self) -> dict[str, bytes]:
        """Every public key this installation ever signed with, by id (what a receipt is checked against)."""
        if not self.directory.is_dir():
            return {}
        keys: dict[str, bytes] = {}
        for path in sorted(self.directory.glob("*.pub")):
            raw = base64.b64decode(path.read_bytes().strip())
            keys[public_key_id(raw)] = raw
        return keys

    def rotate(self) -> tuple[str | None, str]:
        """Make a new signing key active and destroy the private key of the one before (its public key stays,
        so the receipts it signed still verify). Returns ``(old id, new id)``. A rerun after a crash finishes:
        leftover private keys of inactive keys are destroyed."""
        old = self._active_id()
        new, _ = self._make_active()
        for path in self.directory.glob("*.key"):
            if path.stem != new:
                path.unlink()  # the old private key: refused from now on, since it no longer exists
        return old, new

    def sign(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        key_id, key = self.active()
        return {
            "receipt": dict(receipt),
            "signature": base64.b64encode(key.sign(canonical(receipt))).decode(),
            "signing_key": {"id": key_id, "public_key": base64.b64encode(_raw_public(key)).decode()},
        }


@dataclass(frozen=True)
class ReceiptFacts:
    """Who caused an erasure and how, beside what the gallery reports (:class:`Erasure`)."""

    kind: str
    actor: str | None = None  # the API key id, or "cli" / "retention-schedule"
    request_id: str | None = None
    template_key_id: str | None = None  # the gallery key the erased templates were encrypted under


def make_receipt(erasure: Erasure, facts: ReceiptFacts, *, at: datetime | None = None) -> dict[str, Any]:
    """The unsigned receipt of an erasure (sign it with :meth:`SigningKeys.sign`)."""
    if facts.kind not in KINDS:
        raise ValueError(f"unknown erasure kind {facts.kind!r}")
    return {
        "version": RECEIPT_VERSION,
        "id": uuid.uuid4().hex,
        "kind": facts.kind,
        "subject_id": erasure.subject_id,
        "collection": erasure.collection,
        "backend": erasure.backend,
        "deleted": erasure.to_dict()["deleted"],
        "template_ids": list(erasure.template_ids),
        "at": to_iso(at or erasure.at or utcnow()),
        "actor": facts.actor,
        "request_id": facts.request_id,
        "template_key_id": facts.template_key_id,
    }


def parse_receipt(text: str | bytes, origin: str = "the receipt") -> dict[str, Any]:
    """A signed receipt's JSON, its shape checked (:class:`MalformedReceipt` naming what is wrong)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedReceipt(origin, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedReceipt(origin, "not a JSON object")
    for field in ("receipt", "signature", "signing_key"):
        if field not in data:
            raise MalformedReceipt(origin, f"no {field!r} field")
    receipt, key = data["receipt"], data["signing_key"]
    if not isinstance(receipt, dict) or not isinstance(key, dict):
        raise MalformedReceipt(origin, "'receipt' and 'signing_key' must be objects")
    missing = [f for f in _REQUIRED if f not in receipt]
    if missing:
        raise MalformedReceipt(origin, f"the receipt lacks {', '.join(missing)}")
    if not isinstance(key.get("id"), str) or not isinstance(key.get("public_key"), str):
        raise MalformedReceipt(origin, "'signing_key' needs an 'id' and a 'public_key'")
    if not isinstance(data["signature"], str):
        raise MalformedReceipt(origin, "'signature' must be base64 text")
    return data


def verify_receipt(
    text: str | bytes, trusted: Mapping[str, bytes] | None = None, origin: str = "the receipt"
) -> dict[str, Any]:
    """Check a signed receipt offline; returns its ``receipt`` part.

    The signature must verify under the public key the receipt carries, whose id must match it; with
    ``trusted`` (key id → raw public key: an installation's keys, or one the auditor was given) that key
    must be one of them (:class:`ReceiptNotTrusted`), otherwise anyone could sign a receipt of their own.
    """
    data = parse_receipt(text, origin)
    try:
        public = base64.b64decode(data["signing_key"]["public_key"], validate=True)
        signature = base64.b64decode(data["signature"], validate=True)
        key = Ed25519PublicKey.from_public_bytes(public)
    except (binascii.Error, ValueError) as exc:
        raise MalformedReceipt(origin, f"the signature or public key is not valid base64 Ed25519 ({exc})") from None
    key_id = data["signing_key"]["id"]
    if public_key_id(public) != key_id:
        raise ReceiptSignatureInvalid(origin, f"the public key does not have the id {key_id} it claims")
    try:
        key.verify(signature, canonical(data["receipt"]))
    except InvalidSignature:
        raise ReceiptSignatureInvalid(origin, "the signature does not match the receipt: it was altered") from None
    if trusted is not None and trusted.get(key_id) != public:
        known = ", ".join(sorted(trusted)) or "none"
        raise ReceiptNotTrusted(origin, key_id, known)
    return data["receipt"]
