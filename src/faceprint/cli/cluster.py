"""``faceprint cluster PATH...``: group the faces of a photo library into people; and feedback on a saved
clustering: ``faceprint cluster merge|split|move|not-this-person|name DIR ...``.

The output folder holds ``clusters.json`` (faces by photo sha256 + box, their cluster, the feedback),
``faces.npz`` (every face's embedding: a rerun with another ``--fmr`` detects nothing again), ``faces/``
(JPEG thumbnails) and ``index.html`` (a contact sheet: one row per cluster, largest first).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import typer
from PIL import Image as PILImage

from faceprint.cli import app
from faceprint.cli.common import EXIT_BAD_INPUT, IMAGE_SUFFIXES, emit_json, expand_images, fail, handle_errors, progress
from faceprint.cli.core import JsonOpt, ModelOpt, make_pipeline
from faceprint.cli.gallery import CollectionOpt, GalleryOpt, _open
from faceprint.cluster import Clustering, FaceSet, cluster, faces_from_images, feedback
from faceprint.errors import InvalidArgument, InvalidImage
from faceprint.image import load_image
from faceprint.matching import check_one_rule

CLUSTERS, CACHE, THUMBS, INDEX = "clusters.json", "faces.npz", "faces", "index.html"
FEEDBACK = ("merge", "split", "move", "not-this-person", "name")
THUMB_SIZE = 96
#: Outliers shown on the contact sheet (all are listed in clusters.json).
MAX_OUTLIER_THUMBS = 300

USAGE = {
    "merge": "faceprint cluster merge DIR A B",
    "split": "faceprint cluster split DIR CLUSTER FACE...",
    "move": "faceprint cluster move DIR FACE CLUSTER",
    "not-this-person": "faceprint cluster not-this-person DIR FACE CLUSTER",
    "name": "faceprint cluster name DIR CLUSTER SUBJECT [--gallery G] [--collection C]",
}


@app.command(
    "cluster",
    help="Group the faces in photos (files or folders) into people; writes OUT/clusters.json and "
    "OUT/index.html. Feedback on a saved clustering: `cluster merge DIR A B`, `cluster split DIR CLUSTER FACE...`, "
    "`cluster move DIR FACE CLUSTER`, `cluster not-this-person DIR FACE CLUSTER`, "
    "`cluster name DIR CLUSTER SUBJECT`. FACE: a face id from clusters.json (a unique prefix is enough) or its "
    "thumbnail's file name.",
)
@handle_errors
def cluster_command(
    args: list[str] = typer.Argument(
        ..., metavar="PATH... | VERB DIR ARG...", help="Photos/folders, or a feedback verb, DIR and its arguments."
    ),
    out: Path = typer.Option(Path("clusters"), "--out", help="Output folder (created)."),
    json_out: bool = JsonOpt,
    min_faces: int = typer.Option(2, "--min-faces", min=1, help="Smallest cluster; smaller groups are outliers."),
    fmr: float | None = typer.Option(None, "--fmr", help="Target false-match rate of the threshold (default 1e-3)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Explicit cosine-score threshold."),
    model: str | None = ModelOpt,
    gallery: Path | None = GalleryOpt,
    collection: str = CollectionOpt,
) -> None:
    if args[0] in FEEDBACK:
        _feedback(args[0], args[1:], json_out, gallery, collection)
        return
    check_one_rule(fmr=fmr, fpir=None, threshold=threshold)
    photos = expand_images([Path(a) for a in args])
    missing = [p for p in photos if not p.exists()]
    if missing:
        raise fail(f"{missing[0]}: no such file or folder")
    if not photos:
        raise fail(f"no photos in {', '.join(args)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    pipeline = make_pipeline(None, "cpu", model)
    out.mkdir(parents=True, exist_ok=True)
    found = faces_from_images(photos, pipeline, cache=out / CACHE, progress=lambda items: progress(items, "photos"))
    skipped = found.skipped
    if not found.faces:
        reasons = "; ".join(f"{Path(k).name}: {v}" for k, v in list(skipped.items())[:5])
        raise fail(f"no faces found in {found.photos} photo(s): nothing to cluster ({reasons})")
    if len(found.faces) == 1:
        raise fail(f"only one face found in {found.photos} photo(s): clustering needs at least two faces")
    constraints = feedback.load_constraints(out / CLUSTERS)
    result = cluster(list(found.faces), model_id=found.model_id, fmr=fmr, threshold=threshold, min_faces=min_faces,
                     constraints=constraints)  # fmt: skip
    _write(result, out, found, fmr=fmr, skipped=skipped)
    _report(result, out, skipped, json_out)


def _write(clustering: Clustering, out: Path, found: FaceSet | None, *, fmr: float | None,
           skipped: dict[str, str]) -> None:  # fmt: skip
    feedback.save(clustering, out / CLUSTERS, fmr=fmr, skipped=skipped)
    thumbs = _thumbnails(clustering, out / THUMBS)
    (out / INDEX).write_text(contact_sheet(clustering, thumbs), encoding="utf-8")


def thumb_name(face_id: str) -> str:
    image, _, box = face_id.partition("@")
    return f"{image[:16]}_{box.replace(',', '-')}.jpg" if box else f"{image[:16]}.jpg"


def _thumbnails(clustering: Clustering, folder: Path) -> dict[str, str]:
    """Small JPEG crops (box + 25% margin) of the faces shown on the sheet; made once per face."""
    folder.mkdir(exist_ok=True)
    shown = [i for c in clustering.clusters for i in c.members] + clustering.outliers[:MAX_OUTLIER_THUMBS]
    names: dict[str, str] = {}
    by_photo: dict[str, list[int]] = {}
    for i in shown:
        face = clustering.faces[i]
        names[face.id] = f"{THUMBS}/{thumb_name(face.id)}"
        if face.path and face.box and not (folder / thumb_name(face.id)).is_file():
            by_photo.setdefault(face.path, []).append(i)
    for path, idx in by_photo.items():
        try:
            pixels = load_image(Path(path)).pixels
        except (InvalidImage, OSError):
            continue  # the photo changed or went away since it was embedded: no thumbnail
        h, w = pixels.shape[:2]
        for i in idx:
            x1, y1, x2, y2 = clustering.faces[i].box  # type: ignore[misc]
            m = 0.25 * max(x2 - x1, y2 - y1)
            box = (int(max(0, x1 - m)), int(max(0, y1 - m)), int(min(w, x2 + m)), int(min(h, y2 + m)))
            crop = PILImage.fromarray(np.ascontiguousarray(pixels[box[1] : box[3], box[0] : box[2]]))
            crop.thumbnail((THUMB_SIZE, THUMB_SIZE))
            crop.save(folder / thumb_name(clustering.faces[i].id), "JPEG", quality=85)
    return names


def contact_sheet(clustering: Clustering, thumbs: dict[str, str]) -> str:
    """One row of thumbnails per cluster, largest first, with its size and cohesion; then the outliers."""

    def img(i: int) -> str:
        face = clustering.faces[i]
        title = html.escape(f"{face.id}\n{face.path or ''}")
        src = html.escape(thumbs.get(face.id, ""))
        return f'<img src="{src}" title="{title}" width="{THUMB_SIZE}" loading="lazy" alt="">'

    rows = [
        f"<section><h2>Cluster {c.id} · {c.size} faces · cohesion {c.cohesion:.3f}</h2>"
        f'<div class="faces">{"".join(img(i) for i in c.members)}</div></section>'
        for c in clustering.clusters
    ]
    outliers = clustering.outliers
    if outliers:
        rows.append(
            f"<section><h2>Unclustered · {len(outliers)} faces</h2>"
            f'<div class="faces">{"".join(img(i) for i in outliers[:MAX_OUTLIER_THUMBS])}</div></section>'
        )
    summary = html.escape(
        f"{len(clustering.faces)} faces · {len(clustering.clusters)} clusters · {len(outliers)} unclustered · "
        f"model {clustering.model_id} · threshold {clustering.threshold:.3f} ({clustering.rule}) · "
        f"{clustering.method} linkage"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>faceprint clusters</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:1.5rem}h2{font-size:1rem;margin:1rem 0 .3rem}"
        ".faces{display:flex;flex-wrap:wrap;gap:4px}.faces img{border-radius:4px;background:#eee}</style>"
        f"</head><body><h1>Face clusters</h1><p>{summary}</p>{''.join(rows)}</body></html>\n"
    )


def _report(clustering: Clustering, out: Path, skipped: dict[str, str], json_out: bool) -> None:
    if json_out:
        data = clustering.to_dict()
        data["out"] = str(out)
        data["skipped"] = [{"photo": k, "reason": v} for k, v in skipped.items()]
        emit_json(data)
        return
    typer.echo(
        f"{len(clustering.faces)} faces → {len(clustering.clusters)} clusters, {len(clustering.outliers)} "
        f"unclustered (threshold {clustering.threshold:.3f}, {clustering.rule}, {clustering.model_id})"
    )
    for c in clustering.clusters[:20]:
        typer.echo(f"  cluster {c.id}: {c.size} faces, cohesion {c.cohesion:.3f}")
    if len(clustering.clusters) > 20:
        typer.echo(f"  … {len(clustering.clusters) - 20} more")
    for photo, reason in skipped.items():
        typer.echo(f"skipped {photo}: {reason}")
    typer.echo(f"wrote {out / CLUSTERS} and {out / INDEX}")


def _resolve_face(clustering: Clustering, ref: str) -> str:
    """A face id from a full id, a unique prefix, or a thumbnail file name."""
    ids = [f.id for f in clustering.faces]
    if ref in ids:
        return ref
    by_thumb = {thumb_name(i): i for i in ids}
    if Path(ref).name in by_thumb:
        return by_thumb[Path(ref).name]
    hits = [i for i in ids if i.startswith(ref)]
    if len(hits) == 1:
        return hits[0]
    raise InvalidArgument(f"face {ref!r} " + ("matches several faces" if hits else "is not in this clustering"))


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"{what} must be a cluster number, got {value!r}") from None


def _feedback(verb: str, rest: list[str], json_out: bool, gallery: Path | None, collection: str) -> None:
    need = {"merge": 3, "split": 3, "move": 3, "not-this-person": 3, "name": 3}[verb]
    if len(rest) < need or (verb != "split" and len(rest) != need):
        raise fail(f"usage: {USAGE[verb]}")
    folder = Path(rest[0])
    if not (folder / CLUSTERS).is_file() or not (folder / CACHE).is_file():
        raise fail(f"{folder}: no saved clustering ({CLUSTERS} and {CACHE}); run `faceprint cluster PATH --out DIR`")
    found = FaceSet.load(folder / CACHE)
    current = feedback.load(folder / CLUSTERS, found.faces)
    if verb == "name":
        store = _open(gallery, create=True)
        pipeline = make_pipeline(None, "cpu", current.model_id)
        report = feedback.name(current, _int(rest[1], "CLUSTER"), rest[2], store, pipeline, collection=collection)
        if json_out:
            emit_json(report.to_dict())
        else:
            typer.echo(f"{rest[2]}: {len(report.accepted)} photo(s) enrolled, {len(report.rejected)} rejected")
            for o in report.rejected:
                typer.echo(f"  rejected {o.source}: {'; '.join(o.reasons)}")
        if not report.accepted:
            raise typer.Exit(EXIT_BAD_INPUT)
        return
    if verb == "merge":
        result = feedback.merge(current, _int(rest[1], "A"), _int(rest[2], "B"))
    elif verb == "split":
        cid = _int(rest[1], "CLUSTER")
        result = feedback.split(current, cid, [_resolve_face(current, f) for f in rest[2:]])
    elif verb == "move":
        result = feedback.move(current, _resolve_face(current, rest[1]), _int(rest[2], "CLUSTER"))
    else:
        result = feedback.not_this_person(current, _resolve_face(current, rest[1]), _int(rest[2], "CLUSTER"))
    saved = _saved_fmr(folder)
    _write(result, folder, found, fmr=saved, skipped=dict(found.skipped))
    _report(result, folder, dict(found.skipped), json_out)


def _saved_fmr(folder: Path) -> float | None:
    value = json.loads((folder / CLUSTERS).read_text()).get("fmr")
    return None if value is None else float(value)
