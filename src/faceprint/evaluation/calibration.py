"""Calibration tables from a pair list or from every pair of a folder of identities.

With a folder, all same-identity pairs are genuine and *all* different-identity pairs are impostors: the
scores come from one matrix product of the embeddings, so ~10k photos give ~45 million impostor pairs and
the table resolves false-match rates down to about 1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faceprint.errors import FaceprintError
from faceprint.evaluation.verification import PairScores
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
