"""dlib's 5-point shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014) in NumPy.

Reads ``shape_predictor_5_face_landmarks.dat`` with its own parser and reproduces
``dlib.shape_predictor(image, rect)`` without dlib:

* the shape starts at the stored mean shape, in box-normalised coordinates ((0,0) = top-left corner of the
  box, (1,1) = bottom-right);
* each cascade level samples 800 pixels placed relative to the nearest landmark of the current shape
  (through the similarity transform mean shape → current shape), rounds them to whole pixels and reads
  their grey level ``(r + g + b) // 3`` (0 outside the image);
* every tree compares two of those pixels per node (``a - b > thresh`` goes left) and its leaf adds a
  shape increment; the increments are summed in dlib's order, in float32.

dlib returns whole-pixel landmarks (it rounds to ``dlib.point``); :meth:`ShapePredictor5.predict` does the
same by default and gives the unrounded positions with ``subpixel=True``.

File format (dlib's ``serialize``): every number is a variable-length integer — a control byte
(low nibble = byte count, bit 0x80 = negative) followed by that many little-endian bytes — and a float is
two of them, ``mantissa * 2**exponent``. So the whole file is one chain of such integers, which
:func:`decode_dlib_ints` decodes with NumPy (Python loops per 2 KB block, not per number: ~0.2 s for 9 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from faceprint.errors import InvalidImage, ModelError
from faceprint.models.catalogue import model_path

__all__ = ["ShapePredictor5", "ShapePredictorModel", "decode_dlib_ints", "load_shape_predictor"]


def _chain_starts(raw: np.ndarray, block: int = 2048) -> tuple[np.ndarray, int]:
    """Start offsets of the integers in a buffer of dlib integers, and where the last one ends.

    The start of each integer depends on the length of the one before: a sequential chain. We cut the buffer
    into blocks and, in lockstep with NumPy, follow a *speculative* chain from the first byte of every block.
    Then one pass over the blocks (a Python loop per block, not per integer) enters each block where the true
    chain really does and walks it until it meets that block's speculative chain — in practice within a few
    integers — after which the two coincide. Exact for any input (a block the true chain never merges with is
    walked to its end).
    """
    n = raw.size
    step = 1 + (raw & 0x0F).astype(np.int64)
    first = np.arange(0, n, block, dtype=np.int64)
    end = np.minimum(first + block, n)
    on_spec = np.zeros(n, dtype=bool)
    exit_pos = first.copy()  # where each block's speculative chain leaves the block
    active = np.arange(first.size)
    while active.size:
        p = exit_pos[active]
        on_spec[p] = True
        p = p + step[p]
        exit_pos[active] = p
        active = active[p < end[active]]
    walked: list[int] = []
    merge = np.empty(first.size, dtype=np.int64)
    entry = 0
    for b in range(first.size):
        p, stop = entry, int(end[b])
        while p < stop and not on_spec[p]:
            walked.append(p)
            p += int(step[p])
        merge[b] = p
        entry = int(exit_pos[b]) if p < stop else p
    keep = on_spec
    for b in np.flatnonzero(merge > first):  # speculative starts before the merge point are not real
        keep[first[b] : min(merge[b], end[b])] = False
    keep[np.array(walked, dtype=np.int64)] = True
    return np.flatnonzero(keep), entry


def decode_dlib_ints(data: bytes) -> np.ndarray:
    """Decode a buffer that is nothing but dlib variable-length integers into an int64 array."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts, stop = _chain_starts(raw)
    control = raw[starts]
    sizes = (control & 0x0F).astype(np.int64)
    if np.any(sizes > 8) or np.any(sizes == 0) or stop != raw.size:
        raise ModelError("not a dlib serialised file (bad integer encoding)")
    padded = np.concatenate([raw, np.zeros(9, dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)[starts + 1]
    values = np.ascontiguousarray(windows).view("<u8").ravel()
    mask = np.where(sizes >= 8, np.uint64(0xFFFFFFFFFFFFFFFF), (np.uint64(1) << (8 * sizes).astype(np.uint64)) - 1)
    values = (values & mask).astype(np.int64)
    return np.where(control & 0x80, -values, values)


def _floats(ints: np.ndarray) -> np.ndarray:
    """Pairs (mantissa, exponent) → float32, as dlib's ``float_details`` converts back to float."""
    mantissa = ints[0::2].astype(np.float32)
    exponent = ints[1::2]
    special = exponent >= 32000
    out = np.ldexp(mantissa, np.where(special, 0, exponent).astype(np.int32)).astype(np.float32)
    if special.any():
        out[exponent == 32000] = np.inf
        out[exponent == 32001] = -np.inf
        out[exponent == 32002] = np.nan
    return out


@dataclass(frozen=True)
class ShapePredictorModel:
    """The arrays of a dlib ``shape_predictor``; C = cascade levels, T = trees per level, P = points."""

    initial_shape: np.ndarray  # (P, 2) float32, box-normalised
    split_idx1: np.ndarray  # (C, T, S) int64, S = splits per tree (a full binary tree)
    split_idx2: np.ndarray  # (C, T, S) int64
    split_thresh: np.ndarray  # (C, T, S) float32
    leaf_values: np.ndarray  # (C, T, S + 1, 2P) float32
    anchor_idx: np.ndarray  # (C, F) int64, F = feature pixels per level
    deltas: np.ndarray  # (C, F, 2) float32

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])

    @property
    def depth(self) -> int:
        return int(np.log2(self.leaf_values.shape[2]))


