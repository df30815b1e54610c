"""Liveness (presentation-attack detection) error rates in ISO/IEC 30107-3 terms, from P(live) scores.

A face is passed as live when ``score >= threshold``.

- APCER (attack presentation classification error rate): share of attack presentations passed as live,
  computed **per attack type** (PAI species: ``print``, ``replay``, …); the overall APCER is the worst type's,
  as the standard asks, so a threshold "for APCER 1 %" keeps every type at or below 1 %.
- BPCER (bona fide presentation classification error rate): share of live faces refused.
- ACER = (APCER + BPCER) / 2; BPCER20 / BPCER100 are the BPCER at APCER 5 % / 1 %; EER where the worst-type
  APCER and BPCER curves cross.

An APCER can only be resolved down to ``1 / attacks`` of the smallest type: below that a point is reported as
not resolvable rather than as a count of zero. **Leave-subjects-out** (:func:`leave_subjects_out`) picks the
threshold for the target APCER on the other subjects and measures it on the held-out ones, pooling the counts:
a threshold chosen on the frames it is tested on says nothing about new people.

The metric functions are NumPy on score arrays; :func:`liveness_samples` reads labelled folders and
:func:`score_liveness` runs a pipeline's detector and liveness model over them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError, InvalidArgument
from faceprint.evaluation import metrics as m
from faceprint.image import load_image
from faceprint.liveness.calibration import LivenessCalibration

#: The label of bona fide (live) presentations in :attr:`LivenessScores.kinds`.
BONA_FIDE = "bona fide"
#: The APCER targets of the BPCER table (BPCER100, BPCER20, BPCER10).
APCER_LEVELS = (0.01, 0.05, 0.10)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"})


# -- data -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LivenessSample:
    path: Path
    kind: str  # BONA_FIDE or the attack type
    subject: str | None  # None: not in a subject folder


def _images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InvalidArgument(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgument(f"{root}: no image files found")
    return files


def liveness_samples(live: Path, attacks: Sequence[Path]) -> list[LivenessSample]:
    """Labelled images: every image under ``live`` is bona fide; each ``attacks`` folder is one attack type
    named by the folder (``nuaa/print`` → ``print``), or, when its images sit three levels down
    (``TYPE/SUBJECT/image``), a parent of one folder per type. The subject is the first folder below the
    class folder (``live/0001/x.jpg`` → ``0001``); images directly in it have no subject."""
    if not attacks:
        raise InvalidArgument("give at least one --attack folder")
    out = [
        LivenessSample(p, BONA_FIDE, rel.parts[0] if len(rel.parts) > 1 else None)
        for p in _images(live)
        for rel in [p.relative_to(live)]
    ]
    for root in attacks:
        files = _images(root)
        rels = [p.relative_to(root) for p in files]
        if max(len(r.parts) for r in rels) >= 3:  # a parent: TYPE/SUBJECT/image
            out += [
                LivenessSample(p, r.parts[0], r.parts[1] if len(r.parts) > 2 else None)
                for p, r in zip(files, rels, strict=True)
            ]
        else:
            name = root.resolve().name
            out += [
                LivenessSample(p, name, r.parts[0] if len(r.parts) > 1 else None)
                for p, r in zip(files, rels, strict=True)
            ]
    if any(s.kind == BONA_FIDE and not s.path.is_relative_to(live) for s in out):
        raise InvalidArgument(f"an attack type may not be called {BONA_FIDE!r}")
    return out


@dataclass(frozen=True)
class LivenessScores:
    """P(live) of the largest face of each image that has one, with its label, subject and the seconds the
    liveness check alone took (crop + model, one face per call); ``skipped`` lists (path, kind, why)."""

    paths: tuple[Path, ...]
    scores: np.ndarray
    kinds: np.ndarray  # str: BONA_FIDE or the attack type
    subjects: np.ndarray  # str; "" when unknown
    seconds: np.ndarray
    skipped: tuple[tuple[Path, str, str], ...] = ()

    @property
    def live(self) -> np.ndarray:
        return self.scores[self.kinds == BONA_FIDE]

    def attacks(self) -> dict[str, np.ndarray]:
        """Scores per attack type (sorted by name)."""
        types = sorted(set(self.kinds.tolist()) - {BONA_FIDE})
        return {t: self.scores[self.kinds == t] for t in types}


def score_liveness(
    samples: Sequence[LivenessSample],
    pipeline: object,
    *,
    progress: Callable[[list[LivenessSample]], Iterable[LivenessSample]] | None = None,
) -> LivenessScores:
    """Detect faces in each image and score the largest with ``pipeline``'s liveness model (a
    :class:`~faceprint.pipeline.Pipeline`). The model is loaded first, so a missing model fails before any
    image is read; unreadable images and images without a face are listed in ``skipped``."""
    model = pipeline.liveness_model  # type: ignore[attr-defined]
    detector = pipeline.detector  # type: ignore[attr-defined]
    items = list(samples)
    paths, scores, kinds, subjects, seconds, skipped = [], [], [], [], [], []
    for sample in progress(items) if progress is not None else items:
        try:
            img = load_image(sample.path)
        except FaceprintError as exc:
            skipped.append((sample.path, sample.kind, f"unreadable: {exc}"))
            continue
        raw = detector.detect(img.pixels)
        if not raw:
            skipped.append((sample.path, sample.kind, "no face found"))
            continue
        boxes = np.array([box for box, _ in raw], dtype=np.float64).reshape(-1, 4)
        largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        started = time.perf_counter()
        score = float(model.scores(img.pixels, largest[None])[0])
        seconds.append(time.perf_counter() - started)
        paths.append(sample.path)
        scores.append(score)
        kinds.append(sample.kind)
        subjects.append(sample.subject or "")
    return LivenessScores(
        tuple(paths),
        np.asarray(scores, dtype=np.float64),
        np.asarray(kinds, dtype=str),
        np.asarray(subjects, dtype=str),
        np.asarray(seconds, dtype=np.float64),
        tuple(skipped),
    )


# -- metrics --------------------------------------------------------------------------------------------
def error_rates(
    live: np.ndarray, attacks: Mapping[str, np.ndarray], threshold: float
) -> tuple[dict[str, float], float]:
    """``({type: APCER}, BPCER)`` at ``threshold``; the overall APCER is ``max`` of the dict."""
    live = np.asarray(live, dtype=np.float64)
    apcer = {t: float(np.mean(np.asarray(a, dtype=np.float64) >= threshold)) for t, a in attacks.items()}
    return apcer, float(np.mean(live < threshold)) if live.size else float("nan")


def acer(apcer: float, bpcer: float) -> float:
    return (apcer + bpcer) / 2.0


def liveness_curve(live: np.ndarray, attacks: Mapping[str, np.ndarray]) -> m.RocCurve:
    """The DET curve at every distinct score (thresholds descending, the first +inf) as a
    :class:`~faceprint.evaluation.metrics.RocCurve`: ``fmr`` is the worst attack type's APCER, ``fnmr`` the
    BPCER."""
    if not attacks:
        raise InvalidArgument("liveness metrics need attack scores")
    pooled = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in attacks.values()])
    roc = m.roc_curve(live, pooled)
    if len(attacks) == 1:
        return roc
    per_type = np.stack(
        [
            (a.size - np.searchsorted(np.sort(a), roc.thresholds, side="left")) / a.size
            for a in (np.asarray(v, dtype=np.float64).ravel() for v in attacks.values())
        ]
    )
    return m.RocCurve(roc.thresholds, per_type.max(axis=0), roc.tar)


def liveness_eer(live: np.ndarray, attacks: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """``(eer, threshold)`` where the worst-type APCER equals the BPCER (interpolated)."""
    return m.curve_eer(liveness_curve(live, attacks))


@dataclass(frozen=True)
class ApcerPoint:
    """BPCER at the lowest threshold whose APCER (every attack type) is at most ``target_apcer``."""

    target_apcer: float
    supported: bool
    threshold: float
    apcer: float  # worst type, measured at ``threshold``
    bpcer: float
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"target_apcer": self.target_apcer, "supported": self.supported}
        if self.supported:
            out.update(threshold=round(self.threshold, 6), apcer=self.apcer, bpcer=self.bpcer)
        else:
            out["reason"] = self.reason
        return out


def threshold_for_apcer(
    live: np.ndarray, attacks: Mapping[str, np.ndarray], apcer: float, model_id: str = "scores"
) -> tuple[float, str]:
    """The threshold a liveness table made from these scores gives for ``apcer``
    (:meth:`LivenessCalibration.threshold_for <faceprint.liveness.calibration.LivenessCalibration.threshold_for>`:
    the lowest of its thresholds with APCER at most ``apcer``), made for each attack type and the highest taken,
    so every type stays within ``apcer``. When the smallest type has too few attacks to resolve ``apcer``, the
    reason comes back too and the threshold is the one that passes no attack."""
    if not 0 < apcer < 1:
        raise InvalidArgument(f"apcer must be in (0, 1), got {apcer}")
    if not attacks:
        raise InvalidArgument("liveness metrics need attack scores")
    smallest = min(np.asarray(a).size for a in attacks.values())
    need = m.min_pairs_for(apcer)
    reason = ""
    if smallest < need:
        reason = f"needs at least {need} attacks per type to resolve APCER {apcer:g}; have {smallest}"
    target = 0.0 if reason else apcer
    threshold = max(
        LivenessCalibration.from_scores(model_id, live, a, "evaluation").threshold_for(target) for a in attacks.values()
    )
    return float(threshold), reason


def bpcer_at_apcer(live: np.ndarray, attacks: Mapping[str, np.ndarray], apcer: float) -> ApcerPoint:
    threshold, reason = threshold_for_apcer(live, attacks, apcer)
    rates, bpcer = error_rates(live, attacks, threshold)
    return ApcerPoint(apcer, not reason, threshold, max(rates.values()), bpcer, reason)


@dataclass(frozen=True)
class GroupRow:
    """Error counts of one subject or attack type at a threshold (``None`` rates where it has no samples)."""

    name: str
    bona_fide: int
    refused: int
    attacks: int
    passed: int
    mean_live_score: float | None
    mean_attack_score: float | None

    @property
    def bpcer(self) -> float | None:
        return self.refused / self.bona_fide if self.bona_fide else None

    @property
    def apcer(self) -> float | None:
        return self.passed / self.attacks if self.attacks else None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "bona_fide": self.bona_fide,
            "attacks": self.attacks,
            "bpcer": self.bpcer,
            "apcer": self.apcer,
            "bona_fide_refused": self.refused,
            "attacks_passed": self.passed,
            "mean_live_score": self.mean_live_score,
            "mean_attack_score": self.mean_attack_score,
        }


def group_rates(scores: np.ndarray, is_live: np.ndarray, groups: np.ndarray, threshold: float) -> list[GroupRow]:
    """One :class:`GroupRow` per distinct value of ``groups`` (sorted), vectorised with ``bincount``."""
    names, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n = names.size
    live, passed = np.asarray(is_live, dtype=bool), np.asarray(scores) >= threshold

    def count(weights: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=weights, minlength=n)

    n_live, n_attack = count(live.astype(float)), count((~live).astype(float))
    refused, accepted = count((live & ~passed).astype(float)), count((~live & passed).astype(float))
    sum_live, sum_attack = count(np.where(live, scores, 0.0)), count(np.where(live, 0.0, scores))
    return [
        GroupRow(
            str(names[i]),
            int(n_live[i]),
            int(refused[i]),
            int(n_attack[i]),
            int(accepted[i]),
            float(sum_live[i] / n_live[i]) if n_live[i] else None,
            float(sum_attack[i] / n_attack[i]) if n_attack[i] else None,
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class Fold:
    subjects: tuple[str, ...]
    threshold: float
    bona_fide: int
    refused: int
    attacks: dict[str, tuple[int, int]]  # type: (attacks, passed)

    def to_dict(self) -> dict[str, object]:
        return {
            "subjects": list(self.subjects),
            "threshold": round(self.threshold, 6),
            "bona_fide": self.bona_fide,
            "bona_fide_refused": self.refused,
            "attacks": {t: {"attacks": n, "passed": k} for t, (n, k) in self.attacks.items()},
        }


@dataclass(frozen=True)
class LeaveSubjectsOut:
    """Pooled held-out error rates: each fold's threshold chosen for ``target_apcer`` on the other folds."""

    target_apcer: float
    folds: tuple[Fold, ...]
    notes: tuple[str, ...] = ()

    def _pool(self) -> tuple[dict[str, tuple[int, int]], int, int]:
        per_type: dict[str, tuple[int, int]] = {}
        for f in self.folds:
            for t, (n, k) in f.attacks.items():
                a, b = per_type.get(t, (0, 0))
                per_type[t] = (a + n, b + k)
        return per_type, sum(f.bona_fide for f in self.folds), sum(f.refused for f in self.folds)

    @property
    def apcer_by_type(self) -> dict[str, float]:
        return {t: k / n for t, (n, k) in sorted(self._pool()[0].items()) if n}

    @property
    def apcer(self) -> float:
        return max(self.apcer_by_type.values())

    @property
    def bpcer(self) -> float:
        _, n, k = self._pool()
        return k / n if n else float("nan")

    @property
    def acer(self) -> float:
        return acer(self.apcer, self.bpcer)

    def to_dict(self) -> dict[str, object]:
        return {
            "folds": len(self.folds),
            "target_apcer": self.target_apcer,
            "apcer": self.apcer,
            "apcer_by_type": self.apcer_by_type,
            "bpcer": self.bpcer,
            "acer": self.acer,
            "per_fold": [f.to_dict() for f in self.folds],
            "notes": list(self.notes),
        }


