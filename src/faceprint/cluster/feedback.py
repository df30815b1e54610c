"""Feedback that sticks: corrections stored as must-link / cannot-link constraints between stable face ids
(photo sha256 + box), applied by every later run; a saved clustering (JSON) and naming a cluster (enrolment).

Each correction returns a new :class:`Clustering`, re-clustered from the same faces under the same threshold
with the constraints added, so the correction and everything it implies show at once:

- ``merge(a, b)``: must-link between the two clusters' representatives → the clusters they fall in are one;
- ``split(c, faces)``: the faces are one person (must-links), and not the rest of ``c`` (cannot-links);
- ``move(face, c)``: must-link to ``c``'s representative, cannot-link to the other faces of its cluster;
- ``not_this_person(face, c)``: cannot-links between the face and every face of ``c``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from faceprint.cluster.core import Clustering, Constraints, Face, _finish, cluster
from faceprint.errors import InvalidArgument
from faceprint.gallery.base import DEFAULT_COLLECTION, Gallery
from faceprint.gallery.enrol import DOMINANT_FACE_RATIO, EnrolReport, FacePipeline, ImageOutcome, enrol_images
from faceprint.image import Image, ImageSource
from faceprint.matching import ThresholdRule, normalise

FORMAT_VERSION = 1


def recluster(clustering: Clustering, constraints: Constraints) -> Clustering:
    """The same faces, threshold, method and ``min_faces`` under ``constraints``."""
    again = cluster(
        clustering.faces,
        threshold=clustering.threshold,
        min_faces=clustering.min_faces,
        constraints=constraints,
        method=clustering.method,
        model_id=clustering.model_id,
    )
    return replace(again, rule=clustering.rule)


def _members(clustering: Clustering, cluster_id: int) -> list[str]:
    return [clustering.faces[i].id for i in clustering.cluster(cluster_id).members]


def _face(clustering: Clustering, face: str) -> str:
    clustering.index_of(face)  # InvalidArgument when unknown
    return face


def merge(clustering: Clustering, a: int, b: int) -> Clustering:
    """Clusters ``a`` and ``b`` are one person."""
    if a == b:
        raise InvalidArgument(f"cannot merge cluster {a} with itself")
    ra, rb = clustering.cluster(a), clustering.cluster(b)
    link = (clustering.faces[ra.representative].id, clustering.faces[rb.representative].id)
    return recluster(clustering, clustering.constraints.add(must=[link]))


def split(clustering: Clustering, cluster_id: int, faces: Sequence[str]) -> Clustering:
    """``faces`` (of cluster ``cluster_id``) are one person, and not the rest of the cluster."""
    members = _members(clustering, cluster_id)
    chosen = list(dict.fromkeys(faces))
    outside = [f for f in chosen if f not in members]
    if outside:
        raise InvalidArgument(f"faces not in cluster {cluster_id}: {', '.join(outside[:3])}")
    rest = [f for f in members if f not in set(chosen)]
    if not chosen or not rest:
        raise InvalidArgument(f"a split names some but not all faces of cluster {cluster_id}")
    must = [(chosen[0], f) for f in chosen[1:]]
    cannot = [(chosen[0], f) for f in rest]
    return recluster(clustering, clustering.constraints.add(must=must, cannot=cannot))


def move(clustering: Clustering, face: str, cluster_id: int) -> Clustering:
    """``face`` belongs to cluster ``cluster_id`` (and not to the cluster it is in now)."""
    target = clustering.cluster(cluster_id)
    i = clustering.index_of(_face(clustering, face))
    current = int(clustering.labels[i])
    if current == cluster_id:
        return clustering
    cannot = [(face, f) for f in _members(clustering, current) if f != face] if current else []
    must = [(face, clustering.faces[target.representative].id)]
    return recluster(clustering, clustering.constraints.add(must=must, cannot=cannot))


def not_this_person(clustering: Clustering, face: str, cluster_id: int) -> Clustering:
    """``face`` is not the person of cluster ``cluster_id``."""
    _face(clustering, face)
    cannot = [(face, f) for f in _members(clustering, cluster_id) if f != face]
    if not cannot:
        raise InvalidArgument(f"face {face} is the only face of cluster {cluster_id}")
    return recluster(clustering, clustering.constraints.add(cannot=cannot))


def name(
    clustering: Clustering,
    cluster_id: int,
    subject: str,
    gallery: Gallery,
    pipeline: FacePipeline,
    *,
    collection: str = DEFAULT_COLLECTION,
    photos: Mapping[str, ImageSource | Image] | None = None,
) -> EnrolReport:
    """Enrol the photos of cluster ``cluster_id`` as ``subject`` through :func:`enrol_images` (its quality
    gate and its one-face-per-photo rule apply). A photo where another face is the dominant one is rejected
    here, before enrolment would pick that other person's face. ``photos`` maps a face's ``path`` to what
    enrolment reads instead of the file (the HTTP service passes decoded-image stand-ins it keeps no pixels
    of, with a pipeline that replays the detections and faceprints made when clustering)."""
    faces = [clustering.faces[i] for i in clustering.cluster(cluster_id).members]
    if not any(f.path for f in faces):
        raise InvalidArgument(f"cluster {cluster_id} has no faces with a photo path to enrol from")
    if pipeline.model_id != clustering.model_id:
        raise InvalidArgument(
            f"the clustering was made with {clustering.model_id}, the pipeline embeds with {pipeline.model_id}"
        )
    by_image: dict[str, list[Face]] = {}
    for f in clustering.faces:
        by_image.setdefault(f.image, []).append(f)
    paths: list[str] = []
    refused: list[ImageOutcome] = []
    for f in faces:
        if not f.path or f.path in paths:
            continue
        others = [o for o in by_image[f.image] if o.id != f.id]
        if others and _area(f) < DOMINANT_FACE_RATIO * max(_area(o) for o in others):
            reason = f"{len(others) + 1} faces in the photo and this person's is not the dominant one"
            refused.append(ImageOutcome(f.path, False, (reason,), faces=len(others) + 1))
        else:
            paths.append(f.path)
    sources: list[ImageSource | Image] = [photos[p] for p in paths] if photos is not None else list(paths)
    report = enrol_images(gallery, pipeline, subject, sources, collection=collection) if sources else None
    if report is None:
        return EnrolReport(None, tuple(refused))
    return EnrolReport(report.subject, report.outcomes + tuple(refused))


def _area(face: Face) -> float:
    if face.box is None:
        return 0.0
    x1, y1, x2, y2 = face.box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


# -- saved clusterings -------------------------------------------------------------------------------------


def to_json(clustering: Clustering, *, fmr: float | None = None, skipped: dict[str, str] | None = None) -> dict:
    data = clustering.to_dict()
    data["version"] = FORMAT_VERSION
    data["fmr"] = fmr
    labels = clustering.labels.tolist()
    data["face_records"] = [{**f.to_dict(), "cluster": int(c)} for f, c in zip(clustering.faces, labels, strict=True)]
    data["skipped"] = [{"photo": k, "reason": v} for k, v in (skipped or {}).items()]
    return data


def save(clustering: Clustering, path: Path, **extra: object) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(to_json(clustering, **extra), ensure_ascii=False, indent=1))  # type: ignore[arg-type]
    tmp.replace(path)


def load_constraints(path: Path) -> Constraints:
    """The feedback stored in a saved clustering (empty when the file does not exist)."""
    if not Path(path).is_file():
        return Constraints()
    return Constraints.from_dict(_read(path).get("constraints", {}))


def _read(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path}: not a saved clustering ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise InvalidArgument(f"{path}: not a saved clustering (format version {FORMAT_VERSION})")
    return data


def load(path: Path, faces: Sequence[Face]) -> Clustering:
    """A saved clustering, its faces' vectors taken from ``faces`` (by id): exactly as saved, not re-run."""
    data = _read(path)
    by_id = {f.id: f for f in faces}
    records = data["face_records"]
    missing = [r["id"] for r in records if r["id"] not in by_id]
    if missing:
        raise InvalidArgument(f"{path}: {len(missing)} faces have no embedding in the cache (first: {missing[0]})")
    chosen = [by_id[r["id"]] for r in records]
    labels = np.array([int(r["cluster"]) for r in records], dtype=np.int64)
    vectors = normalise(np.vstack([f.vector for f in chosen])) if chosen else np.zeros((0, 0), np.float32)
    raw = np.where(labels > 0, labels, -1 - np.arange(len(labels)))
    rule = ThresholdRule(float(data["threshold"]), None)
    result = _finish(chosen, raw, rule, data["model"], data["method"], 1, Constraints.from_dict(data["constraints"]),
                     vectors)  # fmt: skip
    return replace(result, rule=data["rule"], min_faces=int(data["min_faces"]))
