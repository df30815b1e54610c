"""Service commands: serve, keys (create/list/revoke), audit."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from faceprint.cli import app
from faceprint.cli.common import emit_json, fail, handle_errors
from faceprint.cli.privacy import audit_app

keys_app = typer.Typer(help="API keys for the HTTP service (stored hashed in $FACEPRINT_HOME/service.sqlite3).")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _settings(**overrides: object):  # -> Settings (imported lazily: the CLI starts fast)
    from faceprint.service.settings import Settings

    return Settings.from_env(**overrides)


def _store():
    from faceprint.service.store import ServiceStore

    return ServiceStore(_settings().service_db)


@app.command()
@handle_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    gallery: Annotated[Path | None, typer.Option(help="Gallery directory (default $FACEPRINT_HOME/gallery).")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Embedder for new collections, with its detector and landmarks (default FACEPRINT_MODEL, else "
            "the `faceprint models use` choice). Existing collections are served with the model each is pinned to."
        ),
    ] = None,
    detector: Annotated[
        str | None,
        typer.Option(
            help="Face detector: cascade, mmod, hog, blazeface or a detector model id (default FACEPRINT_DETECTOR, "
            "else the model's own)."
        ),
    ] = None,
    liveness: Annotated[
        str | None,
        typer.Option(
            help="Liveness policy of verify, identify and enrolment when a request names none: off, flag or "
            "require (default FACEPRINT_LIVENESS, else off; flag and require need `faceprint models install "
            "faceplugin`)."
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Serve without API keys (local demos only).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ray: Annotated[
        bool, typer.Option("--ray", help="Run detector and embedder as Ray Serve deployments (docs/deploy.md).")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="With --ray: Ray cluster to join ('auto': this node's); default: start one.")
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(
            "--shadow",
            help="Also run this embedder, on each collection's copy COLLECTION@MODEL, for a fraction of identify "
            "requests, never changing the answers (FACEPRINT_SHADOW; `faceprint canary report`).",
        ),
    ] = None,
    shadow_fraction: Annotated[
        float | None,
        typer.Option(
            "--shadow-fraction", min=0.0, max=1.0, help="Fraction of identify requests shadowed (default 0.1)."
        ),
    ] = None,
) -> None:
    """Run the HTTP API and web UI (see docs/service.md; --ray: docs/deploy.md)."""
    from faceprint.service import server
    from faceprint.service.app import create_app
    from faceprint.service.middleware import EscapingFormatter, RequestIdFilter

    overrides: dict[str, object] = {
        "gallery": gallery,
        "detector": detector,
        "model": model,
        "liveness": liveness,
        "shadow": shadow,
        "shadow_fraction": shadow_fraction,
    }
    if insecure_no_auth:
        overrides["auth"] = False
    settings = _settings(**overrides)
    _configure_logging(log_level, RequestIdFilter(), EscapingFormatter)
    if not settings.auth:
        exposed = host not in LOOPBACK
        typer.echo(
            "WARNING: --insecure-no-auth: anyone who can reach "
            f"{host}:{port} can enrol, identify and delete people"
            + (" — and this address is reachable from the network!" if exposed else " (loopback only)."),
            err=True,
        )
    if address is not None and not ray:
        raise fail("--address needs --ray")
    if settings.auth:
        _first_run_key()
    from faceprint.gallery.location import display_location

    typer.echo(f"faceprint: serving on http://{host}:{port}/ (gallery {display_location(settings.gallery)})", err=True)
    if ray:
        from faceprint.scale.server import serve_forever
        from faceprint.scale.settings import RaySettings

        serve_forever(settings, RaySettings.from_env(address=address), host=host, port=port)
        return
    # Start-up errors (a wrong gallery key) come back from the lifespan as FaceprintErrors: one line, via
    # handle_errors, instead of uvicorn's traceback.
    server.run(create_app(settings), settings, host=host, port=port, log_level=log_level)


def _first_run_key() -> None:
    """On the very first start there is no key to log in with: make one admin key and show it once."""
    from faceprint.service.auth import KeyStore

    keys = KeyStore(_store())
    if keys.list(include_revoked=True):
        return
    key, text = keys.create(["admin"], "first-run")
    typer.echo(
        f"first start: created admin key {key.id}; it is shown only now, paste it into the web UI or send it as "
        f"`Authorization: Bearer KEY`:\n\n    {text}\n",
        err=True,
    )


def _configure_logging(level: str, request_ids: logging.Filter, formatter: type[logging.Formatter]) -> None:
    """``formatter``: the service's, which escapes control characters (no forged log lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(request_ids)
    handler.setFormatter(formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    for name in ("faceprint", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if isinstance(h, logging.NullHandler)] + [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


@keys_app.command("create")
@handle_errors
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="admin, enroll, recognize or read; repeat for several.")],
    name: Annotated[str, typer.Option("--name", help="A label for lists and audit reading.")] = "",
    purpose: Annotated[
        str | None,
        typer.Option("--purpose", help="Bind the key: it identifies only subjects who consented to this purpose."),
    ] = None,
) -> None:
    """Create a key; it is printed alone on stdout, once — store it now."""
    from faceprint.service.auth import ApiKeyError, KeyStore

    try:
        key, text = KeyStore(_store()).create(scope, name, purpose)
    except ApiKeyError as exc:
        raise fail(str(exc)) from None
    bound = f", purpose {key.purpose}" if key.purpose else ""
    typer.echo(f"created key {key.id} ({', '.join(key.scopes)}{bound}); it will not be shown again", err=True)
    typer.echo(text)


