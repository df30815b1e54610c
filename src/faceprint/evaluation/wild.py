"""In-the-wild evaluation on a folder of identities (``faceprint eval wild``): users' photos, not LFW's crops.

Two protocols over the same embeddings (one face per photo, chosen by a stated rule):

- **Verification, all pairs**: every same-identity pair is genuine, every different-identity pair an
  impostor; TAR at FMR levels measured on this data, and — the question an operator asks — whether the
  false-match rate the calibration table *states* for its threshold holds here (observed / stated FMR).
- **Open-set identification**: a seeded share of the identities are *strangers* (never enrolled, all their
  photos are non-mated probes); each other identity is enrolled with ``enrol`` photos, passed through the
  enrolment quality gate as the gallery would, and its remaining photos are mated probes. The threshold is the
  calibration table's for ``fmr`` (``--fmr``), as ``faceprint identify`` would use. A subject's score is
  the ``max``, ``mean`` or quality-weighted mean (``quality``) of its templates' scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError, InvalidArgument
from faceprint.evaluation import metrics as m
from faceprint.evaluation.calibration import all_pair_scores
from faceprint.evaluation.embedding import Embeddings, key
from faceprint.matching import Calibration, ThresholdRule

FMR_LEVELS = (1e-3, 1e-4)
SCORINGS = ("max", "mean", "quality")
FPIR_LEVELS = (1e-1, 1e-2)


class WildProtocolError(FaceprintError):
    """The folder cannot support the asked protocol (too few identities or photos)."""


@dataclass(frozen=True)
class StatedFmr:
    """One FMR level: TAR measured at this data's own threshold, and the calibration table's threshold for
    that FMR with the FMR and TAR it really gives here."""

    fmr: float
    measured: m.OperatingPoint  # TAR at the threshold from this data (optimistic: fitted on the test pairs)
    threshold: float | None  # the table's threshold for ``fmr`` (None: no table, or not resolvable)
    observed_fmr: float | None
    tar: float | None  # TAR at the table's threshold

    @property
    def ratio(self) -> float | None:
        """Observed / stated FMR (1.0: the table holds; 2.0: twice as many false matches as stated)."""
        return None if self.observed_fmr is None else self.observed_fmr / self.fmr

    def to_dict(self) -> dict:
        return {
            "fmr": self.fmr,
            "measured": self.measured.to_dict(),
            "calibrated_threshold": self.threshold,
            "observed_fmr": self.observed_fmr,
            "observed_over_stated": self.ratio,
            "tar_at_calibrated_threshold": self.tar,
        }


@dataclass(frozen=True)
class WildVerification:
    identities: int
    photos: int
    genuine_pairs: int
    impostor_pairs: int
    levels: tuple[StatedFmr, ...]

    def to_dict(self) -> dict:
        return {
            "identities": self.identities,
            "photos": self.photos,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "levels": [lv.to_dict() for lv in self.levels],
        }


def _rows(embeddings: Embeddings, identities: dict[str, list[Path]]) -> tuple[list[int], list[str]]:
    index = embeddings.index()
    rows, labels = [], []
    for name in sorted(identities):
        for p in identities[name]:
            i = index.get(key(p))
            if i is not None:
                rows.append(i)
                labels.append(name)
    return rows, labels


def verify_all_pairs(
    embeddings: Embeddings,
    identities: dict[str, list[Path]],
    calibration: Calibration | None,
    fmrs: tuple[float, ...] = FMR_LEVELS,
) -> WildVerification:
    rows, labels = _rows(embeddings, identities)
    if len(set(labels)) < 2:
        raise WildProtocolError("all-pairs verification needs embedded photos of at least two identities")
    genuine, impostor = all_pair_scores(embeddings.vectors[rows], labels)
    if genuine.size == 0:
        raise WildProtocolError("no identity has two photos with a face: there are no genuine pairs")
    levels = []
    for fmr in fmrs:
        measured = m.tar_at_far(genuine, impostor, fmr)
        threshold = observed = tar = None
        if calibration is not None and fmr >= 1.0 / calibration.impostor_pairs:
            threshold = calibration.threshold_for(fmr)
            observed = float(np.mean(impostor >= threshold))
            tar = float(np.mean(genuine >= threshold))
        levels.append(StatedFmr(fmr, measured, threshold, observed, tar))
    return WildVerification(len(set(labels)), len(rows), int(genuine.size), int(impostor.size), tuple(levels))


@dataclass(frozen=True)
class WildSplit:
    enrol: dict[str, list[Path]]  # identity → its enrolment photos
    probes: dict[str, list[Path]]  # identity → its mated probe photos
    strangers: dict[str, list[Path]]  # identity → photos (non-mated probes)


def split_wild(
    identities: dict[str, list[Path]], *, enrol: int = 3, probes: int | None = None, strangers: float = 0.3,
    seed: int = 0,
) -> WildSplit:  # fmt: skip
    """Seeded split: a ``strangers`` share of the identities with more than ``enrol`` photos is never
    enrolled; every other such identity enrols ``enrol`` photos and probes with the rest (at most ``probes``).
    Identities with ``enrol`` photos or fewer are strangers too."""
    if enrol < 1:
        raise InvalidArgument("enrol must be at least 1")
    if not 0 <= strangers < 1:
        raise InvalidArgument(f"strangers is a share of the identities in [0, 1), got {strangers}")
    rng = random.Random(seed)
    eligible = sorted(n for n, photos in identities.items() if len(photos) > enrol)
    held = set(rng.sample(eligible, round(strangers * len(eligible))))
    gallery, mated, others = {}, {}, {}
    for name in sorted(identities):
        photos = sorted(identities[name])
        if name in held or len(photos) <= enrol:
            others[name] = photos
            continue
        rng.shuffle(photos)
        gallery[name] = sorted(photos[:enrol])
        rest = photos[enrol:]
        mated[name] = sorted(rest if probes is None else rest[:probes])
    if not gallery or not others:
        raise WildProtocolError(
            f"open-set identification needs enrolled identities and strangers: {len(gallery)} identities have "
            f"more than {enrol} photos to enrol and probe with, {len(others)} are strangers"
        )
    return WildSplit(gallery, mated, others)


@dataclass(frozen=True)
class WildIdentification:
    scoring: str
    rule: ThresholdRule
    enrolled: int  # identities with at least one accepted enrolment photo
    enrol_photos: int
    rejected: dict[str, str]  # enrolment photo → the quality gate's reasons
    no_face: dict[str, str]  # any photo of the protocol → why it has no faceprint
    mated_probes: int
    nonmated_probes: int
    rank1: float  # closed-set: the right identity scores highest
    identified: float  # open-set: the right identity is first and scores >= threshold (1 - FNIR)
    right_but_below: int  # mated probes whose rank-1 candidate is right but scores below the threshold
    fpir: float  # strangers' probes with any candidate at or above the threshold
    open_set: tuple[m.OpenSetPoint, ...]

    @property
    def fnir(self) -> float:
        return 1.0 - self.identified

    def to_dict(self) -> dict:
        return {
            "scoring": self.scoring,
            "threshold": self.rule.threshold,
            "threshold_rule": self.rule.describe(),
            "enrolled_identities": self.enrolled,
            "enrolment_photos": self.enrol_photos,
            "enrolment_rejected": self.rejected,
            "no_face": self.no_face,
            "mated_probes": self.mated_probes,
            "nonmated_probes": self.nonmated_probes,
            "rank1": self.rank1,
            "identified": self.identified,
            "fnir": self.fnir,
            "right_but_below_threshold": self.right_but_below,
            "fpir": self.fpir,
            "open_set": [p.to_dict() for p in self.open_set],
        }


def subject_scores(
    scores: np.ndarray, owner: np.ndarray, subjects: int, scoring: str = "max", weights: np.ndarray | None = None
) -> np.ndarray:
    """probes × subjects from probes × templates: each subject's templates (``owner[j]`` is template ``j``'s
    subject index) reduced by ``max``, ``mean`` or the ``quality``-weighted mean (``weights`` per template)."""
    if scoring not in SCORINGS:
        raise InvalidArgument(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    scores = np.asarray(scores, dtype=np.float64)
    if scoring == "max":
        out = np.full((scores.shape[0], subjects), -np.inf)
        np.maximum.at(out.T, owner, scores.T)
        return out
    w = np.ones(scores.shape[1]) if scoring == "mean" or weights is None else np.asarray(weights, np.float64)
    onehot = np.zeros((scores.shape[1], subjects))
    onehot[np.arange(scores.shape[1]), owner] = w
    total = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (scores @ onehot) / total
    out[:, total <= 0] = -np.inf
    return out


def identify_open_set(
    split: WildSplit,
    embeddings: Embeddings,
    rule: ThresholdRule,
    *,
    scoring: str = "max",
    quality_gate: bool = True,
) -> WildIdentification:
    """Open-set identification of ``split`` at ``rule``'s threshold (see the module docstring). With
    ``quality_gate``, enrolment photos the quality gate rejects are not enrolled (as the gallery does)."""
    index = embeddings.index()
    quality = embeddings.qualities()
    no_face = {
        str(p): embeddings.failures.get(key(p), "not embedded")
        for group in (split.enrol, split.probes, split.strangers)
        for photos in group.values()
        for p in photos
        if key(p) not in index
    }
    rejected: dict[str, str] = {}
    g_rows, g_owner = [], []
    for name in sorted(split.enrol):
        for p in split.enrol[name]:
            k = key(p)
            if k not in index:
                continue
            if quality_gate and k in embeddings.rejections:
                rejected[str(p)] = embeddings.rejections[k]
                continue
            g_rows.append(index[k])
            g_owner.append(name)
    names = sorted(set(g_owner))
    if not names:
        raise WildProtocolError("no enrolment photo had a usable face")
    owner = np.searchsorted(names, g_owner)
    weights = np.nan_to_num(quality[g_rows], nan=1.0)
    vec = embeddings.vectors

    def search(rows: list[int]) -> np.ndarray:
        return subject_scores(vec[rows] @ vec[g_rows].T, owner, len(names), scoring, weights)

    p_rows, p_names = [], []
    for name in sorted(split.probes):
        if name in names:
            for p in split.probes[name]:
                if key(p) in index:
                    p_rows.append(index[key(p)])
                    p_names.append(name)
    s_rows = [index[key(p)] for photos in split.strangers.values() for p in photos if key(p) in index]
    if not p_rows or not s_rows:
        raise WildProtocolError("open-set identification needs mated probes and strangers' probes with a face")
    mated = search(p_rows)
    top = mated.max(axis=1)
    correct = np.asarray(names)[mated.argmax(axis=1)] == np.asarray(p_names)
    stranger_top = search(s_rows).max(axis=1)
    threshold = rule.threshold
    return WildIdentification(
        scoring=scoring,
        rule=rule,
        enrolled=len(names),
        enrol_photos=len(g_rows),
        rejected=rejected,
        no_face=no_face,
        mated_probes=len(p_rows),
        nonmated_probes=len(s_rows),
        rank1=float(np.mean(correct)),
        identified=float(np.mean(correct & (top >= threshold))),
        right_but_below=int(np.sum(correct & (top < threshold))),
        fpir=float(np.mean(stranger_top >= threshold)),
        open_set=tuple(m.fnir_at_fpir(top, correct, stranger_top, f) for f in FPIR_LEVELS),
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def to_markdown(
    source: str, face: str, model: str, verification: WildVerification, identification: WildIdentification
) -> str:
    """The report of ``faceprint eval wild`` (both protocols)."""
    v, r = verification, identification
    lines = [
        f"# In the wild: {source}",
        "",
        f"Model {model}. One face per photo: the {face} face (`--face`). {v.photos} photos of {v.identities} "
        f"identities with a face; {len(r.no_face)} photos without one.",
        "",
        f"## Verification, all pairs ({v.genuine_pairs:,} genuine, {v.impostor_pairs:,} impostor)",
        "",
        "| FMR | TAR (threshold from this data) | calibrated threshold | observed FMR there | observed / stated "
        "| TAR there |",
        "|---|---|---|---|---|---|",
    ]
    for lv in v.levels:
        tar = _pct(lv.measured.tar) if lv.measured.supported else f"not resolvable: {lv.measured.reason}"
        ratio = "–" if lv.ratio is None else f"{lv.ratio:.2f}×"
        cal = "–" if lv.threshold is None else f"{lv.threshold:.4f}"
        obs = "–" if lv.observed_fmr is None else f"{lv.observed_fmr:.2e}"
        lines.append(f"| {lv.fmr:g} | {tar} | {cal} | {obs} | {ratio} | {_pct(lv.tar)} |")
    lines += [
        "",
        f"## Open-set identification ({r.scoring} over each subject's templates; threshold {r.rule.threshold:.4f}, "
        f"{r.rule.describe()})",
        "",
        "| metric | value |",
        "|---|---|",
        f"| enrolled identities / photos | {r.enrolled} / {r.enrol_photos} |",
        f"| enrolment photos rejected by the quality gate | {len(r.rejected)} |",
        f"| mated probes / strangers' probes | {r.mated_probes} / {r.nonmated_probes} |",
        f"| rank-1 (closed set) | {_pct(r.rank1)} |",
        f"| identified (right person first, at or above the threshold) | {_pct(r.identified)} |",
        f"| missed with the right person first but below the threshold | {r.right_but_below} |",
        f"| FPIR (strangers given a candidate) | {_pct(r.fpir)} ({round(r.fpir * r.nonmated_probes)} of "
        f"{r.nonmated_probes}) |",
    ]
    for p in r.open_set:
        value = f"{_pct(p.fnir)} (threshold {p.threshold:.4f})" if p.supported else f"not resolvable: {p.reason}"
        lines.append(f"| FNIR at FPIR {p.target_fpir:g} | {value} |")
    if r.rejected:
        lines += ["", "Enrolment photos rejected:", ""]
        lines += [f"- {path}: {why}" for path, why in sorted(r.rejected.items())]
    if r.no_face:
        lines += ["", "Photos without a faceprint:", ""]
        lines += [f"- {path}: {why}" for path, why in sorted(r.no_face.items())]
    return "\n".join(lines) + "\n"