def leave_subjects_out(
    scores: np.ndarray, kinds: np.ndarray, subjects: np.ndarray, target_apcer: float, folds: int | None = None
) -> LeaveSubjectsOut:
    """Subjects (sorted) go to ``folds`` folds round-robin (``None``: one per subject). For each fold the
    threshold for ``target_apcer`` is chosen on the others' attacks and applied to the held-out frames."""
    scores, kinds, subjects = np.asarray(scores, np.float64), np.asarray(kinds, str), np.asarray(subjects, str)
    if (subjects == "").any():
        raise InvalidArgument(
            "leave-subjects-out needs every image in a subject folder (live/SUBJECT/…, print/SUBJECT/…)"
        )
    names = np.unique(subjects)
    k = names.size if folds is None else folds
    if not 2 <= k <= names.size:
        raise InvalidArgument(f"leave-subjects-out needs 2 to {names.size} folds (one per subject at most), got {k}")
    fold_of_subject = np.arange(names.size) % k
    fold = fold_of_subject[np.searchsorted(names, subjects)]
    live = kinds == BONA_FIDE
    types = sorted(set(kinds.tolist()) - {BONA_FIDE})
    out, notes = [], []
    for i in range(k):
        test, train = fold == i, fold != i
        train_attacks = {t: scores[train & (kinds == t)] for t in types}
        missing = [t for t, a in train_attacks.items() if a.size == 0]
        if missing:
            raise InvalidArgument(f"fold {i + 1}: no {', '.join(missing)} attacks outside it to choose a threshold on")
        threshold, reason = threshold_for_apcer(scores[train & live], train_attacks, target_apcer)
        if reason and reason not in notes:
            notes.append(reason)
        held = scores[test]
        passed = held >= threshold
        out.append(
            Fold(
                tuple(names[fold_of_subject == i].tolist()),
                threshold,
                int((live & test).sum()),
                int((live[test] & ~passed).sum()),
                {t: (int((kinds[test] == t).sum()), int(((kinds[test] == t) & passed).sum())) for t in types},
            )
        )
    if notes:
        notes = [f"the training folds cannot resolve the target: {n} (so no training attack passes)" for n in notes]
    return LeaveSubjectsOut(target_apcer, tuple(out), tuple(notes))