@keys_app.command("list")
@handle_errors
def keys_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys: id, name, scopes, created, last used (never the keys themselves)."""
    from faceprint.service.auth import KeyStore

    keys = KeyStore(_store()).list(include_revoked=all_keys)
    if json_out:
        emit_json([k.to_dict() for k in keys])
        return
    if not keys:
        typer.echo("no keys; create one with `faceprint keys create --scope admin`", err=True)
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else f"last used {k.last_used_at or 'never'}"
        bound = f"  purpose {k.purpose}" if k.purpose else ""
        typer.echo(f"{k.id}  {','.join(k.scopes):<24} {k.name or '-':<20} created {k.created_at}  {state}{bound}")


@keys_app.command("revoke")
@handle_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `faceprint keys list`).")]) -> None:
    """Revoke a key; a running server refuses it from the next request on."""
    from faceprint.service.auth import ApiKeyError, KeyStore

    try:
        key = KeyStore(_store()).revoke(key_id)
    except ApiKeyError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"revoked key {key.id} ({key.name or 'unnamed'})", err=True)


@audit_app.callback()
@handle_errors
def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Entries to show, newest first.")] = 50,
    action: Annotated[str | None, typer.Option(help="verify, identify, enrol, subject.delete, …")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key id.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Only entries naming this subject id.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO-8601 UTC time, e.g. 2026-11-22T00:00.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read the service's audit log (who verified, identified, enrolled or deleted whom, and when)."""
    if ctx.invoked_subcommand is not None:
        return
    from faceprint.service.audit import AuditLog

    entries = AuditLog(_store()).query(limit=limit, action=action, key_id=key, subject_id=subject, since=since)
    if json_out:
        emit_json([e.to_dict() for e in entries])
        return
    for e in entries:
        scores = ",".join(f"{s:.3f}" for s in e.scores)
        typer.echo(
            f"{e.at}  {e.action:<15} {e.status}  key={e.key_id or '-'}  subjects={','.join(e.subject_ids) or '-'}"
            f"  scores={scores or '-'}  threshold={e.threshold if e.threshold is not None else '-'}"
            f"  decision={e.decision or '-'}  model={_model_version(e.model_id, e.model_sha256)}"
            f"  request={e.request_id}"
        )


def _model_version(model_id: str | None, sha256: str | None) -> str:
    """``dlib-resnet-v1@55533b28a958``: the model and the start of its weights' sha256."""
    if not model_id:
        return "-"
    return f"{model_id}@{sha256[:12]}" if sha256 else model_id
