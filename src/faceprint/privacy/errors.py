"""Errors of the privacy duties: receipts that are malformed, altered or signed by a key not trusted, and
receipt signing keys that cannot be used. All are :class:`~faceprint.errors.FaceprintError` (CLI exit 2,
HTTP 4xx)."""

from __future__ import annotations

from faceprint.errors import FaceprintError


class PrivacyError(FaceprintError):
    """Root of the errors in :mod:`faceprint.privacy`."""


class ReceiptError(PrivacyError):
    """A receipt cannot be read or does not verify."""

    def __init__(self, origin: str, why: str) -> None:
        self.origin = origin
        self.why = why
        super().__init__(f"{origin}: {why}")


class MalformedReceipt(ReceiptError):
    """Not a faceprint erasure receipt at all (not JSON, fields missing, bad base64)."""


class ReceiptSignatureInvalid(ReceiptError):
    """The receipt was altered after signing, or its key id is not its key's."""


class ReceiptNotTrusted(ReceiptError):
    """The signature is sound but the key is not one the verifier trusts."""

    def __init__(self, origin: str, key_id: str, known: str) -> None:
        super().__init__(origin, f"signed by key {key_id}, which is not a trusted receipt key (trusted: {known})")


class ReceiptNotFound(PrivacyError):
    def __init__(self, receipt_id: str) -> None:
        self.receipt_id = receipt_id
        super().__init__(f"no erasure receipt with id {receipt_id!r}")


class ReceiptKeyError(PrivacyError):
    """The receipt signing key is missing or unreadable."""