class _Cursor:
    """Reads the decoded integer stream structure by structure."""

    def __init__(self, ints: np.ndarray) -> None:
        self.ints = ints
        self.pos = 0

    def take(self, count: int) -> np.ndarray:
        if self.pos + count > self.ints.size:
            raise ModelError("dlib shape predictor file is truncated")
        out = self.ints[self.pos : self.pos + count]
        self.pos += count
        return out

    def int(self) -> int:
        return int(self.take(1)[0])


def _parse(data: bytes) -> ShapePredictorModel:
    cur = _Cursor(decode_dlib_ints(data))
    if cur.int() != 1:
        raise ModelError("unexpected dlib shape_predictor version")
    rows, cols = abs(cur.int()), abs(cur.int())
    initial = _floats(cur.take(2 * rows * cols))
    num_coords = rows * cols
    if cols != 1 or num_coords % 2:
        raise ModelError("dlib shape_predictor: initial shape is not a column of (x, y) pairs")

    num_levels = cur.int()
    idx1, idx2, thresh, leaves = [], [], [], []
    for _ in range(num_levels):
        num_trees = cur.int()
        num_splits = int(cur.ints[cur.pos])
        # One tree = [S, S × (idx1, idx2, mantissa, exponent), L, L × (rows, cols, 2·coords)]; all trees of
        # the stored models have the same S and L, so a level is one rectangular block of integers.
        per_tree = 1 + 4 * num_splits + 1 + (num_splits + 1) * (2 + 2 * num_coords)
        block = cur.take(num_trees * per_tree).reshape(num_trees, per_tree)
        splits = block[:, 1 : 1 + 4 * num_splits].reshape(num_trees, num_splits, 4)
        leaf_block = block[:, 2 + 4 * num_splits :].reshape(num_trees, num_splits + 1, 2 + 2 * num_coords)
        if (
            np.any(block[:, 0] != num_splits)
            or np.any(block[:, 1 + 4 * num_splits] != num_splits + 1)
            or np.any(np.abs(leaf_block[:, :, 0]) != num_coords)
            or np.any(np.abs(leaf_block[:, :, 1]) != 1)
            or (num_splits + 1) & num_splits
        ):
            raise ModelError("dlib shape_predictor: trees of irregular shape are not supported")
        idx1.append(splits[:, :, 0])
        idx2.append(splits[:, :, 1])
        thresh.append(_floats(splits[:, :, 2:].reshape(-1)).reshape(num_trees, num_splits))
        leaves.append(_floats(leaf_block[:, :, 2:].reshape(-1)).reshape(num_trees, num_splits + 1, num_coords))

    if cur.int() != num_levels:
        raise ModelError("dlib shape_predictor: anchor table does not match the cascade")
    anchors = []
    for _ in range(num_levels):
        anchors.append(cur.take(cur.int()).copy())
    if cur.int() != num_levels:
        raise ModelError("dlib shape_predictor: delta table does not match the cascade")
    deltas = []
    for _ in range(num_levels):
        count = cur.int()
        deltas.append(_floats(cur.take(4 * count)).reshape(count, 2))
    if cur.pos != cur.ints.size:
        raise ModelError("dlib shape_predictor: trailing data after the model")
    try:
        model = ShapePredictorModel(
            initial_shape=initial.reshape(-1, 2),
            split_idx1=np.stack(idx1),
            split_idx2=np.stack(idx2),
            split_thresh=np.stack(thresh),
            leaf_values=np.stack(leaves),
            anchor_idx=np.stack(anchors),
            deltas=np.stack(deltas),
        )
    except ValueError as exc:  # levels of different sizes
        raise ModelError(f"dlib shape_predictor: irregular cascade ({exc})") from None
    num_features = model.deltas.shape[1]
    if (
        model.anchor_idx.shape[1] != num_features
        or model.anchor_idx.max() >= model.num_parts
        or max(model.split_idx1.max(), model.split_idx2.max()) >= num_features
    ):
        raise ModelError("dlib shape_predictor: indices out of range")
    return model


