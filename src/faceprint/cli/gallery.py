"""Gallery commands: enroll, identify, subjects …, gallery stats/export/import, migrate (registered on the main
app)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from faceprint.cli import app
from faceprint.cli.common import (
    EXIT_BAD_INPUT,
    ReadableImages,
    emit_json,
    expand_images,
    fail,
    handle_errors,
    progress,
    progress_bar,
)
from faceprint.cli.core import (
    DetectorOpt,
    DeviceOpt,
    JsonOpt,
    LivenessModeOpt,
    LivenessThresholdOpt,
    ModelOpt,
    describe_liveness,
    liveness_policy,
    make_pipeline,
    resolve_model,
)
from faceprint.cli.privacy import issue_receipts, personal_records
from faceprint.gallery import (
    DEFAULT_COLLECTION,
    CollectionNotFound,
    Gallery,
    default_gallery_path,
    enrol_images,
    export_gallery,
    import_gallery,
    open_gallery,
)
from faceprint.gallery.base import Gallery as GalleryProtocol
from faceprint.gallery.crypto import TemplateCipher, parse_key, resolve_key
from faceprint.gallery.enrol import EnrolReport, ImageOutcome, pick_face
from faceprint.gallery.location import is_server_location
from faceprint.gallery.model import Consent, parse_duration
from faceprint.image import Image, load_image
from faceprint.liveness import LivenessPolicy, LivenessResult, refused_match
from faceprint.matching import check_one_rule
from faceprint.pipeline import Pipeline
from faceprint.privacy import access
from faceprint.types import Faceprint

GalleryOpt = typer.Option(
    None,
    "--gallery",
    help="Gallery directory (default: $FACEPRINT_HOME/gallery, FACEPRINT_HOME = user data dir), "
    "or postgresql://… DSN, milvus://host:19530, or a Milvus Lite *.db file (docs/deploy.md).",
)
CollectionOpt = typer.Option(DEFAULT_COLLECTION, "--collection", help="Named collection inside the gallery.")
EnrolImagesArg = typer.Argument(None, help="Photos of the subject (files or folders).")
FromFoldersOpt = typer.Option(
    None, "--from-folders", help="Root folder with one subfolder per person (subfolder name = subject)."
)
ProbeImagesArg = typer.Argument(..., help="Probe photos; every face in each is identified.")
NotImageArg = typer.Argument(..., help="Photo of the face that is NOT this subject (largest face used).")
ExportOutArg = typer.Argument(..., help="Export file to write (encrypted with the gallery key).")
ExportCollectionsOpt = typer.Option(None, "--collection", help="Only these collections (repeatable).")
ImportSourceArg = typer.Argument(..., help="A file written by `faceprint gallery export`.")


def _open(path: Path | None, *, create: bool) -> Gallery:
    target = path if path is not None else default_gallery_path()
    if not create and not is_server_location(target) and not (target / "gallery.sqlite3").is_file():
        raise fail(f"no gallery at {target}: enroll someone first (or pass --gallery)")
    return open_gallery(target, create=create)


def _collection_model(store: GalleryProtocol, collection: str) -> str | None:
    """The embedder a collection was made with (its contract), or ``None`` when it does not exist yet."""
    try:
        return store.get_collection(collection).model_id
    except CollectionNotFound:
        return None


# -- enroll -------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def enroll(
    images: list[Path] = EnrolImagesArg,
    subject: str | None = typer.Option(None, "--subject", help="Subject name (created when new)."),
    from_folders: Path | None = FromFoldersOpt,
    gallery: Path | None = GalleryOpt,
    collection: str = CollectionOpt,
    expires_in_days: float | None = typer.Option(None, "--expires-in-days", help="Retention: delete after N days."),
    consent_by: str | None = typer.Option(None, "--consent-by", help="Who gave consent (recorded with the subject)."),
    consent_purpose: str | None = typer.Option(
        None, "--consent-purpose", help="The purposes consented to, comma-separated (e.g. access-control,attendance)."
    ),
    keep_chips: bool = typer.Option(False, "--keep-chips", help="Also keep each aligned face chip, encrypted."),
    json_out: bool = JsonOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="With --from-folders: analyse in N processes; resumable (docs/deploy.md)."
    ),
    use_ray: bool = typer.Option(False, "--ray", help="With --from-folders: analyse in Ray actors instead."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="With --ray: cluster to join ('auto')."),
    model: str | None = ModelOpt,
    liveness_mode: str = LivenessModeOpt,
    liveness_threshold: float | None = LivenessThresholdOpt,
    from_video: Path | None = typer.Option(
        None, "--from-video", help="With --subject: enrol the best frames of the clip's largest face track."
    ),
) -> None:
    """Enrol photos of a subject, or of everyone in a folder tree; rejected photos are listed with reasons
    (with --liveness require, a photo of a face judged an attack is rejected like a blurred one)."""
    policy = liveness_policy(liveness_mode, liveness_threshold)
    if from_video is not None:
        if subject is None or images or from_folders is not None:
            raise fail("--from-video goes with --subject NAME and no photos")
        _enrol_from_video(from_video, subject, gallery, collection, detector, device, model, json_out)
        return
    if (subject is None) == (from_folders is None):
        raise fail("give either --subject NAME IMAGE... or --from-folders ROOT")
    bulk = workers is not None or use_ray
    if bulk and from_folders is None:
        raise fail("--workers and --ray go with --from-folders")
    if (consent_by is None) != (consent_purpose is None):
        raise fail("--consent-by and --consent-purpose go together")
    if subject is not None:
        files = expand_images(images or [])
        if not files:
            raise fail("no images given for --subject")
        jobs = [(subject, files)]
    else:
        assert from_folders is not None
        if not from_folders.is_dir():
            raise fail(f"{from_folders}: not a folder")
        jobs = [(d.name, expand_images([d])) for d in sorted(from_folders.iterdir()) if d.is_dir()]
        jobs = [(name, files) for name, files in jobs if files]
        if not jobs:
            raise fail(f"{from_folders}: no subfolders with images")
    now = datetime.now(UTC)
    purposes = tuple(p.strip() for p in str(consent_purpose).split(",") if p.strip())
    consent = None if consent_by is None else Consent(consent_by, now, purposes)
    expires = None if expires_in_days is None else now + timedelta(days=expires_in_days)
    reports: list[EnrolReport] = []
    with _open(gallery, create=True) as store:
        model = resolve_model(model, _collection_model(store, collection))
        if bulk:
            assert from_folders is not None
            reports = _enrol_bulk(
                store, gallery, from_folders, jobs, collection, consent, expires, keep_chips, detector, device,
                workers or 1, use_ray, ray_address, model, policy,
            )  # fmt: skip
            outcomes: dict[str, list[ImageOutcome]] = {
                n: list(r.outcomes) for (n, _), r in zip(jobs, reports, strict=True)
            }
        else:
            pipeline = make_pipeline(detector, device, model)
            work = [(name, path) for name, files in jobs for path in files]
            outcomes = {name: [] for name, _ in jobs}
            last: dict[str, EnrolReport] = {}
            for name, path in progress(work, "enrolling"):
                report = enrol_images(
                    store,
                    pipeline,
                    name,
                    [path],
                    collection=collection,
                    metadata=None,
                    consent=consent,
                    expires_at=expires,
                    keep_chips=keep_chips,
                    liveness=policy,
                )
                outcomes[name] += report.outcomes
                last[name] = report
            for name, _ in jobs:
                reports.append(EnrolReport(last[name].subject, tuple(outcomes[name])))
    if json_out:
        data = [r.to_dict() for r in reports]
        emit_json(data[0] if subject is not None else data)
    else:
        for r in reports:
            who = r.subject.name if r.subject else next(n for n, _ in jobs if outcomes[n] == list(r.outcomes))
            typer.echo(f"{who}: {len(r.accepted)} photo(s) enrolled, {len(r.rejected)} rejected")
            for o in r.accepted:
                if o.liveness is not None:
                    typer.echo(f"  {o.source}: {describe_liveness(o.liveness)}")
        rejected = [o for r in reports for o in r.rejected]
        if rejected:
            typer.echo(f"rejected {len(rejected)} photo(s):", err=True)
            for o in rejected:
                typer.echo(f"  {o.source}: {'; '.join(o.reasons)}", err=True)
    if not any(r.accepted for r in reports):
        raise typer.Exit(EXIT_BAD_INPUT)


def _enrol_from_video(
    clip: Path,
    subject: str,
    gallery: Path | None,
    collection: str,
    detector: str | None,
    device: str,
    model: str | None,
    json_out: bool,
    *,
    every: int = 3,
    max_frames: int = 5,
) -> None:
    """``faceprint enroll --from-video CLIP --subject NAME``: the best frames (quality gate applied) of the
    clip's largest face track become the subject's templates."""
    from faceprint.video import best_track_faceprints, open_source  # the tracker loads only when used

    with _open(gallery, create=True) as store:
        pipeline = make_pipeline(detector, device, resolve_model(model, _collection_model(store, collection)))
        with open_source(str(clip)) as src:
            prints, track_id = best_track_faceprints(src, pipeline, every=every, max_frames=max_frames)
        if not prints:
            raise fail(f"{clip}: no face track with a frame that passes the quality gate")
        store.ensure_collection(collection, pipeline.model_id, pipeline.dim)
        found = store.find_subject(subject, collection=collection)
        record = found or store.add_subject(subject, collection=collection)
        templates = store.add_templates(record.id, prints, collection=collection)
    result = {
        "subject": subject,
        "subject_id": record.id,
        "video": str(clip),
        "track_id": track_id,
        "accepted": len(templates),
        "qualities": [round(float(fp.quality or 0.0), 3) for fp in prints],
    }
    if json_out:
        emit_json(result)
    else:
        typer.echo(f"{subject}: {len(templates)} frame(s) of track #{track_id} in {clip} enrolled")


def _enrol_bulk(
    store: GalleryProtocol,
    gallery: Path | None,
    root: Path,
    jobs: list[tuple[str, list[Path]]],
    collection: str,
    consent: Consent | None,
    expires: datetime | None,
    keep_chips: bool,
    detector: str | None,
    device: str,
    workers: int,
    use_ray: bool,
    ray_address: str | None,
    model: str,
    liveness: LivenessPolicy | None = None,
) -> list[EnrolReport]:
    """--from-folders with --workers/--ray: parallel analysis, one writer, a checkpoint to resume from."""
    from faceprint.pipeline import PipelineConfig
    from faceprint.scale.bulk import BulkOptions, default_checkpoint, enrol_folders

    target = gallery if gallery is not None else default_gallery_path()
    # Next to an embedded gallery; for a server gallery, in $FACEPRINT_HOME.
    where = default_gallery_path().parent if is_server_location(target) else target
    options = BulkOptions(
        workers=workers,
        use_ray=use_ray,
        ray_address=ray_address,
        collection=collection,
        consent=consent,
        expires_at=expires,
        keep_chips=keep_chips,
        checkpoint=default_checkpoint(where / "bulk-enrol", root, collection),
        liveness=liveness,
    )
    return enrol_folders(store, root, jobs, PipelineConfig(detector=detector, device=device, embedder=model), options)


# -- identify -----------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def identify(
    images: list[Path] = ProbeImagesArg,
    gallery: Path | None = GalleryOpt,
    collection: str = CollectionOpt,
    top_k: int = typer.Option(5, "--top-k", min=1, help="Candidates listed per face."),
    fmr: float | None = typer.Option(None, "--fmr", help="Target false-match rate per comparison (default 1e-3)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Raw cosine-score threshold instead."),
    fpir: float | None = typer.Option(
        None, "--fpir", help="Target false-positive identification rate for this gallery's size instead of --fmr."
    ),
    json_out: bool = JsonOpt,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
    model: str | None = ModelOpt,
    liveness_mode: str = LivenessModeOpt,
    liveness_threshold: float | None = LivenessThresholdOpt,
    purpose: str | None = typer.Option(
        None, "--purpose", help="Search only subjects who consented to this purpose (e.g. attendance)."
    ),
) -> None:
    """Who is in the photo? Each face gets a match (or none: nobody known) and ranked candidates. With
    --liveness require, a face judged an attack is not searched: its match is null, with the reason."""
    check_one_rule(fmr=fmr, fpir=fpir, threshold=threshold)  # before any photo is read
    policy = liveness_policy(liveness_mode, liveness_threshold)
    files = expand_images(images)
    results = []
    readable = ReadableImages(files, "identifying")
    with _open(gallery, create=False) as store:
        existing = _collection_model(store, collection)
        if existing is None:
            raise fail(f"the gallery has no collection {collection!r}: enroll someone into it first")
        pipeline = make_pipeline(detector, device, resolve_model(model, existing))
        for path, img in readable:
            prints = pipeline.embed(img)
            checks = _liveness_of(pipeline, img, prints, policy)
            searched = [fp for fp, r in zip(prints, checks, strict=True) if not policy.refuses(r)]
            answers = iter(
                store.identify(
                    searched,
                    collection=collection,
                    top_k=top_k,
                    fmr=fmr,
                    threshold=threshold,
                    fpir=fpir,
                    purpose=purpose,
                )
                if searched
                else []
            )
            faces, lines = [], []
            for i, (fp, check) in enumerate(zip(prints, checks, strict=True)):
                live = "" if check is None else f"; {describe_liveness(check)}"
                if check is not None and policy.refuses(check):
                    face = refused_match(None if fp.detection is None else fp.detection.box, check)
                    lines.append(f"  #{i} {_box_text(face)}: not searched ({face['refused']})")
                else:
                    ans = next(answers)
                    face = ans.to_dict()
                    cands = ", ".join(f"{c['subject']} {c['score']:.3f}" for c in face["candidates"][:3]) or "-"
                    who = face["match"] if face["match"] is not None else "unknown"
                    lines.append(
                        f"  #{i} {_box_text(face)}: {who} (threshold {ans.threshold:.3f}, {ans.rule.describe()}; "
                        f"candidates: {cands}{live})"
                    )
                if check is not None:
                    face["liveness"] = check.to_dict()
                faces.append(face)
            results.append({"image": str(path), "faces": faces})
            if not json_out:
                typer.echo(f"{path}: {len(faces)} face(s)")
                for line in lines:
                    typer.echo(line)
    if json_out:
        emit_json(results[0] if len(results) == 1 and len(files) == 1 else results)
    if readable.failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _liveness_of(
    pipeline: Pipeline, img: Image, prints: list[Faceprint], policy: LivenessPolicy
) -> list[LivenessResult | None]:
    """Each face's liveness under ``policy`` (``None`` for every face when it is off)."""
    if not policy.checks or not prints:
        return [None] * len(prints)
    detections = [fp.detection for fp in prints if fp.detection is not None]
    return list(pipeline.liveness(img, detections, threshold=policy.threshold, apcer=policy.apcer))