# -- the whole evaluation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LivenessEvaluation:
    model_id: str
    source: str
    scored: LivenessScores
    threshold: float
    threshold_from: str
    apcer_by_type: dict[str, float]
    bpcer: float
    points: tuple[ApcerPoint, ...]
    eer: float
    eer_threshold: float
    by_type: tuple[GroupRow, ...]
    by_subject: tuple[GroupRow, ...]
    lso: LeaveSubjectsOut | None
    table_rates: tuple[float, float] | None = None  # what the calibration table states at the threshold
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def apcer(self) -> float:
        return max(self.apcer_by_type.values())

    @property
    def acer(self) -> float:
        return acer(self.apcer, self.bpcer)

    @property
    def ms_per_face(self) -> dict[str, float]:
        ms = self.scored.seconds * 1e3
        return {"mean": float(ms.mean()), "median": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}

    def to_dict(self) -> dict[str, object]:
        s = self.scored
        return {
            "model": self.model_id,
            "source": self.source,
            "bona_fide": int(s.live.size),
            "attacks": {t: int(a.size) for t, a in s.attacks().items()},
            "subjects": sorted(set(s.subjects.tolist()) - {""}),
            "skipped": [{"path": str(p), "kind": k, "reason": r} for p, k, r in s.skipped],
            "skipped_count": {k: [kk for _, kk, _ in s.skipped].count(k) for k in sorted({k for _, k, _ in s.skipped})},
            "threshold": round(self.threshold, 6),
            "threshold_from": self.threshold_from,
            "table_apcer": None if self.table_rates is None else self.table_rates[0],
            "table_bpcer": None if self.table_rates is None else self.table_rates[1],
            "apcer": self.apcer,
            "apcer_by_type": self.apcer_by_type,
            "bpcer": self.bpcer,
            "acer": self.acer,
            "bpcer_at_apcer": [p.to_dict() for p in self.points],
            "eer": self.eer,
            "eer_threshold": round(self.eer_threshold, 6),
            "by_attack_type": [r.to_dict() for r in self.by_type],
            "by_subject": [r.to_dict() for r in self.by_subject],
            "leave_subjects_out": None if self.lso is None else self.lso.to_dict(),
            "ms_per_face": {k: round(v, 3) for k, v in self.ms_per_face.items()},
            "notes": list(self.notes),
            "faces": [
                {"path": str(path), "kind": str(k), "subject": str(sub) or None, "score": round(float(v), 6)}
                for path, k, sub, v in zip(s.paths, s.kinds, s.subjects, s.scores, strict=True)
            ],
        }


