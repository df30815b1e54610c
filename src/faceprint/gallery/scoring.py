"""Open-set decisions from raw nearest-template hits: per-subject aggregation, negatives, one-to-one.

Kept free of storage so every backend makes the same decisions from the same hits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from faceprint.gallery.model import Candidate

#: A subject's score is the mean of its best ``SUBJECT_TOP_TEMPLATES`` template scores (fewer if it has
#: fewer templates). Measured on LFW with real dlib faceprints (docs/gallery.md): mean-of-top-2 ranks the
#: right subject first as often as the single best template and separates strangers slightly better,
#: because one lucky template of a lookalike no longer decides alone.
SUBJECT_TOP_TEMPLATES = 2


@dataclass(frozen=True)
class Hit:
    """One template found near a probe."""

    subject_id: str
    subject: str
    score: float


def aggregate(hits: Sequence[Hit], *, top_templates: int = SUBJECT_TOP_TEMPLATES) -> list[Candidate]:
    """Subjects ranked by the mean of their best ``top_templates`` hits (``hits`` in any order)."""
    per_subject: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for hit in hits:
        per_subject.setdefault(hit.subject_id, []).append(hit.score)
        names[hit.subject_id] = hit.subject
    out = []
    for subject_id, scores in per_subject.items():
        best = sorted(scores, reverse=True)[:top_templates]
        out.append(Candidate(subject_id, names[subject_id], sum(best) / len(best), len(scores)))
    out.sort(key=lambda c: (-c.score, c.subject))
    return out


def apply_negatives(
    probe: np.ndarray, candidates: Sequence[Candidate], negatives: Mapping[str, np.ndarray]
) -> list[Candidate]:
    """Drop a candidate when the probe is at least as close to a face marked "not this subject" as to
    the subject itself: the correction wins over the resemblance that caused the mistake."""
    kept = []
    for cand in candidates:
        neg = negatives.get(cand.subject_id)
        if neg is not None and len(neg) and float(np.max(neg @ probe)) >= cand.score:
            continue
        kept.append(cand)
    return kept


def assign_one_to_one(per_face: Sequence[Sequence[Candidate]], threshold: float) -> list[Candidate | None]:
    """Give each face at most one subject and each subject at most one face.

    Greedy on the global best score: the strongest (face, subject) pair above ``threshold`` is fixed first,
    so a face that loses its best subject to a better-matching face falls back to its next candidate.
    """
    pairs = [
        (cand.score, face, cand) for face, cands in enumerate(per_face) for cand in cands if cand.score >= threshold
    ]
    pairs.sort(key=lambda p: (-p[0], p[1]))
    matches: list[Candidate | None] = [None] * len(per_face)
    taken: set[str] = set()
    for _, face, cand in pairs:
        if matches[face] is None and cand.subject_id not in taken:
            matches[face] = cand
            taken.add(cand.subject_id)
    return matches


def choose_matches(
    per_face: Sequence[Sequence[Candidate]], threshold: float, *, one_to_one: bool
) -> list[Candidate | None]:
    """The open-set decision per face: its best candidate at or above ``threshold``, else ``None``; with
    ``one_to_one`` (faces of one photo) through :func:`assign_one_to_one`."""
    if one_to_one:
        return assign_one_to_one(per_face, threshold)
    return [c[0] if c and c[0].score >= threshold else None for c in per_face]
