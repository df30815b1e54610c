"""Privacy commands: ``faceprint audit receipt ID``, ``audit verify-receipt FILE``, ``audit rotate-signing-key``,
and the receipts the gallery commands issue when they delete (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from faceprint.cli.common import emit_json, fail, handle_errors
from faceprint.gallery.base import Gallery
from faceprint.gallery.model import Erasure
from faceprint.privacy.errors import ReceiptError
from faceprint.privacy.receipts import ReceiptFacts, SigningKeys, verify_receipt
from faceprint.service.audit import AuditEntry, AuditLog
from faceprint.service.erasures import ErasureLog, receipt_keys_dir
from faceprint.service.settings import Settings
from faceprint.service.store import ServiceStore

audit_app = typer.Typer(
    help="The service's audit log (no subcommand: read it), and signed erasure receipts.",
    invoke_without_command=True,
)


def service_store() -> ServiceStore:
    """The installation's service database ($FACEPRINT_HOME/service.sqlite3 or FACEPRINT_SERVICE_DB)."""
    return ServiceStore(Settings.from_env().service_db)


def issue_receipts(
    gallery: Gallery, erasures: list[Erasure], kind: str, action: str, *, actor: str = "cli"
) -> list[dict[str, Any]]:
    """Sign and store a receipt per erasure the CLI made, with an audit entry each (as the service does)."""
    store = service_store()
    try:
        log, audit = ErasureLog(store), AuditLog(store)
        out = []
        for erasure in erasures:
            facts = ReceiptFacts(kind, actor=actor, template_key_id=gallery.template_key_id)
            signed = log.issue(erasure, facts)
            audit.append(
                AuditEntry(
                    action=action,
                    endpoint=actor,
                    status=200,
                    collection=erasure.collection,
                    subject_ids=(erasure.subject_id,),
                    detail={"receipt": signed["receipt"]["id"]},
                )
            )
            out.append(signed)
        return out
    finally:
        store.close()


def personal_records(subject_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit entries and erasure receipts that name the subject (for a subject access export)."""
    store = service_store()
    try:
        entries = AuditLog(store).query(limit=10_000, subject_id=subject_id)
        return [e.to_dict() for e in entries], ErasureLog(store).for_subject(subject_id)
    finally:
        store.close()


@audit_app.command("receipt")
@handle_errors
def audit_receipt(
    receipt_id: Annotated[str, typer.Argument(help="The receipt id (printed by a deletion, or in the audit log).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the receipt to this file.")] = None,
) -> None:
    """Print (or save) a signed erasure receipt, exactly as issued."""
    store = service_store()
    try:
        signed = ErasureLog(store).get(receipt_id)
    finally:
        store.close()
    if out is not None:
        out.write_text(json.dumps(signed, indent=2, ensure_ascii=False) + "\n")
        typer.echo(f"wrote receipt {receipt_id} to {out}", err=True)
        return
    emit_json(signed)


@audit_app.command("verify-receipt")
@handle_errors
def audit_verify_receipt(
    file: Annotated[Path, typer.Argument(help="A receipt file (from `faceprint audit receipt ID --out`).")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Trust only this public key (a receipt-keys/<id>.pub file). Default: this installation's keys.",
        ),
    ] = None,
) -> None:
    """Check a receipt offline: its signature, and that its key is trusted; exit 2 when it does not verify."""
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise fail(f"{file}: cannot read ({exc.strerror})") from None
    if public_key is not None:
        try:
            keys = SigningKeys(public_key.parent)
            trusted = {k: v for k, v in keys.public_keys().items() if k == public_key.stem}
        except (OSError, ValueError) as exc:
            raise fail(f"{public_key}: not a receipt public key ({exc})") from None
        if not trusted:
            raise fail(f"{public_key}: not a receipt public key file")
    else:
        trusted = SigningKeys(receipt_keys_dir(Settings.from_env().service_db)).public_keys()
        if not trusted:
            raise fail("this installation has no receipt keys to trust: pass --public-key FILE")
    try:
        receipt = verify_receipt(text, trusted, origin=str(file))
    except ReceiptError as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"valid: receipt {receipt['id']} — {receipt['kind']} erasure of subject {receipt['subject_id']} "
        f"({receipt['collection']}, {receipt['backend']}) at {receipt['at']}"
    )


@audit_app.command("rotate-signing-key")
@handle_errors
def audit_rotate_signing_key() -> None:
    """Sign receipts with a new Ed25519 key from now on; the old private key is destroyed (its public key stays,
    so receipts it signed still verify)."""
    keys = SigningKeys(receipt_keys_dir(Settings.from_env().service_db))
    old, new = keys.rotate()
    typer.echo(f"receipt signing key: {old or '(none)'} -> {new}")