def _box_text(face: dict[str, object]) -> str:
    x1, y1, x2, y2 = face["box"] or (0, 0, 0, 0)  # type: ignore[misc]
    return f"box=({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})"


# -- subjects -----------------------------------------------------------------------------------------------
subjects_app = typer.Typer(help="List, show, delete and correct subjects; purge expired ones.", no_args_is_help=True)
app.add_typer(subjects_app, name="subjects")


@subjects_app.callback()
def subjects_main(ctx: typer.Context, gallery: Path | None = GalleryOpt, collection: str = CollectionOpt) -> None:
    ctx.obj = (gallery, collection)


@subjects_app.command("list")
@handle_errors
def subjects_list(
    ctx: typer.Context,
    limit: int = typer.Option(100, "--limit", min=1, help="Subjects per page."),
    cursor: str | None = typer.Option(None, "--cursor", help="Continue after this cursor (printed with a page)."),
    json_out: bool = JsonOpt,
) -> None:
    """Subjects of the collection, by name, one page at a time."""
    gallery, collection = ctx.obj
    with _open(gallery, create=False) as store:
        page = store.list_subjects(collection=collection, limit=limit, cursor=cursor)
    if json_out:
        emit_json({"total": page.total, "next_cursor": page.next_cursor, "subjects": [s.to_dict() for s in page.items]})
        return
    for s in page.items:
        expiry = f"  expires {s.expires_at:%Y-%m-%d}" if s.expires_at else ""
        typer.echo(f"{s.name}\t{s.template_count} template(s)\t{s.id}{expiry}")
    typer.echo(f"{len(page.items)} of {page.total} subject(s)", err=True)
    if page.next_cursor:
        typer.echo(f"more: --cursor '{page.next_cursor}'", err=True)


