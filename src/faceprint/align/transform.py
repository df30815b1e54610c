"""Similarity transforms between landmark sets (least squares, no reflection)."""

from __future__ import annotations

import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 matrix ``M`` of the similarity (scale, rotation, translation) that best maps ``src`` onto ``dst``.

    Umeyama's closed form: minimises ``sum |M @ [src, 1] - dst|²`` over similarity transforms.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    var_src = (src_c**2).sum() / len(src)
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def transform_scale(matrix: np.ndarray) -> float:
    """The isotropic scale of a 2×3 similarity matrix."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
