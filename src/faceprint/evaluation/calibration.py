"""Calibration tables from a pair list or from every pair of a folder of identities.

With a folder, all same-identity pairs are genuine and *all* different-identity pairs are impostors: the
scores come from one matrix product of the embeddings, so ~10k photos give ~45 million impostor pairs and
the table resolves false-match rates down to about 1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError
from faceprint.evaluation.verification import Cohorts, PairScores
from faceprint.matching import Calibration


def all_pair_scores(vectors: np.ndarray, labels: Sequence[str], block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``(genuine, impostor)`` cosine scores of every unordered pair of rows (float32), in row blocks so
    that memory holds one block of the score matrix at a time."""
    v = np.asarray(vectors, dtype=np.float32)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    n = v.shape[0]
    genuine, impostor = [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = v[start:stop] @ v[start:].T  # rows start..stop against columns start..n
        upper = np.arange(start, n)[None, :] > np.arange(start, stop)[:, None]
        same = codes[start:stop, None] == codes[None, start:]
        genuine.append(s[upper & same])
        impostor.append(s[upper & ~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def calibrate_pairs(scored: PairScores, model_id: str, source: str) -> Calibration:
    return Calibration.from_scores(model_id, scored.genuine, scored.impostor, source)


def calibrate_identities(vectors: np.ndarray, labels: Sequence[str], model_id: str, source: str) -> Calibration:
    if len(set(labels)) < 2:
        raise FaceprintError("calibration needs photos of at least two people")
    genuine, impostor = all_pair_scores(vectors, labels)
    if genuine.size == 0:
        raise FaceprintError("calibration needs at least one person with two photos that have a face")
    return Calibration.from_scores(model_id, genuine, impostor, source)


def cohort_thresholds(scored: PairScores, cohorts: Cohorts, root: Path | None, overall: Calibration) -> dict:
    """An optional per-cohort threshold table: for each cohort (pairs whose two photos carry its label), the
    threshold that reaches each FMR level on that cohort's own impostor pairs, its FNMR there, and the FMR that
    the overall table's threshold gives the cohort. Levels finer than 1 / (the cohort's impostor pairs) are left
    out. Cohort labels come from the operator's evaluation data only (``--cohorts``)."""
    a = [cohorts.label(p.a, root) for p in scored.pairs]
    b = [cohorts.label(p.b, root) for p in scored.pairs]
    out = []
    for label in sorted({x for x in a + b if x is not None}):
        sel = np.array([x == label and y == label for x, y in zip(a, b, strict=True)], dtype=bool)
        gen, imp = scored.scores[sel & scored.same], scored.scores[sel & ~scored.same]
        if gen.size == 0 or imp.size == 0:
            continue
        table = Calibration.from_scores(overall.model_id, gen, imp, f"cohort {label}")
        rows = []
        for fmr in (1e-1, 1e-2, 1e-3, 1e-4):
            if fmr * imp.size < 1:
                continue
            t = table.threshold_for(fmr)
            t_all = overall.threshold_for(fmr)
            rows.append(
                {
                    "fmr": fmr,
                    "threshold": round(float(t), 6),
                    "fnmr": float(np.mean(gen < t)),
                    "overall_threshold": round(float(t_all), 6),
                    "fmr_at_overall": float(np.mean(imp >= t_all)),
                }
            )
        out.append(
            {"cohort": label, "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size), "thresholds": rows}
        )
    return {"model": overall.model_id, "source": overall.source, "cohorts": out, "notes": cohorts.describe()}
