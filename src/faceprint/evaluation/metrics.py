"""Error-rate metrics for verification, identification and detection (pure NumPy, no models).

Conventions (the same as :mod:`faceprint.matching`): a *score* is a similarity (higher = more alike) and a
pair is accepted as a match when ``score >= threshold``. Genuine (mated) pairs show the same person, impostor
(non-mated) pairs two different people.

- FMR / FAR  = fraction of impostor pairs accepted;   TAR = fraction of genuine pairs accepted;
- FNMR / FRR = 1 - TAR;  EER = the rate where FMR and FNMR are equal.

A false-match rate can only be measured down to ``1 / impostor_pairs``: :func:`tar_at_far` returns an
:class:`OperatingPoint` with ``supported=False`` (and no numbers) below that, rather than a figure that is
really a count of zero or one pair.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faceprint.errors import InvalidArgument

FloatArray = np.ndarray


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise InvalidArgument(f"{name} scores are empty")
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{name} scores contain NaN or infinity")
    return arr


# -- curves ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RocCurve:
    """ROC/DET points at every distinct score, thresholds descending (the first threshold is +inf).

    ``fmr[i]`` and ``tar[i]`` are the rates at ``score >= thresholds[i]``; ``fnmr = 1 - tar``.
    """

    thresholds: np.ndarray
    fmr: np.ndarray
    tar: np.ndarray

    @property
    def fnmr(self) -> np.ndarray:
        return 1.0 - self.tar


def roc_curve(genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray) -> RocCurve:
    """The full ROC (same points as scikit-learn's ``roc_curve(..., drop_intermediate=False)``)."""
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    thresholds = np.unique(np.concatenate([gen, imp]))[::-1]
    gen_sorted, imp_sorted = np.sort(gen), np.sort(imp)
    # Count of scores >= t for every t, via binary search in the ascending arrays.
    tar = (gen.size - np.searchsorted(gen_sorted, thresholds, side="left")) / gen.size
    fmr = (imp.size - np.searchsorted(imp_sorted, thresholds, side="left")) / imp.size
    return RocCurve(
        thresholds=np.concatenate([[np.inf], thresholds]),
        fmr=np.concatenate([[0.0], fmr]),
        tar=np.concatenate([[0.0], tar]),
    )


def roc_auc(genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC = P(genuine score > impostor score) + ½ P(tie) (Mann–Whitney U)."""
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    both = np.concatenate([gen, imp])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_vals = both[order]
    # Average ranks of ties: rank of a run = mean of its positions (1-based).
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: gen.size].sum() - gen.size * (gen.size + 1) / 2.0
    return float(u / (gen.size * imp.size))


def equal_error_rate(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """``(eer, threshold)``: where the FMR and FNMR curves cross, linearly interpolated between the two
    neighbouring ROC points (the threshold is interpolated the same way)."""
    return curve_eer(roc_curve(genuine, impostor))


def curve_eer(roc: RocCurve) -> tuple[float, float]:
    """``(eer, threshold)`` of a curve (thresholds descending, ``fmr`` rising from 0, ``tar`` rising to 1):
    :func:`equal_error_rate` for curves built otherwise, e.g. liveness's worst-attack-type APCER."""
    fmr, fnmr = roc.fmr, roc.fnmr
    diff = fnmr - fmr  # starts at 1 (threshold +inf) and falls to <= 0 at the lowest threshold
    i = int(np.nonzero(diff <= 0)[0][0])
    if i == 0 or diff[i] == 0:
        t = roc.thresholds[i] if np.isfinite(roc.thresholds[i]) else roc.thresholds[1]
        return float(fmr[i]), float(t)
    # Between point i-1 (diff > 0) and point i (diff <= 0).
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fmr[i - 1] + w * (fmr[i] - fmr[i - 1])
    t_hi = roc.thresholds[i - 1] if np.isfinite(roc.thresholds[i - 1]) else roc.thresholds[i]
    threshold = t_hi + w * (roc.thresholds[i] - t_hi)
    return float(eer), float(threshold)


# -- operating points -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatingPoint:
    """TAR (and FNMR) at a target FAR/FMR, or the reason the data cannot resolve that target."""

    target_fmr: float
    supported: bool
    threshold: float | None = None
    tar: float | None = None
    fmr: float | None = None  # the measured FMR at ``threshold`` (<= target)
    impostor_pairs: int = 0
    reason: str = ""

    @property
    def fnmr(self) -> float | None:
        return None if self.tar is None else 1.0 - self.tar

    def to_dict(self) -> dict:
        out: dict = {"target_fmr": self.target_fmr, "supported": self.supported}
        if self.supported:
            out.update(threshold=round(float(self.threshold or 0), 6), tar=self.tar, fnmr=self.fnmr, fmr=self.fmr)
        else:
            out["reason"] = self.reason
        return out


def min_pairs_for(fmr: float) -> int:
    """Impostor pairs needed before an FMR of ``fmr`` means anything: at least one pair may be a false
    match (``ceil(1 / fmr)``). Fewer pairs measure an FMR of 0 at best, which says nothing about ``fmr``."""
    return math.ceil(1.0 / fmr - 1e-9)


def threshold_at_fmr(impostor: Sequence[float] | np.ndarray, fmr: float) -> float:
    """The lowest threshold whose measured FMR is at most ``fmr``.

    With ``k = floor(fmr·N)`` false matches allowed, it sits just above the (k+1)-th highest impostor score.
    """
    imp = np.sort(_scores(impostor, "impostor"))[::-1]
    allowed = math.floor(fmr * imp.size + 1e-9)
    if allowed >= imp.size:
        return float(imp[-1])
    return float(np.nextafter(imp[allowed], np.inf))


def tar_at_far(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray, far: float
) -> OperatingPoint:
    """TAR at the lowest threshold whose measured FAR is at most ``far`` (see :func:`min_pairs_for`)."""
    if not 0 < far <= 1:
        raise InvalidArgument(f"far must be in (0, 1], got {far}")
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    need = min_pairs_for(far)
    if imp.size < need:
        return OperatingPoint(
            far,
            False,
            impostor_pairs=imp.size,
            reason=f"needs at least {need:,} impostor pairs to resolve FAR {far:g}; have {imp.size:,}",
        )
    t = threshold_at_fmr(imp, far)
    return OperatingPoint(
        far,
        True,
        threshold=t,
        tar=float(np.mean(gen >= t)),
        fmr=float(np.mean(imp >= t)),
        impostor_pairs=imp.size,
    )


def fnmr_at_fmr(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray, fmr: float
) -> float | None:
    """FNMR at the threshold of :func:`tar_at_far`; ``None`` when the impostor count cannot resolve ``fmr``."""
    return tar_at_far(genuine, impostor, fmr).fnmr


def error_rates_at(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray, threshold: float
) -> tuple[float, float]:
    """``(fmr, fnmr)`` at ``threshold``."""
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    return float(np.mean(imp >= threshold)), float(np.mean(gen < threshold))


def accuracy_at(
    genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray, threshold: float
) -> float:
    """Fraction of all pairs decided correctly at ``threshold``."""
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    return float((np.sum(gen >= threshold) + np.sum(imp < threshold)) / (gen.size + imp.size))


def best_accuracy(genuine: Sequence[float] | np.ndarray, impostor: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(accuracy, threshold)`` maximising accuracy over all thresholds.

    The threshold returned is the midpoint between the winning score and the next lower distinct score, so
    it generalises to unseen pairs better than a threshold sitting exactly on a training score.
    """
    gen, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    roc = roc_curve(gen, imp)
    correct = roc.tar * gen.size + (1.0 - roc.fmr) * imp.size
    i = int(np.argmax(correct))  # first (highest-threshold) maximum
    accuracy = float(correct[i] / (gen.size + imp.size))
    t = roc.thresholds
    if i == 0:  # reject everything: just above the top score
        return accuracy, float(np.nextafter(t[1], np.inf))
    lower = t[i + 1] if i + 1 < t.size else t[i] - 1e-6
    return accuracy, float((t[i] + lower) / 2.0)


# -- k-fold protocol ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KFoldResult:
    """Per-fold accuracy with each fold's threshold chosen on the other folds (LFW View 2 protocol)."""

    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]
    pairs: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Sample standard deviation over folds (ddof=1), as usually printed after the ±."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    @property
    def standard_error(self) -> float:
        """``std / sqrt(k)``: LFW's own results page reports this one."""
        return self.std / math.sqrt(len(self.accuracies))

    def to_dict(self) -> dict:
        return {
            "folds": len(self.accuracies),
            "mean": self.mean,
            "std": self.std,
            "standard_error": self.standard_error,
            "accuracies": list(self.accuracies),
            "thresholds": [round(t, 6) for t in self.thresholds],
            "pairs": list(self.pairs),
        }


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """Accuracy of each fold at the best-accuracy threshold of the union of the other folds."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    labels = np.unique(folds)
    if labels.size < 2:
        raise InvalidArgument("k-fold evaluation needs at least two folds")
    accs, ths, counts = [], [], []
    for k in labels:
        test = folds == k
        train = ~test
        _, t = best_accuracy(scores[train & same], scores[train & ~same])
        pred = scores[test] >= t
        accs.append(float(np.mean(pred == same[test])))
        ths.append(t)
        counts.append(int(test.sum()))
    return KFoldResult(tuple(accs), tuple(ths), tuple(counts))


# -- identification -------------------------------------------------------------------------------------
def cmc(scores: np.ndarray, gallery_labels: Sequence, probe_labels: Sequence, max_rank: int = 20) -> np.ndarray:
    """Cumulative match characteristic: ``out[k-1]`` = fraction of (mated) probes whose true identity is
    among the ``k`` highest-scoring gallery entries. ``scores`` is probes × gallery; every probe must have
    its identity in the gallery. Ties are broken against the mate (a conservative rank)."""
    scores = np.asarray(scores, dtype=np.float64)
    gallery = np.asarray(gallery_labels)
    probes = np.asarray(probe_labels)
    mate = probes[:, None] == gallery[None, :]
    if not mate.any(axis=1).all():
        raise InvalidArgument("every probe passed to cmc must have its identity in the gallery")
    mate_score = np.where(mate, scores, -np.inf).max(axis=1)
    # Rank = 1 + number of non-mate entries scoring at least the best mate score.
    rank = 1 + np.sum(np.where(mate, False, scores >= mate_score[:, None]), axis=1)
    max_rank = min(max_rank, gallery.size)
    return np.array([np.mean(rank <= k) for k in range(1, max_rank + 1)])


@dataclass(frozen=True)
class OpenSetPoint:
    """FNIR at a target FPIR (rank-1, NIST FRVT convention), or why the data cannot resolve it."""

    target_fpir: float
    supported: bool
    threshold: float | None = None
    fnir: float | None = None
    fpir: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        out: dict = {"target_fpir": self.target_fpir, "supported": self.supported}
        if self.supported:
            out.update(threshold=round(float(self.threshold or 0), 6), fnir=self.fnir, fpir=self.fpir)
        else:
            out["reason"] = self.reason
        return out


def fnir_at_fpir(
    mated_top_score: np.ndarray, mated_rank1_correct: np.ndarray, nonmated_top_score: np.ndarray, fpir: float
) -> OpenSetPoint:
    """Open-set identification at a target false-positive identification rate.

    FPIR(t) = fraction of non-mated probes whose best gallery score is ``>= t``; FNIR(t) = fraction of mated
    probes whose mate is not the rank-1 candidate or scores below ``t``.
    """
    nonmated = _scores(nonmated_top_score, "non-mated")
    top = np.asarray(mated_top_score, dtype=np.float64)
    correct = np.asarray(mated_rank1_correct, dtype=bool)
    need = min_pairs_for(fpir)
    if nonmated.size < need:
        return OpenSetPoint(
            fpir,
            False,
            reason=f"needs at least {need:,} non-mated probes to resolve FPIR {fpir:g}; have {nonmated.size:,}",
        )
    t = threshold_at_fmr(nonmated, fpir)
    fnir = float(np.mean(~(correct & (top >= t)))) if top.size else 0.0
    return OpenSetPoint(fpir, True, threshold=t, fnir=fnir, fpir=float(np.mean(nonmated >= t)))


# -- detection ------------------------------------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` (N×4) and ``b`` (M×4), ``(x1, y1, x2, y2)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(
    truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray, iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one image, highest score first (PASCAL VOC rule).

    Returns ``(is_true_positive per prediction, matched per truth box)``.
    """
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.zeros(predicted.shape[0], dtype=bool)
    matched = np.zeros(truth.shape[0], dtype=bool)
    if truth.shape[0] == 0 or predicted.shape[0] == 0:
        return tp, matched
    ious = box_iou(predicted, truth)
    for i in order:
        candidates = np.where(matched, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou:
            tp[i] = True
            matched[j] = True
    return tp, matched


@dataclass(frozen=True)
class PrecisionRecall:
    scores: np.ndarray  # descending
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float


def precision_recall(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> PrecisionRecall:
    """Precision/recall over all detections pooled across images, and AP as the area under the
    monotone (interpolated) precision envelope (PASCAL VOC 2010+ / WIDER FACE all-point AP)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    tp = np.asarray(is_tp, dtype=bool)[order]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / max(n_truth, 1)
    precision = ctp / np.maximum(ctp + cfp, 1)
    if scores.size == 0 or n_truth == 0:
        return PrecisionRecall(scores[order], precision, recall, 0.0)
    mrec = np.concatenate([[0.0], recall, [recall[-1]]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    ap = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return PrecisionRecall(scores[order], precision, recall, ap)


def miss_rate_by_size(
    sizes: np.ndarray, matched: np.ndarray, edges: Sequence[float] = (0, 20, 40, 80, 160, np.inf)
) -> list[dict]:
    """Miss rate of ground-truth faces binned by size (``sqrt(w·h)`` pixels)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    matched = np.asarray(matched, dtype=bool)
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (sizes >= lo) & (sizes < hi)
        n = int(sel.sum())
        label = f"{int(lo)}–{int(hi)} px" if np.isfinite(hi) else f"≥{int(lo)} px"
        out.append(
            {
                "size": label,
                "faces": n,
                "missed": int((~matched[sel]).sum()),
                "miss_rate": None if n == 0 else float(np.mean(~matched[sel])),
            }
        )
    return out


# -- cohorts --------------------------------------------------------------------------------------------
def cohort_error_rates(
    scores: np.ndarray,
    same: np.ndarray,
    cohort_a: Sequence[str | None],
    cohort_b: Sequence[str | None],
    threshold: float,
) -> dict:
    """FMR and FNMR per cohort at ``threshold``.

    A pair belongs to a cohort when both sides carry that label (cross-cohort impostor pairs are counted
    under ``"(mixed)"`` for FMR only, since demographic differentials are usually quoted within cohorts).
    The ratios compare the worst cohort with the best one (only cohorts with at least one pair of the kind).
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    a = np.asarray([c if c is not None else "" for c in cohort_a], dtype=object)
    b = np.asarray([c if c is not None else "" for c in cohort_b], dtype=object)
    labels = sorted({str(c) for c in np.concatenate([a, b]) if c})
    rows = []
    for label in labels:
        sel = (a == label) & (b == label)
        gen, imp = scores[sel & same], scores[sel & ~same]
        rows.append(
            {
                "cohort": label,
                "genuine_pairs": int(gen.size),
                "impostor_pairs": int(imp.size),
                "fnmr": float(np.mean(gen < threshold)) if gen.size else None,
                "fmr": float(np.mean(imp >= threshold)) if imp.size else None,
            }
        )
    mixed = (a != b) & (a != "") & (b != "") & ~same
    if mixed.any():
        rows.append(
            {
                "cohort": "(mixed)",
                "genuine_pairs": 0,
                "impostor_pairs": int(mixed.sum()),
                "fnmr": None,
                "fmr": float(np.mean(scores[mixed] >= threshold)),
            }
        )

    def ratio(key: str) -> float | None:
        vals = [r[key] for r in rows if r["cohort"] != "(mixed)" and r[key] is not None]
        if len(vals) < 2:
            return None
        lo, hi = min(vals), max(vals)
        return float("inf") if lo == 0 and hi > 0 else (1.0 if hi == 0 else float(hi / lo))

    unlabelled = (a == "") | (b == "")
    return {
        "threshold": threshold,
        "cohorts": rows,
        "fmr_ratio": ratio("fmr"),
        "fnmr_ratio": ratio("fnmr"),
        "unlabelled_pairs": int(unlabelled.sum()),
        "drivers": {"fnmr": _driver(rows, "fnmr", "genuine_pairs"), "fmr": _driver(rows, "fmr", "impostor_pairs")},
    }


def _driver(rows: list[dict], rate: str, pairs: str) -> dict | None:
    """The cohort with the highest ``rate``, with its share of the errors and of the pairs (within-cohort
    pairs only); None when fewer than two cohorts have such pairs or no cohort has an error."""
    within = [r for r in rows if r["cohort"] != "(mixed)" and r[rate] is not None]
    errors = {r["cohort"]: r[rate] * r[pairs] for r in within}
    total_errors, total_pairs = sum(errors.values()), sum(r[pairs] for r in within)
    if len(within) < 2 or total_errors == 0:
        return None
    worst = max(within, key=lambda r: r[rate])
    best = min(within, key=lambda r: r[rate])
    return {
        "cohort": worst["cohort"],
        "rate": worst[rate],
        "best_cohort": best["cohort"],
        "best_rate": best[rate],
        "error_share": float(errors[worst["cohort"]] / total_errors),
        "pair_share": float(worst[pairs] / total_pairs),
    }