@cache
def load_shape_predictor(model_id: str = "dlib-shape5") -> ShapePredictorModel:
    """Parse a catalogued shape predictor once per process (≈ 1 s for the 9 MB 5-point model)."""
    return _parse(model_path(model_id).read_bytes())


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms src → dst (Umeyama), batched: (P,2), (K,P,2) → (K,2,2), in float64.

    Only the linear part is needed: dlib applies it to offsets from the anchor landmarks.
    """
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    src_c = src - src.mean(axis=0)
    dst_c = dst - dst.mean(axis=1, keepdims=True)
    var_src = (src_c**2).sum(axis=1).mean()
    cov = np.einsum("kpi,pj->kij", dst_c, src_c) / src.shape[0]
    u, d, vt = np.linalg.svd(cov)
    s = np.ones_like(d)
    det_cov = np.linalg.det(cov)
    flip = (det_cov < 0) | ((det_cov == 0) & (np.linalg.det(u) * np.linalg.det(vt) < 0))
    # dlib flips the sign of the smaller singular value's direction
    s[flip, 1] = -1.0
    rot = np.einsum("kij,kj,kjl->kil", u, s, vt)
    scale = (d * s).sum(axis=1) / var_src if var_src != 0 else np.ones(len(d))
    return rot * scale[:, None, None]


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """dlib's float → integer point conversion: ``floor(v + 0.5)``."""
    return np.floor(values + 0.5)


class ShapePredictor5:
    """Five facial landmarks (dlib's ``shape_predictor_5_face_landmarks``) for given face boxes."""

    model_id = "dlib-shape5"

    def __init__(self) -> None:
        self.model = load_shape_predictor(self.model_id)

    def predict(self, image: np.ndarray, boxes: np.ndarray, *, subpixel: bool = False) -> np.ndarray:
        """Landmarks for each box: K×5×2 float32 (x, y) in image pixels, order as ``Detection`` documents.

        ``image``: H×W×3 uint8 RGB (or H×W uint8 grey). ``boxes``: K×4 ``(x1, y1, x2, y2)`` with x2/y2
        exclusive, as the detectors return them; the box is dlib's rectangle
        ``(left=x1, top=y1, right=x2-1, bottom=y2-1)``. With ``subpixel=False`` (default) the points are
        rounded to whole pixels exactly as dlib does, so they equal ``dlib.shape_predictor`` output.
        """
        pixels = _pixels(image)  # (H·W, channels) view, no copy
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        num_boxes = boxes.shape[0]
        m = self.model
        if num_boxes == 0:
            return np.zeros((0, m.num_parts, 2), dtype=np.float32)
        height, width = image.shape[:2]
        # dlib's unnormalising transform: (0,0) → top-left corner, (1,1) → bottom-right corner
        origin = boxes[:, None, :2]  # (K,1,2)
        span = np.stack([boxes[:, 2] - 1 - boxes[:, 0], boxes[:, 3] - 1 - boxes[:, 1]], axis=1)[:, None, :]

        shape = np.broadcast_to(m.initial_shape, (num_boxes, m.num_parts, 2)).astype(np.float32)
        faces = np.arange(num_boxes)[:, None]
        trees = np.arange(m.split_idx1.shape[1])[None, :]
        num_splits = m.split_idx1.shape[2]
        for level in range(m.split_idx1.shape[0]):
            tform = _similarity(m.initial_shape, shape).astype(np.float32)  # (K,2,2)
            d = m.deltas[level]  # (F,2)
            # float32 like dlib: tform * delta + anchor point
            px = tform[:, None, 0, 0] * d[None, :, 0] + tform[:, None, 0, 1] * d[None, :, 1]
            py = tform[:, None, 1, 0] * d[None, :, 0] + tform[:, None, 1, 1] * d[None, :, 1]
            anchor = shape[:, m.anchor_idx[level], :]  # (K,F,2)
            pts = np.stack([px + anchor[..., 0], py + anchor[..., 1]], axis=-1).astype(np.float64)
            pix = _round_half_up(origin + span * pts)
            x, y = pix[..., 0], pix[..., 1]
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            lin = np.where(inside, y * width + x, 0).astype(np.int64)
            # grey level of only the sampled pixels: dlib's integer mean (r + g + b) // 3
            grey = pixels[lin].sum(axis=-1, dtype=np.uint16) // pixels.shape[1]
            features = np.where(inside, grey, 0).astype(np.float32)  # (K,F)

            node = np.zeros((num_boxes, trees.shape[1]), dtype=np.int64)
            i1, i2, th = m.split_idx1[level], m.split_idx2[level], m.split_thresh[level]
            for _ in range(m.depth):
                a = features[faces, i1[trees, node]]
                b = features[faces, i2[trees, node]]
                node = 2 * node + np.where(a - b > th[trees, node], 1, 2)
            increments = m.leaf_values[level][trees, node - num_splits]  # (K,T,2P)
            # dlib adds the trees' increments one after the other in float32; cumsum keeps that order
            chain = np.concatenate([shape.reshape(num_boxes, 1, -1), increments], axis=1)
            shape = np.cumsum(chain, axis=1, dtype=np.float32)[:, -1].reshape(num_boxes, m.num_parts, 2)

        points = origin + span * shape.astype(np.float64)
        if not subpixel:
            points = _round_half_up(points)
        return points.astype(np.float32)


def _pixels(image: np.ndarray) -> np.ndarray:
    """The image as an (H·W, channels) uint8 array; grey images have one channel."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImage("image", "expected a uint8 numpy array")
    if image.ndim == 2:
        return image.reshape(-1, 1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage("image", f"expected H×W×3 RGB or H×W grey, got shape {image.shape}")
    return image.reshape(-1, 3)
