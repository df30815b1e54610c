"""Verification evaluation: score a pair list with one embedding per image, then every error rate.

The result keeps the raw scores so that reports can draw curves; ``to_dict`` is the JSON form.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError
from faceprint.evaluation import metrics as m
from faceprint.evaluation.embedding import Embeddings, key
from faceprint.evaluation.pairs import Pair
from faceprint.matching import DEFAULT_FMR, Calibration

FAR_LEVELS = (1e-1, 1e-2, 1e-3, 1e-4)
TABLE_FMRS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass(frozen=True)
class PairScores:
    """Scores of the pairs whose two images both had a face, and the pairs that were skipped."""

    scores: np.ndarray
    same: np.ndarray
    folds: np.ndarray  # -1 where the pair has no fold
    pairs: tuple[Pair, ...]
    skipped: tuple[tuple[Pair, str], ...]

    @property
    def genuine(self) -> np.ndarray:
        return self.scores[self.same]

    @property
    def impostor(self) -> np.ndarray:
        return self.scores[~self.same]


def score_pairs(pairs: Sequence[Pair], embeddings: Embeddings) -> PairScores:
    """Cosine score of every pair; a pair is skipped (with the reason) when an image has no embedding."""
    index = embeddings.index()
    keys: dict[Path, str] = {}  # resolving a path is a few system calls; pair lists repeat paths a lot

    def key_of(path: Path) -> str:
        if path not in keys:
            keys[path] = key(path)
        return keys[path]

    kept, ia, ib, skipped = [], [], [], []
    for pair in pairs:
        ka, kb = key_of(pair.a), key_of(pair.b)
        if ka in index and kb in index:
            kept.append(pair)
            ia.append(index[ka])
            ib.append(index[kb])
            continue
        reasons = [
            f"{p}: {embeddings.failures.get(k, 'not embedded')}" for p, k in ((pair.a, ka), (pair.b, kb))
            if k not in index
        ]  # fmt: skip
        skipped.append((pair, "; ".join(reasons)))
    v = embeddings.vectors
    scores = np.einsum("ij,ij->i", v[ia], v[ib]).astype(np.float64) if kept else np.zeros(0)
    return PairScores(
        scores=scores,
        same=np.array([p.same for p in kept], dtype=bool),
        folds=np.array([-1 if p.fold is None else p.fold for p in kept], dtype=int),
        pairs=tuple(kept),
        skipped=tuple(skipped),
    )


@dataclass(frozen=True)
class ThresholdRow:
    """One line of the threshold table: a target FMR, this data's threshold for it, and the calibrated
    (shipped) threshold for it with the rates it actually gives on this data."""

    target_fmr: float
    measured: m.OperatingPoint
    calibrated_threshold: float | None
    calibrated_fmr: float | None
    calibrated_fnmr: float | None

    def to_dict(self) -> dict:
        return {
            "target_fmr": self.target_fmr,
            "this_data": self.measured.to_dict(),
            "calibrated": None
            if self.calibrated_threshold is None
            else {
                "threshold": round(self.calibrated_threshold, 6),
                "fmr": self.calibrated_fmr,
                "fnmr": self.calibrated_fnmr,
            },
        }


@dataclass(frozen=True)
class VerificationResult:
    model_id: str
    source: str
    scored: PairScores
    genuine_pairs: int
    impostor_pairs: int
    best_accuracy: float
    best_threshold: float
    eer: float
    eer_threshold: float
    auc: float
    tar_at_far: tuple[m.OperatingPoint, ...]
    default_fmr: float
    default_point: m.OperatingPoint
    configured_threshold: float | None
    configured_accuracy: float | None
    configured_fmr: float | None
    configured_fnmr: float | None
    threshold_table: tuple[ThresholdRow, ...]
    kfold: m.KFoldResult | None
    kfold_skipped_as_errors: float | None
    accuracy_skipped_as_errors: float
    cohorts: dict | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "model": self.model_id,
            "source": self.source,
            "pairs": {
                "scored": int(self.scored.scores.size),
                "genuine": self.genuine_pairs,
                "impostor": self.impostor_pairs,
                "skipped": len(self.scored.skipped),
            },
            "best_accuracy": {"accuracy": self.best_accuracy, "threshold": round(self.best_threshold, 6)},
            "accuracy_skipped_as_errors": self.accuracy_skipped_as_errors,
            "configured": None
            if self.configured_threshold is None
            else {
                "threshold": round(self.configured_threshold, 6),
                "accuracy": self.configured_accuracy,
                "fmr": self.configured_fmr,
                "fnmr": self.configured_fnmr,
            },
            "eer": {"eer": self.eer, "threshold": round(self.eer_threshold, 6)},
            "roc_auc": self.auc,
            "tar_at_far": [p.to_dict() for p in self.tar_at_far],
            "fnmr_at_default_fmr": self.default_point.to_dict(),
            "threshold_table": [r.to_dict() for r in self.threshold_table],
            "kfold": None
            if self.kfold is None
            else {**self.kfold.to_dict(), "mean_skipped_as_errors": self.kfold_skipped_as_errors},
            "cohorts": self.cohorts,
            "skipped_pairs": [
                {"a": str(p.a), "b": str(p.b), "same": p.same, "reason": r} for p, r in self.scored.skipped
            ],
            "notes": list(self.notes),
        }


def evaluate_scores(
    scored: PairScores,
    *,
    model_id: str,
    source: str,
    calibration: Calibration | None = None,
    threshold: float | None = None,
    default_fmr: float = DEFAULT_FMR,
    cohorts: tuple[list[str | None], list[str | None]] | None = None,
    cohort_notes: Sequence[str] = (),
) -> VerificationResult:
    """All verification metrics of ``scored``.

    The *configured* threshold is ``threshold`` if given, else the calibration's threshold for
    ``default_fmr`` (what ``faceprint verify`` would use); without either, that part is left out.
    """
    gen, imp = scored.genuine, scored.impostor
    if gen.size == 0 or imp.size == 0:
        raise FaceprintError(
            f"need at least one scored genuine and one impostor pair; have {gen.size} and {imp.size} "
            f"({len(scored.skipped)} pairs skipped" + (f", e.g. {scored.skipped[0][1]})" if scored.skipped else ")")
        )
    notes: list[str] = []
    best_acc, best_t = m.best_accuracy(gen, imp)
    eer, eer_t = m.equal_error_rate(gen, imp)
    if threshold is None and calibration is not None:
        try:
            threshold = calibration.threshold_for(default_fmr)
        except FaceprintError as exc:
            notes.append(str(exc))
    conf = None
    if threshold is not None:
        fmr_c, fnmr_c = m.error_rates_at(gen, imp, threshold)
        conf = (m.accuracy_at(gen, imp, threshold), fmr_c, fnmr_c)
    table = []
    for target in TABLE_FMRS:
        ct = cf = cn = None
        if calibration is not None and target * calibration.impostor_pairs >= 1:
            ct = calibration.threshold_for(target)
            cf, cn = m.error_rates_at(gen, imp, ct)
        table.append(ThresholdRow(target, m.tar_at_far(gen, imp, target), ct, cf, cn))
    n_all = scored.scores.size + len(scored.skipped)
    correct = np.sum((scored.scores >= best_t) == scored.same)
    kfold = kfold_errors = None
    if len(set(scored.folds.tolist()) - {-1}) >= 2:
        has = scored.folds >= 0
        kfold = m.kfold_accuracy(scored.scores[has], scored.same[has], scored.folds[has])
        labels = sorted(set(scored.folds[has].tolist()))
        skipped_per_fold = [sum(1 for p, _ in scored.skipped if p.fold == k) for k in labels]
        kfold_errors = float(
            np.mean(
                [acc * n / (n + s) for acc, n, s in zip(kfold.accuracies, kfold.pairs, skipped_per_fold, strict=True)]
            )
        )
    cohort_out = None
    if cohorts is not None:
        t = threshold if threshold is not None else best_t
        cohort_out = m.cohort_error_rates(scored.scores, scored.same, cohorts[0], cohorts[1], t)
        cohort_out["threshold_from"] = "configured" if threshold is not None else "best accuracy"
        if cohort_notes:
            cohort_out["notes"] = list(cohort_notes)
    if scored.skipped:
        notes.append(
            f"{len(scored.skipped)} of {n_all} pairs skipped because an image had no usable face or could not be read; "
            "the rates above are over the scored pairs only"
        )
    return VerificationResult(
        model_id=model_id,
        source=source,
        scored=scored,
        genuine_pairs=int(gen.size),
        impostor_pairs=int(imp.size),
        best_accuracy=best_acc,
        best_threshold=best_t,
        eer=eer,
        eer_threshold=eer_t,
        auc=m.roc_auc(gen, imp),
        tar_at_far=tuple(m.tar_at_far(gen, imp, far) for far in FAR_LEVELS),
        default_fmr=default_fmr,
        default_point=m.tar_at_far(gen, imp, default_fmr),
        configured_threshold=threshold,
        configured_accuracy=None if conf is None else conf[0],
        configured_fmr=None if conf is None else conf[1],
        configured_fnmr=None if conf is None else conf[2],
        threshold_table=tuple(table),
        kfold=kfold,
        kfold_skipped_as_errors=kfold_errors,
        accuracy_skipped_as_errors=float(correct / n_all),
        cohorts=cohort_out,
        notes=tuple(notes),
    )


# -- cohorts --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cohorts:
    """Cohort labels from the operator's evaluation data: ``key → cohort`` (a key is an image path —
    absolute, relative to the evaluation root, or a bare file name — or an identity folder name), and the keys
    given two different labels, which are left out (a pair with such an image counts for no cohort)."""

    mapping: dict[str, str]
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def label(self, path: Path, root: Path | None) -> str | None:
        return cohort_of(path, root, self.mapping)

    def describe(self) -> list[str]:
        """Notes for the report: the labels left out, by name."""
        if not self.conflicts:
            return []
        shown = ", ".join(f"{k} ({'/'.join(v)})" for k, v in sorted(self.conflicts.items())[:10])
        more = f" and {len(self.conflicts) - 10} more" if len(self.conflicts) > 10 else ""
        return [f"{len(self.conflicts)} key(s) carry two cohort labels and count for no cohort: {shown}{more}"]


def read_cohorts(path: Path) -> dict[str, str]:
    """``key → cohort`` from a two-column CSV/TSV (header optional); a key is an image path (absolute,
    relative to the evaluation root, or a bare file name) or an identity (folder) name. A key given two
    different labels raises (:func:`load_cohorts` leaves such keys out instead)."""
    cohorts = _read_csv_cohorts(path)
    if cohorts.conflicts:
        raise FaceprintError(f"{path}: {cohorts.describe()[0]}")
    return cohorts.mapping


def _read_csv_cohorts(path: Path) -> Cohorts:
    text = Path(path).read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    pairs = []
    for i, row in enumerate(csv.reader(text.splitlines(), dialect)):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0]:
            continue
        if i == 0 and cells[1].lower() in {"cohort", "group", "label"}:
            continue
        pairs.append((cells[0], cells[1]))
    if not pairs:
        raise FaceprintError(f"{path}: no 'key,cohort' rows")
    return _merge_labels(pairs)


def _merge_labels(pairs: Sequence[tuple[str, str]]) -> Cohorts:
    labels: dict[str, set[str]] = {}
    for k, label in pairs:
        labels.setdefault(k, set()).add(label)
    mapping = {k: next(iter(v)) for k, v in labels.items() if len(v) == 1}
    conflicts = {k: tuple(sorted(v)) for k, v in labels.items() if len(v) > 1}
    return Cohorts(mapping, conflicts)


def load_cohorts(specs: Sequence[str]) -> Cohorts:
    """Cohorts from ``--cohorts`` values: one CSV/TSV file (``key,cohort``), or ``LABEL=FILE`` lists (one key a
    line, e.g. LFW's ``female_names.txt``), repeatable. Keys in two lists (or given two labels) are left out
    and reported; images in none are unlabelled and count for no cohort."""
    if not specs:
        raise FaceprintError("--cohorts: give a CSV file or LABEL=FILE lists")
    lists = [s for s in specs if "=" in s and not Path(s).is_file()]
    if not lists:
        if len(specs) > 1:
            raise FaceprintError("--cohorts: give one CSV file, or several LABEL=FILE lists")
        return _read_csv_cohorts(Path(specs[0]))
    if len(lists) != len(specs):
        raise FaceprintError("--cohorts: give either one CSV file or LABEL=FILE lists, not both")
    pairs = []
    for spec in lists:
        label, _, file = spec.partition("=")
        path = Path(file)
        if not label.strip() or not path.is_file():
            raise FaceprintError(f"--cohorts {spec!r}: expected LABEL=FILE with an existing file")
        keys = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if not keys:
            raise FaceprintError(f"{path}: no keys (one image file name or identity a line)")
        pairs += [(k, label.strip()) for k in keys]
    return _merge_labels(pairs)


def cohort_of(path: Path, root: Path | None, mapping: dict[str, str]) -> str | None:
    """The cohort of an image: by full path, path relative to ``root``, file name, then identity folder."""
    candidates = [str(path)]
    if root is not None:
        with contextlib.suppress(ValueError):
            candidates.append(str(Path(path).relative_to(root)))
    candidates += [Path(path).name, Path(path).parent.name]
    return next((mapping[c] for c in candidates if c in mapping), None)