@subjects_app.command("show")
@handle_errors
def subjects_show(ctx: typer.Context, subject: str = typer.Argument(..., help="Name or id.")) -> None:
    """One subject with its templates (JSON)."""
    gallery, collection = ctx.obj
    with _open(gallery, create=False) as store:
        s = store.get_subject(subject, collection=collection)
        templates = store.list_templates(s.id, collection=collection)
    emit_json({**s.to_dict(), "templates": [t.to_dict() for t in templates]})


@subjects_app.command("delete")
@handle_errors
def subjects_delete(
    ctx: typer.Context,
    subject: str = typer.Argument(..., help="Name or id."),
    template: int | None = typer.Option(None, "--template", help="Delete only this template of the subject."),
) -> None:
    """Delete a subject with all its templates (or one template)."""
    gallery, collection = ctx.obj
    with _open(gallery, create=False) as store:
        s = store.get_subject(subject, collection=collection)
        if template is not None:
            if template not in {t.id for t in store.list_templates(s.id, collection=collection)}:
                raise fail(f"subject {s.name!r} has no template {template}")
            erasure = replace(store.delete_template(template), subject=s.name, collection=collection)
            (receipt,) = issue_receipts(store, [erasure], "face", "template.delete")
            typer.echo(f"deleted template {template} of {s.name}; receipt {receipt['receipt']['id']}")
            return
        erasure = store.delete_subject(s.id, collection=collection)
        (receipt,) = issue_receipts(store, [erasure], "subject", "subject.delete")
    typer.echo(f"deleted {s.name} ({s.id}) and {erasure.templates} template(s); receipt {receipt['receipt']['id']}")


