"""Closed- and open-set identification on a folder of identities, all in memory.

Each identity with more than ``enrol`` photos is enrolled with ``enrol`` seeded-random photos; its other
photos are mated probes. Identities with ``enrol`` photos or fewer, plus a seeded ``holdout`` fraction of
the others, are never enrolled: all their photos are non-mated probes (distractors). An identity's score for
a probe is the best score over its enrolled photos.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError
from faceprint.evaluation import metrics as m
from faceprint.evaluation.embedding import Embeddings, key

FPIR_LEVELS = (1e-1, 1e-2, 1e-3)


@dataclass(frozen=True)
class Split:
    gallery: dict[str, list[Path]]
    mated: dict[str, list[Path]]
    nonmated: list[Path]


def split_identities(identities: dict[str, list[Path]], enrol: int = 1, holdout: float = 0.0, seed: int = 0) -> Split:
    if enrol < 1:
        raise FaceprintError("enrol must be at least 1")
    rng = random.Random(seed)
    eligible = sorted(name for name, imgs in identities.items() if len(imgs) > enrol)
    held = set(rng.sample(eligible, round(holdout * len(eligible)))) if holdout > 0 else set()
    gallery, mated, nonmated = {}, {}, []
    for name in sorted(identities):
        images = list(identities[name])
        if name in held or len(images) <= enrol:
            nonmated += images
            continue
        rng.shuffle(images)
        gallery[name], mated[name] = sorted(images[:enrol]), sorted(images[enrol:])
    if not gallery:
        raise FaceprintError(f"no identity has more than {enrol} photos to enrol and probe with")
    return Split(gallery, mated, nonmated)


@dataclass(frozen=True)
class IdentificationResult:
    identities: int
    mated_probes: int
    nonmated_probes: int
    cmc: np.ndarray
    open_set: tuple[m.OpenSetPoint, ...]
    skipped: dict[str, str]
    enrol: int

    def rank(self, k: int) -> float | None:
        return float(self.cmc[k - 1]) if k <= self.cmc.size else None

    def to_dict(self) -> dict:
        return {
            "enrolled_identities": self.identities,
            "photos_per_identity": self.enrol,
            "mated_probes": self.mated_probes,
            "nonmated_probes": self.nonmated_probes,
            "rank1": self.rank(1),
            "rank5": self.rank(5),
            "cmc": [float(v) for v in self.cmc],
            "open_set": [p.to_dict() for p in self.open_set],
            "skipped_photos": self.skipped,
        }


def evaluate_identification(split: Split, embeddings: Embeddings, max_rank: int = 20) -> IdentificationResult:
    index = embeddings.index()
    vec = embeddings.vectors

    def rows(paths: list[Path]) -> list[int]:
        return [index[key(p)] for p in paths if key(p) in index]

    skipped = {
        str(p): embeddings.failures.get(key(p), "not embedded")
        for paths in (*split.gallery.values(), *split.mated.values(), split.nonmated)
        for p in paths
        if key(p) not in index
    }
    g_rows, g_owner = [], []
    for name, paths in split.gallery.items():
        r = rows(paths)
        g_rows += r
        g_owner += [name] * len(r)
    names = sorted(set(g_owner))
    if not names:
        raise FaceprintError("no enrolment photo had a usable face")
    owner_idx = np.searchsorted(names, g_owner)
    probe_rows, probe_names = [], []
    for name, paths in split.mated.items():
        if name in names:  # an identity whose enrolment photos all failed cannot be searched for
            r = rows(paths)
            probe_rows += r
            probe_names += [name] * len(r)
    non_rows = rows(split.nonmated)

    def identity_scores(r: list[int]) -> np.ndarray:
        """probes × identities: best score over each identity's enrolled photos."""
        s = vec[r] @ vec[g_rows].T
        out = np.full((len(r), len(names)), -np.inf, dtype=np.float32)
        np.maximum.at(out.T, owner_idx, s.T)  # reduce the gallery columns by owner
        return out

    mated = identity_scores(probe_rows) if probe_rows else np.zeros((0, len(names)))
    curve = m.cmc(mated, names, probe_names, max_rank) if probe_rows else np.zeros(0)
    open_set: tuple[m.OpenSetPoint, ...] = ()
    if non_rows and probe_rows:
        non = identity_scores(non_rows).max(axis=1)
        top = mated.max(axis=1)
        correct = np.asarray(names)[mated.argmax(axis=1)] == np.asarray(probe_names)
        open_set = tuple(m.fnir_at_fpir(top, correct, non, f) for f in FPIR_LEVELS)
    return IdentificationResult(
        identities=len(names),
        mated_probes=len(probe_rows),
        nonmated_probes=len(non_rows),
        cmc=curve,
        open_set=open_set,
        skipped=skipped,
        enrol=max(len(v) for v in split.gallery.values()),
    )
