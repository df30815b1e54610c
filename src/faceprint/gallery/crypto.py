"""Templates at rest: AES-256-GCM with a key that never lives in the gallery directory.

Where the key comes from, first match wins:

1. the ``key`` argument (bytes) of :func:`resolve_key`;
2. ``FACEPRINT_KEY``: 32 bytes as 64 hex digits or base64;
3. ``FACEPRINT_KEY_FILE``: a file holding the key in one of those forms;
4. the default key file ``<user config dir>/faceprint/gallery.key``.

A key file is created (mode 0600, random 32 bytes) only when a *new* gallery is created and no key was
given. Opening an existing gallery never creates a key: a missing key is :class:`MissingKey`, a key that
does not decrypt the gallery's check value is :class:`WrongKey` — never silent garbage.

Every ciphertext is ``nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)``; the associated data binds it to its
row (a vector copied onto another subject's row fails to decrypt).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from platformdirs import user_config_path

from faceprint.gallery.errors import GalleryKeyError, MissingKey, WrongKey
from faceprint.gallery.private import PRIVATE_FILE, make_private_dir

KEY_BYTES = 32
NONCE_BYTES = 12
_CHECK_PLAINTEXT = b"faceprint gallery key check v1"
_CHECK_AAD = b"faceprint:key-check"


def default_key_file() -> Path:
    return user_config_path("faceprint", appauthor=False) / "gallery.key"


def parse_key(text: str | bytes, origin: str) -> bytes:
    """Decode a key written as 64 hex digits or base64 (standard or URL-safe) of 32 bytes."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = raw.strip()
    key: bytes | None = None
    if len(raw) == 2 * KEY_BYTES:
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != KEY_BYTES:
        raise GalleryKeyError(f"{origin} does not hold a 256-bit key (expected 64 hex digits or base64 of 32 bytes)")
    return key


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def write_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` with mode 0600 (refuses to overwrite an existing key)."""
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # whatever the umask
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_key(key: bytes | None = None, *, create: bool = False) -> tuple[bytes, str]:
    """The key and a description of where it came from (for error messages; never the key itself)."""
    if key is not None:
        if len(key) != KEY_BYTES:
            raise GalleryKeyError(f"the key must be {KEY_BYTES} bytes, got {len(key)}")
        return key, "the key given"
    env = os.environ.get("FACEPRINT_KEY")
    if env:
        return parse_key(env, "FACEPRINT_KEY"), "FACEPRINT_KEY"
    env_file = os.environ.get("FACEPRINT_KEY_FILE")
    path = Path(env_file) if env_file else default_key_file()
    origin = f"key file {path}" + (" (FACEPRINT_KEY_FILE)" if env_file else "")
    if path.is_file():
        return parse_key(path.read_bytes(), origin), origin
    if not create:
        raise MissingKey(
            f"no key to decrypt this gallery's templates: set FACEPRINT_KEY, or FACEPRINT_KEY_FILE, or restore {path}"
        )
    new = generate_key()
    write_key_file(path, new)
    return new, origin


def key_id(key: bytes) -> str:
    """A short public fingerprint of the key, to tell keys apart in messages (reveals nothing usable)."""
    return hashlib.sha256(b"faceprint key id\0" + key).hexdigest()[:12]


class TemplateCipher:
    """AES-256-GCM over small blobs (vectors, chips, index snapshots)."""

    def __init__(self, key: bytes, origin: str = "the key") -> None:
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        self.origin = origin

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise WrongKey(
                f"a template does not decrypt with {self.origin} (key id {self.key_id}): wrong key, "
                "or the record was tampered with"
            ) from None

    def check_value(self) -> bytes:
        return self.encrypt(_CHECK_PLAINTEXT, _CHECK_AAD)

    def verify(self, check_value: bytes, expected_key_id: str | None) -> None:
        try:
            ok = self._aead.decrypt(check_value[:NONCE_BYTES], check_value[NONCE_BYTES:], _CHECK_AAD)
        except InvalidTag:
            ok = b""
        if ok != _CHECK_PLAINTEXT:
            hint = f" (the gallery was encrypted with key id {expected_key_id})" if expected_key_id else ""
            raise WrongKey(f"wrong key: {self.origin} (key id {self.key_id}) is not this gallery's key{hint}")


# -- what the galleries encrypt: vectors and chips bound to their rows ---------------------------------------
# The associated-data format is the same for every backend, so a template encrypted by one backend decrypts in
# another given the same key.
def vector_aad(subject_id: str, model_id: str, kind: str = "tpl") -> bytes:
    """Associated data binding an encrypted vector (``tpl`` template, ``neg`` negative) to its subject and
    model: a vector copied onto another subject's row fails to decrypt instead of matching the wrong person."""
    return f"faceprint:{kind}:{subject_id}:{model_id}".encode()


def chip_aad(subject_id: str) -> bytes:
    return f"faceprint:chip:{subject_id}".encode()


def seal_vector(cipher: TemplateCipher, vector: np.ndarray, subject_id: str, model_id: str, kind: str = "tpl") -> bytes:
    """The vector as little-endian float32, encrypted and bound to its row."""
    return cipher.encrypt(np.asarray(vector, dtype="<f4").tobytes(), vector_aad(subject_id, model_id, kind))


def open_vector(cipher: TemplateCipher, blob: bytes, subject_id: str, model_id: str, kind: str = "tpl") -> np.ndarray:
    """Decrypt a vector written by :func:`seal_vector` (:class:`WrongKey` when it was moved or altered)."""
    return np.frombuffer(cipher.decrypt(bytes(blob), vector_aad(subject_id, model_id, kind)), dtype="<f4").copy()


def seal_chip(cipher: TemplateCipher, chip: np.ndarray, subject_id: str) -> bytes:
    """An aligned face chip (uint8 pixels after a JSON shape header), encrypted and bound to its subject."""
    pixels = np.ascontiguousarray(chip, dtype=np.uint8)
    return cipher.encrypt(json.dumps(list(pixels.shape)).encode() + b"\n" + pixels.tobytes(), chip_aad(subject_id))


def open_chip(cipher: TemplateCipher, blob: bytes, subject_id: str) -> np.ndarray:
    """Decrypt a chip written by :func:`seal_chip` (ValueError for a damaged header or size)."""
    header, _, pixels = cipher.decrypt(bytes(blob), chip_aad(subject_id)).partition(b"\n")
    return np.frombuffer(pixels, dtype=np.uint8).reshape(json.loads(header)).copy()