@subjects_app.command("purge-expired")
@handle_errors
def subjects_purge(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """Delete every subject (all collections) whose retention period has ended, each with a signed receipt
    (`faceprint serve` does this on a schedule: FACEPRINT_PURGE_INTERVAL_S)."""
    gallery, _ = ctx.obj
    with _open(gallery, create=False) as store:
        erased = store.erase_expired()
        receipts = issue_receipts(store, [e for _, e in erased], "retention", "subject.purge")
    if json_out:
        emit_json([{**s.to_dict(), "receipt": r["receipt"]["id"]} for (s, _), r in zip(erased, receipts, strict=True)])
        return
    for (s, _), r in zip(erased, receipts, strict=True):
        typer.echo(f"purged {s.name} ({s.id}, {s.collection}); receipt {r['receipt']['id']}")
    typer.echo(f"{len(erased)} expired subject(s) purged", err=True)


@subjects_app.command("withdraw-consent")
@handle_errors
def subjects_withdraw_consent(
    ctx: typer.Context,
    subject: str = typer.Argument(..., help="Name or id."),
    delete_faces: bool = typer.Option(False, "--delete-faces", help="Also delete the enrolled faces (receipts)."),
) -> None:
    """Record that the subject withdrew consent: matched for no purpose from now on."""
    gallery, collection = ctx.obj
    with _open(gallery, create=False) as store:
        updated, erased = store.withdraw_consent(subject, collection=collection, delete_templates=delete_faces)
        receipts = issue_receipts(store, erased, "consent-withdrawal", "template.delete")
    ids = ", ".join(r["receipt"]["id"] for r in receipts)
    done = f"consent of {updated.name} withdrawn; {len(erased)} face(s) deleted"
    typer.echo(done + (f"; receipts {ids}" if ids else ""))


@subjects_app.command("export-personal-data")
@handle_errors
def subjects_export_personal_data(ctx: typer.Context, subject: str = typer.Argument(..., help="Name or id.")) -> None:
    """Everything stored about the subject, as JSON (a subject access request): record, consent, faces'
    provenance, audit entries and erasure receipts naming them — never vectors or chips."""
    gallery, collection = ctx.obj
    with _open(gallery, create=False) as store:
        s = store.get_subject(subject, collection=collection)
        audit, receipts = personal_records(s.id)
        emit_json(access.personal_data(store, s.id, collection=collection, audit=audit, erasures=receipts))


@subjects_app.command("not")
@handle_errors
def subjects_not(
    ctx: typer.Context,
    subject: str = typer.Argument(..., help="The subject the face was wrongly matched to (name or id)."),
    image: Path = NotImageArg,
    detector: str | None = DetectorOpt,
    device: str = DeviceOpt,
) -> None:
    """Correct a false match: later searches will not match this face (or faces like it) to the subject."""
    gallery, collection = ctx.obj
    img = load_image(image)
    with _open(gallery, create=False) as store:
        pipeline = make_pipeline(detector, device, _collection_model(store, collection))
        face, reason = pick_face(pipeline.detect(img))
        if face is None:
            raise fail(f"{image}: {reason}")
        (fp,) = pipeline.embed(img, [face])
        s = store.get_subject(subject, collection=collection)
        store.add_negative(fp, s.id, collection=collection)
    typer.echo(f"recorded: the face in {image} is not {s.name}")


# -- gallery-wide -------------------------------------------------------------------------------------------
gallery_app = typer.Typer(
    help="Gallery-wide operations: stats, export, import, protection policy, scrub.", no_args_is_help=True
)
app.add_typer(gallery_app, name="gallery")


@gallery_app.callback()
def gallery_main(ctx: typer.Context, gallery: Path | None = GalleryOpt) -> None:
    ctx.obj = gallery


@gallery_app.command("stats")
@handle_errors
def gallery_stats(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """Subjects, templates, index kind and disk use per collection."""
    with _open(ctx.obj, create=False) as store:
        stats = [store.stats(c.name).to_dict() for c in store.list_collections()]
    if json_out:
        emit_json(stats)
        return
    for s in stats:
        typer.echo(
            f"{s['collection']}: {s['subjects']} subject(s), {s['templates']} template(s), {s['negatives']} "
            f"correction(s); {s['model_id']} {s['dim']}-d; {s['index']} search; {s['disk_bytes'] / 1e6:.1f} MB on disk"
            f"; expiring: {s['expiring_7d']} in 7 days, {s['expiring_30d']} in 30 days"
        )


@gallery_app.command("scrub")
@handle_errors
def gallery_scrub(ctx: typer.Context) -> None:
    """Rewrite the gallery's storage so the bytes of deleted subjects are gone from its files, as far as the
    backend allows (docs/privacy.md). Slow, and PostgreSQL locks each table while it is rewritten."""
    with _open(ctx.obj, create=False) as store:
        typer.echo(store.scrub())


@gallery_app.command("rotate-key")
@handle_errors
def gallery_rotate_key(
    ctx: typer.Context,
    new_key_file: Path = typer.Option(
        ..., "--new-key-file", help="The new 256-bit key: 64 hex digits or base64 (e.g. `openssl rand -hex 32`)."
    ),
    batch: int = typer.Option(256, "--batch", min=1, help="Values re-encrypted per transaction."),
) -> None:
    """Re-encrypt every template, chip and negative under a new key while the gallery stays in use; rerun
    after an interruption to finish. The old key (FACEPRINT_KEY / FACEPRINT_KEY_FILE) opens it until then."""
    try:
        text = new_key_file.read_bytes()
    except OSError as exc:
        raise fail(f"{new_key_file}: cannot read the new key ({exc.strerror})") from None
    new_key = parse_key(text, str(new_key_file))
    with _open(ctx.obj, create=False) as store:
        report = store.rotate_key(new_key, batch=batch)
    typer.echo(
        f"re-encrypted {report.reencrypted} value(s) under key {report.new_key_id} (was {report.old_key_id}); "
        f"the old key no longer opens the gallery: set FACEPRINT_KEY or FACEPRINT_KEY_FILE to {new_key_file}"
    )


@gallery_app.command("policy")
@handle_errors
def gallery_policy(
    ctx: typer.Context,
    collection: str = CollectionOpt,
    retention: str | None = typer.Option(
        None, "--retention", help="Default retention of new subjects: 365d, 12w, 36h … or 'none'."
    ),
    consent_required: bool | None = typer.Option(
        None, "--consent-required/--consent-optional", help="Match only subjects with an active consent."
    ),
    purposes: str | None = typer.Option(None, "--purposes", help="The purposes consents may name, comma-separated."),
    json_out: bool = JsonOpt,
) -> None:
    """Show the collection's protection policy, or change it (docs/privacy.md)."""
    with _open(ctx.obj, create=False) as store:
        changes: dict[str, Any] = {}
        if retention is not None:
            changes["retention"] = None if retention.strip().lower() == "none" else parse_duration(retention)
        if consent_required is not None:
            changes["consent_required"] = consent_required
        if purposes is not None:
            changes["purposes"] = [p.strip() for p in purposes.split(",") if p.strip()]
        policy = store.set_collection_policy(collection, **changes) if changes else store.collection_policy(collection)
    if json_out:
        emit_json({"collection": collection, **policy.to_dict()})
        return
    days = "none" if policy.retention is None else f"{policy.retention.total_seconds() / 86400:g} days"
    typer.echo(
        f"{collection}: retention {days}; consent {'required' if policy.consent_required else 'optional'}; "
        f"purposes {', '.join(policy.purposes)}"
    )


@gallery_app.command("export")
@handle_errors
def gallery_export(
    ctx: typer.Context,
    out: Path = ExportOutArg,
    collection: list[str] = ExportCollectionsOpt,
) -> None:
    """Write the gallery (subjects, consent, templates, corrections) to one encrypted file."""
    with _open(ctx.obj, create=False) as store:
        report = export_gallery(store, out, store.cipher, collections=collection or None)
    typer.echo(f"exported {report.subjects} subject(s), {report.templates} template(s) → {out}")


@gallery_app.command("import")
@handle_errors
def gallery_import(
    ctx: typer.Context,
    source: Path = ImportSourceArg,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip subjects that already exist."),
) -> None:
    """Load an export into this gallery (the export's key must be available as FACEPRINT_KEY or key file)."""
    if not source.is_file():
        raise fail(f"{source}: file not found")
    key, origin = resolve_key()
    with _open(ctx.obj, create=True) as store:
        report = import_gallery(store, source, TemplateCipher(key, origin), skip_existing=skip_existing)
    typer.echo(
        f"imported {report.subjects} subject(s), {report.templates} template(s); skipped {report.skipped_subjects}"
    )


# -- migrate ------------------------------------------------------------------------------------------------
_MIGRATE_HELP = (
    "Re-embed collections with another model from the face chips kept at enrolment (--keep-chips); no photos "
    "needed. Every check runs before anything is written; each collection then switches to the new model in one "
    "transaction, and searches use the old model until that moment. An interrupted run changes nothing visible: "
    "run the same command again and it resumes. Corrections (`subjects not`) are deleted (docs/gallery.md)."
)


@app.command(help=_MIGRATE_HELP)
@handle_errors
def migrate(
    to: str = typer.Option(..., "--to", help="Embedder model id to move to (`faceprint models list`)."),
    gallery: Path | None = GalleryOpt,
    collection: list[str] = typer.Option(
        None, "--collection", help="Only this collection (repeatable; default: every collection of the gallery)."
    ),
    batch: int = typer.Option(64, "--batch", min=1, help="Chips embedded (and committed) per step."),
    drop_missing: bool = typer.Option(
        False,
        "--drop-missing",
        help="Delete templates that have no stored chip instead of refusing (their subjects must be re-enrolled).",
    ),
    json_out: bool = JsonOpt,
    device: str = DeviceOpt,
) -> None:
    """Re-embed collections with another model from their kept chips (help: ``_MIGRATE_HELP``)."""
    from faceprint.factory import load_embedder
    from faceprint.gallery.migrate import plan_migration, run_migration
    from faceprint.models.registry import ModelRegistry

    registry = ModelRegistry()
    with _open(gallery, create=False) as store:
        names = collection or [c.name for c in store.list_collections()]
        if not names:
            raise fail("the gallery has no collections: nothing to migrate")
        # Every collection is checked (chips, model, geometry) before any is touched.
        plans = [plan_migration(store, name, to, registry=registry, drop_missing=drop_missing) for name in names]
        for plan in plans:
            for note in plan.notes:
                typer.echo(f"note: {plan.collection}: {note}", err=True)
        embedder = None
        reports = []
        for plan in plans:
            if not plan.noop and embedder is None:
                embedder = load_embedder(registry, to, device=device)
            with progress_bar(f"migrating {plan.collection}") as advance:
                report = run_migration(
                    store,
                    plan,
                    registry=registry,
                    embedder=embedder,
                    batch=batch,
                    drop_missing=drop_missing,
                    on_progress=advance,
                )
            reports.append(report)
    if json_out:
        emit_json([r.to_dict() for r in reports])
        return
    for r in reports:
        if r.noop:
            typer.echo(f"{r.collection}: already uses {r.target_model}; nothing to do")
            continue
        extra = f"; {r.resumed} were re-embedded by an earlier interrupted run" if r.resumed else ""
        typer.echo(
            f"{r.collection}: {r.templates} template(s) of {r.subjects} subject(s) re-embedded with {r.target_model} "
            f"(was {r.source_model}) in {r.seconds:.1f} s{extra}"
        )
        if r.dropped_templates:
            typer.echo(f"  deleted {r.dropped_templates} template(s) without a chip (--drop-missing)")
        if r.dropped_negatives:
            typer.echo(f"  deleted {r.dropped_negatives} correction(s) recorded with {r.source_model}")
