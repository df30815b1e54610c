"""What the server-backed galleries (PostgreSQL, Milvus) share: argument checks, ciphertext bindings and the
open-set decision made from raw nearest-template hits.

The embedded backend keeps its own copies of these (it predates them); the associated-data format here is
the same, so a template encrypted by one backend would decrypt in another given the same key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from faceprint.gallery.errors import ContractMismatch, GalleryError
from faceprint.gallery.model import Collection, Identification
from faceprint.gallery.scoring import Hit, aggregate, apply_negatives, assign_one_to_one
from faceprint.matching import DEFAULT_FMR, Calibration, shipped_calibration
from faceprint.types import Faceprint

#: Nearest templates fetched per probe: enough to see several templates of each likely subject (as embedded).
MIN_NEIGHBOURS = 64


def neighbours_wanted(top_k: int) -> int:
    return max(MIN_NEIGHBOURS, 8 * top_k)


def vector_aad(subject_id: str, model_id: str, kind: str = "tpl") -> bytes:
    """Associated data binding an encrypted vector to its subject and model (a copied row fails to decrypt)."""
    return f"faceprint:{kind}:{subject_id}:{model_id}".encode()


def chip_aad(subject_id: str) -> bytes:
    return f"faceprint:chip:{subject_id}".encode()


def check_contract(coll: Collection, faceprints: Sequence[Faceprint]) -> None:
    for fp in faceprints:
        if fp.model_id != coll.model_id or fp.dim != coll.dim:
            raise ContractMismatch(coll.name, f"{coll.model_id} ({coll.dim}-d)", f"{fp.model_id} ({fp.dim}-d)")


def check_name(name: str) -> None:
    if not name or not name.strip():
        raise GalleryError("a subject needs a non-empty name")


def check_sidecars(n: int, source_sha256: Sequence[str | None] | None, chips: Sequence[np.ndarray] | None) -> list:
    shas = list(source_sha256) if source_sha256 is not None else [None] * n
    if len(shas) != n or (chips is not None and len(chips) != n):
        raise GalleryError("source_sha256 and chips must have one entry per faceprint")
    return shas


def parse_cursor(cursor: str | None) -> tuple[str, str] | None:
    """Page cursors are ``[name, id]`` of the last subject returned (same format as the embedded backend)."""
    if not cursor:
        return None
    try:
        name, sid = json.loads(cursor)
        return str(name), str(sid)
    except (ValueError, TypeError):
        raise GalleryError(f"invalid page cursor {cursor!r}") from None


def make_cursor(name: str, subject_id: str) -> str:
    return json.dumps([name, subject_id])


def resolve_threshold(
    coll: Collection,
    *,
    top_k: int,
    fmr: float | None,
    threshold: float | None,
    calibration: Calibration | None,
) -> float:
    if top_k < 1:
        raise GalleryError(f"top_k must be at least 1, got {top_k}")
    if fmr is not None and threshold is not None:
        raise GalleryError("give either fmr or threshold, not both")
    if threshold is not None:
        return float(threshold)
    table = calibration or shipped_calibration(coll.model_id)
    return float(table.threshold_for(DEFAULT_FMR if fmr is None else fmr))


def decide(
    faceprints: Sequence[Faceprint],
    probes: np.ndarray,
    hits: Sequence[Sequence[Hit]],
    negatives: Mapping[str, np.ndarray],
    *,
    top_k: int,
    threshold: float,
    one_to_one: bool,
) -> list[Identification]:
    """Per-probe hits → ranked subjects (aggregated, negatives honoured) → open-set, one-to-one answers."""
    ranked = [apply_negatives(probes[i], aggregate(face_hits), negatives) for i, face_hits in enumerate(hits)]
    if one_to_one:
        matches = assign_one_to_one(ranked, threshold)
    else:
        matches = [c[0] if c and c[0].score >= threshold else None for c in ranked]
    return [
        Identification(tuple(cands[:top_k]), match, threshold, None if fp.detection is None else fp.detection.box)
        for fp, cands, match in zip(faceprints, ranked, matches, strict=True)
    ]


def redact_location(location: str) -> str:
    """A DSN/URI fit for logs and messages: any password replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(location)
    except ValueError:
        return location
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
