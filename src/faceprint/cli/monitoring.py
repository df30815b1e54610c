"""Operating commands: ``drift`` (what the cameras send, against a baseline) and ``canary report|promote|rollback``
(a shadow model's agreement, and switching a collection's serving model in one audited step).

Both read the state a ``faceprint serve`` keeps beside its service database ($FACEPRINT_HOME, or
FACEPRINT_SERVICE_DB's folder): ``drift.json`` and the ``serving``/``shadow_log`` tables.
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from faceprint.cli import app
from faceprint.cli.common import emit_json, fail, handle_errors

JsonOpt = typer.Option(False, "--json", help="Print JSON.")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` (before now) or an ISO-8601 time (naive: UTC)."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--since {text!r}: give a duration (30m, 2h, 7d) or an ISO-8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _settings():  # -> Settings (imported lazily: the CLI starts fast)
    from faceprint.service.settings import Settings

    return Settings.from_env()


@app.command()
@handle_errors
def drift(
    since: Annotated[
        str | None, typer.Option(help="Only current-window faces since then: 30m, 2h, 7d or an ISO-8601 time.")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Only this source (camera id).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Drift file (default: drift.json beside the service database).")
    ] = None,
    rebaseline: Annotated[
        bool,
        typer.Option(
            "--rebaseline",
            help="Make the current windows the new baselines (after a deliberate change; the service must be "
            "stopped, or it overwrites the file).",
        ),
    ] = False,
    json_out: bool = JsonOpt,
) -> None:
    """What moved in the faces the service sees: face size, quality, sharpness, liveness and best-match scores
    per collection and source, against the baseline window (PSI, KS test, histograms, and the likely cause)."""
    from faceprint.evaluation.drift import DriftMonitor, check_source, report_dict, report_text

    path = file or _settings().drift_file
    if not path.is_file():
        raise fail(f"{path}: no drift file; a running `faceprint serve` writes it from verify and identify requests")
    monitor = DriftMonitor(path, window=_window(path))
    if source is not None:
        check_source(source)
    if rebaseline:
        n = monitor.rebaseline(source=source)
        monitor.save()
        typer.echo(f"{n} window(s) re-baselined in {path}")
        return
    after = parse_since(since).timestamp() if since is not None else None
    if json_out:
        emit_json(report_dict(monitor, since=after, source=source))
        return
    typer.echo(report_text(monitor, since=after, source=source), nl=False)


def _window(path: Path) -> int:
    """The window size the file was written with (the report compares what the service kept)."""
    try:
        return int(json.loads(path.read_text()).get("window", 500))
    except (OSError, ValueError, AttributeError):
        return 500  # DriftMonitor reports the unreadable file


canary_app = typer.Typer(
    name="canary",
    help="Shadow and canary models: a collection's copy on another model (copy), how the shadow model compares "
    "(report), and switching a collection's serving model in one audited step (promote, rollback). See "
    "docs/service.md#shadow-and-canary-models.",
    no_args_is_help=True,
)
app.add_typer(canary_app, name="canary")


@canary_app.command("report")
@handle_errors
def canary_report(
    since: Annotated[str | None, typer.Option(help="Only shadow runs since then: 30m, 2h, 7d or ISO-8601.")] = None,
    json_out: bool = JsonOpt,
) -> None:
    """Per collection: which model serves it (and its sha256), and how the shadow model compared on the sampled
    requests: agreement of decisions, shift of the best score, the shadow's latency."""
    from faceprint.service.canary import ServingTable, shadow_report
    from faceprint.service.store import ServiceStore

    store = ServiceStore(_settings().service_db)
    try:
        after = parse_since(since).isoformat(timespec="milliseconds") if since is not None else None
        rows = shadow_report(store, since=after)
        serving = [r.to_dict() for r in ServingTable(store).rows().values()]
    finally:
        store.close()
    if json_out:
        emit_json({"serving": serving, "shadow": rows})
        return
    for s in serving:
        typer.echo(
            f"{s['collection']}: served by {s['model_id']} ({s['sha256'][:12]}…) from {s['target']} since {s['at']}"
        )
    if not rows:
        typer.echo("no shadow runs recorded: start the service with `faceprint serve --shadow MODEL`")
        return
    typer.echo(
        "| collection | serving | shadow | requests | agreement | best-score shift (mean/median) | shadow p50/p95 |"
    )
    typer.echo("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mean, median = r["score_shift_mean"], r["score_shift_median"]
        shift = "-" if mean is None else f"{mean:+.3f} / {median:+.3f}"
        typer.echo(
            f"| {r['collection']} | {r['model']} | {r['shadow_model']} | {r['requests']} | "
            f"{100 * r['agreement']:.1f}% ({r['disagreements']} disagree) | {shift} | "
            f"{1000 * r['shadow_seconds_p50']:.0f} / {1000 * r['shadow_seconds_p95']:.0f} ms |"
        )


def _switch(action: str, collection: str, model: str | None, gallery: Path | None, json_out: bool) -> None:
    from faceprint.gallery import open_gallery
    from faceprint.models.registry import ModelRegistry
    from faceprint.service.canary import promote, rollback
    from faceprint.service.store import ServiceStore

    settings = _settings()
    sha = {model_id: spec.sha256 for model_id, spec in ModelRegistry().specs().items()}
    actor = f"cli:{getpass.getuser()}"
    store = ServiceStore(settings.service_db)
    try:
        with open_gallery(gallery or settings.gallery, create=False) as g:
            if action == "promote":
                assert model is not None
                entry = promote(store, g, collection, model, sha, actor=actor)
            else:
                entry = rollback(store, g, collection, sha, actor=actor)
    finally:
        store.close()
    if json_out:
        emit_json(entry.to_dict())
        return
    d = entry.detail
    typer.echo(
        f"{collection}: {d['from_model']} ({str(d['from_sha256'])[:12]}…) → {d['to_model']} "
        f"({str(d['to_sha256'])[:12]}…), answered by collection {d['answered_by']!r}; audit entry {entry.id}"
    )


GalleryOpt = typer.Option(None, "--gallery", help="Gallery (default: the service's, $FACEPRINT_GALLERY).")


@canary_app.command("copy")
@handle_errors
def canary_copy(
    collection: Annotated[str, typer.Argument(help="The collection to copy, e.g. default.")],
    model: Annotated[str, typer.Option("--model", help="The model the copy COLLECTION@MODEL is re-embedded with.")],
    gallery: Path | None = GalleryOpt,
    drop_missing: Annotated[
        bool, typer.Option("--drop-missing", help="Leave out templates enrolled without --keep-chips.")
    ] = False,
    json_out: bool = JsonOpt,
) -> None:
    """Make the shadow copy COLLECTION@MODEL for `serve --shadow MODEL`: copy the collection, then re-embed the
    copy with MODEL from the face chips kept at enrolment (`faceprint migrate`); COLLECTION keeps serving."""
    from faceprint.gallery import open_gallery
    from faceprint.gallery.migrate import copy_collection, migrate_collection, plan_migration
    from faceprint.service.canary import shadow_collection

    settings = _settings()
    target = shadow_collection(collection, model)
    with open_gallery(gallery or settings.gallery, create=False) as g:
        # Every check of the migration (chips, model, geometry) before anything is written.
        plan = plan_migration(g, collection, model, drop_missing=drop_missing)
        for note in plan.notes:
            typer.echo(f"note: {note}", err=True)
        copied = copy_collection(g, collection, target)
        migrated = migrate_collection(g, target, model, drop_missing=drop_missing)
    if json_out:
        emit_json({"copy": copied.to_dict(), "migration": migrated.to_dict()})
        return
    typer.echo(
        f"{target}: {copied.subjects} subject(s), {migrated.templates} template(s) re-embedded with {model} "
        f"(from {copied.model_id}); serve it with `faceprint serve --shadow {model}`"
    )


@canary_app.command("promote")
@handle_errors
def canary_promote(
    collection: Annotated[str, typer.Argument(help="The collection clients use, e.g. default.")],
    model: Annotated[str, typer.Option("--model", help="The model to serve it with (its copy COLLECTION@MODEL).")],
    gallery: Path | None = GalleryOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Serve COLLECTION with MODEL from now on (its copy COLLECTION@MODEL answers); one audited step that a
    running service picks up within a second. The old model becomes the shadow."""
    _switch("promote", collection, model, gallery, json_out)


@canary_app.command("rollback")
@handle_errors
def canary_rollback(
    collection: Annotated[str, typer.Argument(help="The collection clients use.")],
    gallery: Path | None = GalleryOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Serve COLLECTION with its own model again (undo `canary promote`); one audited step."""
    _switch("rollback", collection, None, gallery, json_out)
