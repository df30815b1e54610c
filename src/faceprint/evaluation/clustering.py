"""Clustering quality against true identities: pairwise and BCubed precision/recall/F1 (vectorised NumPy).

``truth`` and ``predicted`` are one label per face. A predicted label ``< 0`` (or 0 with
``outlier_label=0``) is an outlier: scored as its own singleton cluster, as a person browsing the result
sees it (one face, no group).

- pairwise: over all pairs of faces, precision = pairs put together that are one person / pairs put
  together; recall = pairs put together that are one person / pairs that are one person.
- BCubed (Bagga & Baldwin): per face, precision = the share of its cluster that is its person, recall = the
  share of its person that is in its cluster; averaged over faces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from faceprint.errors import InvalidArgument


@dataclass(frozen=True)
class ClusteringScores:
    faces: int
    identities: int
    clusters: int  # clusters of two or more faces
    singletons: int  # faces alone (outliers and one-face clusters)
    singleton_rate: float
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _codes(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].ravel()


def contingency(truth: np.ndarray, predicted: np.ndarray, *, outlier_label: int | None = None) -> np.ndarray:
    """T×P counts of faces per (true identity, predicted cluster); outliers become singleton clusters."""
    truth = np.asarray(truth).ravel()
    pred = np.asarray(predicted).ravel().astype(np.int64).copy()
    if truth.shape != pred.shape:
        raise InvalidArgument(f"truth has {truth.size} labels, predicted {pred.size}")
    outliers = pred < 0 if outlier_label is None else pred == outlier_label
    pred[outliers] = pred.max(initial=0) + 1 + np.arange(int(outliers.sum()))
    t, p = _codes(truth), _codes(pred)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def clustering_scores(
    truth: np.ndarray, predicted: np.ndarray, *, outlier_label: int | None = None
) -> ClusteringScores:
    """Pairwise and BCubed scores (see the module docstring)."""
    table = contingency(truth, predicted, outlier_label=outlier_label)
    n = int(table.sum())
    if n == 0:
        raise InvalidArgument("no faces to score")
    sizes_pred = table.sum(axis=0)
    sizes_true = table.sum(axis=1)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    together, same, both = pairs(sizes_pred), pairs(sizes_true), pairs(table)
    pp = 1.0 if together == 0 else both / together
    pr = 1.0 if same == 0 else both / same
    sq = table.astype(np.float64) ** 2
    bp = float((sq / sizes_pred[None, :]).sum() / n)
    br = float((sq / sizes_true[:, None]).sum() / n)
    singletons = int((sizes_pred == 1).sum())
    return ClusteringScores(
        faces=n,
        identities=int(table.shape[0]),
        clusters=int((sizes_pred >= 2).sum()),
        singletons=singletons,
        singleton_rate=singletons / n,
        pairwise_precision=pp,
        pairwise_recall=pr,
        pairwise_f1=_f1(pp, pr),
        bcubed_precision=bp,
        bcubed_recall=br,
        bcubed_f1=_f1(bp, br),
    )


def clustering_table(scores: ClusteringScores, *, title: str) -> str:
    """The scores as a Markdown block."""
    s = scores
    return (
        f"## {title}\n\n"
        f"{s.faces} faces of {s.identities} identities → {s.clusters} clusters, "
        f"{s.singletons} singletons ({s.singleton_rate:.1%})\n\n"
        "| | precision | recall | F1 |\n| --- | --- | --- | --- |\n"
        f"| pairwise | {s.pairwise_precision:.4f} | {s.pairwise_recall:.4f} | {s.pairwise_f1:.4f} |\n"
        f"| BCubed | {s.bcubed_precision:.4f} | {s.bcubed_recall:.4f} | {s.bcubed_f1:.4f} |\n"
    )