def evaluate_liveness(
    scored: LivenessScores,
    *,
    model_id: str,
    source: str,
    threshold: float,
    threshold_from: str,
    target_apcer: float,
    folds: int | None = None,
    table_rates: tuple[float, float] | None = None,
) -> LivenessEvaluation:
    """All figures of ``faceprint eval liveness``. Leave-subjects-out runs when every frame has a subject and
    there are at least two (``folds=None``: one fold per subject); ``folds`` given without subjects fails."""
    live, attacks = scored.live, scored.attacks()
    if live.size == 0 or not attacks:
        raise InvalidArgument(
            f"liveness evaluation needs faces of both classes; found {live.size} bona fide and "
            f"{sum(a.size for a in attacks.values())} attack faces"
        )
    notes = []
    apcer_by_type, bpcer = error_rates(live, attacks, threshold)
    eer, eer_t = liveness_eer(live, attacks)
    is_live = scored.kinds == BONA_FIDE
    lso = None
    known = scored.subjects != ""
    if folds is not None or (known.all() and np.unique(scored.subjects).size >= 2):
        lso = leave_subjects_out(scored.scores, scored.kinds, scored.subjects, target_apcer, folds)
    else:
        notes.append("no leave-subjects-out figures: put each subject's images in a folder of its own")
    subject_rows = group_rates(scored.scores[known], is_live[known], scored.subjects[known], threshold)
    return LivenessEvaluation(
        model_id=model_id,
        source=source,
        scored=scored,
        threshold=threshold,
        threshold_from=threshold_from,
        apcer_by_type=apcer_by_type,
        bpcer=bpcer,
        points=tuple(bpcer_at_apcer(live, attacks, a) for a in sorted({*APCER_LEVELS, target_apcer})),
        eer=eer,
        eer_threshold=eer_t,
        by_type=tuple(r for r in group_rates(scored.scores, is_live, scored.kinds, threshold) if r.name != BONA_FIDE),
        by_subject=tuple(subject_rows),
        lso=lso,
        table_rates=table_rates,
        notes=tuple(notes),
    )
