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
from collections.abc import Callable
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


#: A ciphertext written by this version starts with ``FPK`` and the 6 bytes of its key's id, so a row says
#: which key it is under (what key rotation needs); one without (written before) is under the legacy key.
KEY_HEADER = b"FPK"
HEADER_BYTES = len(KEY_HEADER) + 6


def key_header(key_id: str) -> bytes:
    return KEY_HEADER + bytes.fromhex(key_id)


def blob_key_id(blob: bytes) -> str | None:
    """The id of the key a ciphertext is under, ``None`` for one written without a header."""
    return bytes(blob[3:HEADER_BYTES]).hex() if bytes(blob[:3]) == KEY_HEADER and len(blob) > HEADER_BYTES else None


class TemplateCipher:
    """AES-256-GCM over small blobs (vectors, chips, index snapshots), with a keyring.

    It encrypts with its *current* key and decrypts with whichever key it holds that a ciphertext names in its
    header (:data:`KEY_HEADER`); a ciphertext without a header is under the *legacy* key (the first one). A
    gallery adds keys during a rotation (:meth:`add`, :meth:`use`); ``refresh`` is called once when a
    ciphertext names a key not held yet (another process started a rotation), to look for it.
    """

    def __init__(self, key: bytes, origin: str = "the key") -> None:
        self.key_id = key_id(key)
        self.legacy_id = self.key_id
        self.origin = origin
        self._keys: dict[str, AESGCM] = {self.key_id: AESGCM(key)}
        self._raw: dict[str, bytes] = {self.key_id: key}
        self.refresh: Callable[[], None] | None = None
        self._refreshing = False

    @property
    def _aead(self) -> AESGCM:
        return self._keys[self.key_id]

    def add(self, key: bytes) -> str:
        """Hold another key (for decrypting); returns its id."""
        kid = key_id(key)
        self._keys.setdefault(kid, AESGCM(key))
        self._raw.setdefault(kid, key)
        return kid

    def holds(self, kid: str) -> bool:
        return kid in self._keys

    def use(self, kid: str) -> None:
        """Encrypt with the held key ``kid`` from now on."""
        if kid not in self._keys:
            raise GalleryKeyError(f"key {kid} is not held")
        self.key_id = kid

    def raw(self, kid: str) -> bytes:
        return self._raw[kid]

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return key_header(self.key_id) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        blob = bytes(blob)
        kid = blob_key_id(blob)
        if kid is not None and kid not in self._keys and self.refresh is not None and not self._refreshing:
            self._refreshing = True
            try:
                self.refresh()  # another process may have started a rotation to that key
            finally:
                self._refreshing = False
        if kid is not None and kid in self._keys:
            aead, body = self._keys[kid], blob[HEADER_BYTES:]
        elif kid is not None:
            raise WrongKey(
                f"a template is encrypted under key id {kid}, which {self.origin} (key id {self.key_id}) does not "
                "hold: the gallery key was rotated; use the new key"
            )
        else:
            aead, body = self._keys[self.legacy_id], blob
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad)
        except InvalidTag:
            raise WrongKey(
                f"a template does not decrypt with {self.origin} (key id {kid or self.legacy_id}): wrong key, "
                "or the record was tampered with"
            ) from None

    def check_value(self) -> bytes:
        """A value only the current key decrypts (stored by a gallery to recognise its key)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AAD)

    def verify(self, check_value: bytes, expected_key_id: str | None) -> None:
        if not self.matches(check_value):
            hint = f" (the gallery was encrypted with key id {expected_key_id})" if expected_key_id else ""
            raise WrongKey(f"wrong key: {self.origin} (key id {self.key_id}) is not this gallery's key{hint}")

    def matches(self, check_value: bytes) -> bool:
        try:
            ok = self._aead.decrypt(check_value[:NONCE_BYTES], check_value[NONCE_BYTES:], _CHECK_AAD)
        except InvalidTag:
            ok = b""
        return ok == _CHECK_PLAINTEXT

    def wrap(self, key: bytes) -> bytes:
        """``key`` encrypted under the current key (how a gallery hands a rotation's new key to its clients)."""
        return self.encrypt(key, b"faceprint:key-wrap:" + key_id(key).encode())

    def unwrap(self, blob: bytes, kid: str) -> bytes | None:
        """A key wrapped by :meth:`wrap`, if a held key opens it (``None`` otherwise)."""
        try:
            key = self.decrypt(blob, b"faceprint:key-wrap:" + kid.encode())
        except WrongKey:
            return None
        return key if key_id(key) == kid else None


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
