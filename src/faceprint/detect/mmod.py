"""dlib's MMOD CNN face detector on ONNX Runtime, with dlib's own pre- and post-processing.

What ``dlib.cnn_face_detection_model_v1(path)(image, upsample)`` does, step by step, and here:

1. *Upsampling* (optional): ``pyramid_up`` with ``pyramid_down<2>`` — a bilinear resize (corners aligned) to
   ``(2·rows + 1) × (2·cols + 2)``, truncated to uint8; detections are mapped back with ``p/2 − (1.25, 0.75)``.
2. *Input tensor* (``input_rgb_image_pyramid``): each channel becomes ``(v − mean) / 256`` and the image and
   its ``pyramid_down<6>`` levels (each 5/6 of the one before, floor-rounded, down to 5 rows) are packed into
   ONE zero-filled image: the larger levels in a column on the left, the smaller ones stacked bottom-up along
   the right edge, ``pyramid_padding`` pixels apart and ``pyramid_outer_padding`` from the border. Each level
   is a corner-aligned bilinear resize of the level before it, of the normalised floats. The whole pyramid is
   then one ONNX Runtime run.
3. *Detections* (``loss_mmod``): every score-map cell with score > threshold is a detector window
   (80×80 for this model) centred on the cell's input-tensor point; its centre picks the pyramid level (the
   tile containing it, else the nearest tile); the window is moved to that tile's origin and scaled up level
   by level with ``p·6/5 + 0.3``, then rounded (``lround``) to an integer dlib rectangle.
4. *Non-max suppression*: by descending score, a box is dropped when it overlaps a kept one with
   ``intersection / bounding-box-of-both > nms_iou`` or covers more than ``nms_percent_covered`` of either
   (dlib's ``test_box_overlap``; rectangles are inclusive pixel ranges).

Boxes are returned like :class:`faceprint.detect.hog.HOGDetector` returns them: dlib's inclusive rectangle
turned into ``(left, top, right + 1, bottom + 1)``, clipped to the image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.base import RawDetection
from faceprint.errors import InvalidArgument, InvalidImage
from faceprint.models.catalogue import model_path
from faceprint.models.convert import converted_model
from faceprint.models.mmod_onnx import (
    CONVERTER_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    MMODGeometry,
    build_mmod_onnx,
    build_resize_onnx,
    read_mmod,
)
from faceprint.models.quantize import has_int8, int8_model
from faceprint.models.runtime import create_session

__all__ = ["MMODDetector", "TiledPyramid", "tiled_pyramid_layout"]

_PYRAMID_N = 6  # pyramid_down<6>: each level is (N-1)/N = 5/6 of the previous one
_MIN_LEVEL_ROWS = 5


@dataclass(frozen=True)
class TiledPyramid:
    """Where each pyramid level sits in the tiled image: ``rects[i] = (left, top, right, bottom)``, inclusive."""

    rects: np.ndarray  # (L, 4) int64
    rows: int
    cols: int


def tiled_pyramid_layout(rows: int, cols: int, padding: int, outer_padding: int) -> TiledPyramid:
    """dlib's ``compute_tiled_image_pyramid_details`` for ``pyramid_down<6>``."""
    if rows * cols == 0:
        return TiledPyramid(np.zeros((0, 4), np.int64), 0, 0)
    sizes = [(cols, rows)]  # (width, height) of each level
    rate = (_PYRAMID_N - 1.0) / _PYRAMID_N
    nr, nc = rows, cols
    while True:
        nr, nc = int(np.floor(rate * nr)), int(np.floor(rate * nc))
        if nr * nc == 0 or nr < _MIN_LEVEL_ROWS:
            break
        sizes.append((nc, nr))

    width0, height0 = sizes[0]
    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    # the first column goes down until the next level fits beside the previous one and the column holds
    # at least half of what is left
    height, prev_width = 0, 0
    for w, h in sizes:
        if w <= width0 - prev_width - padding and (height - height0) * 2 >= total_height - height0:
            break
        height += h + padding
        prev_width = w
    height -= padding
    out_rows, out_cols = height + 2 * outer_padding, width0 + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        w, h = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    first = rects[0]
    while i < len(sizes):
        w, h = sizes[i]
        right, bottom = outer_padding + width0 - 1, y - 1
        rect = (right - (w - 1), bottom - (h - 1), right, bottom)
        # stop before a tile of the right-hand stack would overlap the full-size image
        if max(rect[0], first[0]) <= min(rect[2], first[2]) and max(rect[1], first[1]) <= min(rect[3], first[3]):
            break
        rects.append(rect)
        y -= h + padding
        i += 1
    return TiledPyramid(np.array(rects, dtype=np.int64), out_rows, out_cols)


def _resize_bilinear(src: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's ``resize_image`` with bilinear interpolation: corner pixels map onto corner pixels.

    ``src`` is C×H×W float32; the result is C×rows×cols float32. Separable: rows first, then columns.
    """
    h, w = src.shape[1:]
    ys = np.arange(rows) * ((h - 1) / max(rows - 1, 1))
    xs = np.arange(cols) * ((w - 1) / max(cols - 1, 1))
    top = np.floor(ys).astype(np.intp)
    left = np.floor(xs).astype(np.intp)
    fy = (ys - top).astype(np.float32)[None, :, None]
    fx = (xs - left).astype(np.float32)
    out = np.take(src, top, axis=1)
    lower = np.take(src, np.minimum(top + 1, h - 1), axis=1)
    lower -= out
    lower *= fy
    out += lower  # top + fy·(bottom − top)
    result = np.take(out, left, axis=2)
    right = np.take(out, np.minimum(left + 1, w - 1), axis=2)
    right -= result
    right *= fx
    result += right
    return result


def _pyramid_up(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` (``pyramid_down<2>``) of an H×W×3 uint8 image: ×2 bilinear, truncated to uint8."""
    h, w = image.shape[:2]
    planes = np.moveaxis(image, 2, 0).astype(np.float32)
    up = _resize_bilinear(planes, 2 * h + 1, 2 * w + 2)
    return np.moveaxis(up.astype(np.uint8), 0, 2)


def _lround(values: np.ndarray) -> np.ndarray:
    """C's ``lround``: halves away from zero."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImage("image", "expected a uint8 numpy array")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage("image", f"expected H×W×3 RGB or H×W grey, got shape {image.shape}")
    return image


def _detections(rects: np.ndarray, scores: np.ndarray, w: int, h: int, *, pad: int | None = None) -> list[RawDetection]:
    """dlib rectangles (inclusive) → ``((x1, y1, x2, y2), score)`` in a w×h image, clipped, best first.

    ``pad``: the rectangles were found in the image extended by a mirrored margin of ``pad`` px (0: none, but
    boxes may still reach outside); they are shifted back, and those centred outside the w×h frame (mirror
    images of faces) are dropped. ``None``: no such filtering (dlib's own output).
    """
    if pad is not None:
        rects = rects - pad
        cx, cy = (rects[:, 0] + rects[:, 2] + 1) / 2, (rects[:, 1] + rects[:, 3] + 1) / 2
        inside = (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h)
        rects, scores = rects[inside], scores[inside]
    out: list[RawDetection] = []
    for (left, top, right, bottom), score in zip(rects.tolist(), scores.tolist(), strict=True):
        box = (float(max(0, left)), float(max(0, top)), float(min(w, right + 1)), float(min(h, bottom + 1)))
        out.append((box, float(score)))
    out.sort(key=lambda d: -d[1])
    return out


@cache
def _model_file() -> Path:
    return converted_model("dlib-mmod", build_mmod_onnx, version=CONVERTER_VERSION)


@cache
def _geometry() -> MMODGeometry:
    return read_mmod(model_path("dlib-mmod"))


class MMODDetector:
    """dlib's CNN face detector (``mmod_human_face_detector.dat``) run by ONNX Runtime."""

    model_id = "dlib-mmod"

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int | None = None,
        upsample: int = 0,
        min_score: float = 0.0,
        edge_margin: float = 0.1,
        min_face: float | None = None,
        max_work_pixels: float = 2e6,
        precision: str = "fp32",
    ) -> None:
        """``upsample``: times the image is doubled first, as dlib's second argument: the detector window is
        80×80 px, so faces smaller than ~80 px need ``upsample=1`` (~40 px), at 4× the time per step.
        ``min_score``: dlib's ``adjust_threshold``; detections score above it (dlib's default 0).
        ``edge_margin``: the image is extended by this fraction of its longer side with a mirror of itself
        before detection, so faces cut by the frame (a close selfie face, a neighbour at the edge) are found;
        detections centred outside the original frame (the mirror images) are dropped. 0 turns it off and
        reproduces dlib exactly.
        ``min_face``: the smallest face width (px) to find; the image is resized by ``80 / min_face`` before
        the network sees it, but never to more than ``max_work_pixels`` — in a large photo the smallest face
        found grows instead (a 12 MP photo at 2 MP of work finds faces from ~200 px). None keeps dlib's own
        scale (``upsample``). ``precision``: ``int8`` runs the graph quantized when ranges for it ship."""
        if min_face is not None and min_face <= 0:
            raise InvalidArgument(f"min_face must be positive, got {min_face}")
        self.min_face = min_face
        self.max_work_pixels = float(max_work_pixels)
        if upsample < 0:
            raise InvalidArgument(f"upsample must be >= 0, got {upsample}")
        if not 0 <= edge_margin <= 0.5:
            raise InvalidArgument(f"edge_margin must be in [0, 0.5], got {edge_margin}")
        self.edge_margin = float(edge_margin)
        self.geometry = _geometry()
        # int8 only with shipped ranges (none yet: quantized, its boxes moved, IoU 0.69; docs/models.md "int8")
        int8 = precision == "int8" and has_int8(self.model_id)
        self.path = int8_model(self.model_id, _model_file()) if int8 else _model_file()
        self.session = create_session(self.path, device=device, threads=threads)
        self._resizer = create_session(build_resize_onnx().SerializeToString(), device=device, threads=threads)
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ stages

    def input_tensor(self, image: np.ndarray) -> tuple[np.ndarray, TiledPyramid]:
        """The normalised tiled pyramid, 1×3×R×C float32, and its layout."""
        g = self.geometry
        h, w = image.shape[:2]
        layout = tiled_pyramid_layout(h, w, g.pyramid_padding, g.pyramid_outer_padding)
        tensor = np.zeros((1, 3, layout.rows, layout.cols), dtype=np.float32)
        if len(layout.rects) == 0:
            return tensor, layout
        planes = tensor[0]
        l0, t0, r0, b0 = layout.rects[0]
        level = planes[:, t0 : b0 + 1, l0 : r0 + 1]
        # (v − mean) / 256 in float32, as dlib's to_tensor (dividing by 256 is exact)
        means = np.array(g.channel_means, dtype=np.float32)[:, None, None]
        np.subtract(np.moveaxis(image, 2, 0), means, out=level)
        level *= np.float32(1 / 256)
        prev = np.ascontiguousarray(level)[None]
        for left, top, right, bottom in layout.rects[1:].tolist():
            # each level is a bilinear resize of the one before it, as dlib's create_tiled_pyramid
            sizes = np.array([1, 3, bottom - top + 1, right - left + 1], dtype=np.int64)
            prev = self._resizer.run(["y"], {"x": prev, "sizes": sizes})[0]
            planes[:, top : bottom + 1, left : right + 1] = prev[0]
        return tensor, layout

    def scores(self, tensor: np.ndarray) -> np.ndarray:
        """The network's score map for a tiled input, windows×rows×cols float32."""
        return self.batch_scores(tensor)[0]

    def batch_scores(self, tensor: np.ndarray) -> np.ndarray:
        """Score maps of N tiled inputs of one size in one run (N×3×R×C → N×windows×rows×cols)."""
        with self._lock:  # one run at a time per session keeps ORT's thread pool from oversubscribing
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: tensor})[0]

    def candidates(self, score_map: np.ndarray, layout: TiledPyramid) -> tuple[np.ndarray, np.ndarray]:
        """Score-map cells above the threshold as integer dlib rectangles in the (upsampled) image.

        Returns ``(rects, scores)``: (M, 4) int64 ``(left, top, right, bottom)`` inclusive and (M,) float64,
        sorted by descending score.
        """
        g = self.geometry
        k, r, c = np.nonzero(score_map > self.min_score)
        scores = score_map[k, r, c].astype(np.float64)
        if scores.size == 0 or len(layout.rects) == 0:
            return np.zeros((0, 4), np.int64), scores
        # centre of each window in the input tensor (an integer point)
        px = c * g.stride[0] + g.offset[0]
        py = r * g.stride[1] + g.offset[1]
        # pyramid level: the first tile that contains the centre, else the nearest tile
        rects = layout.rects
        dx = np.maximum(np.maximum(rects[None, :, 0] - px[:, None], px[:, None] - rects[None, :, 2]), 0)
        dy = np.maximum(np.maximum(rects[None, :, 1] - py[:, None], py[:, None] - rects[None, :, 3]), 0)
        dist = np.hypot(dx, dy)
        inside = dist == 0
        level = np.where(inside.any(axis=1), inside.argmax(axis=1), dist.argmin(axis=1))
        sizes = np.array(g.windows, dtype=np.float64)[k]  # (M, 2) width, height
        half_w, half_h = (sizes[:, 0] - 1) / 2, (sizes[:, 1] - 1) / 2
        origin = rects[level, :2].astype(np.float64)
        box = np.stack(
            [
                px - half_w - origin[:, 0],
                py - half_h - origin[:, 1],
                px + half_w - origin[:, 0],
                py + half_h - origin[:, 1],
            ],
            axis=1,
        )
        ratio = _PYRAMID_N / (_PYRAMID_N - 1.0)
        for step in range(1, int(level.max()) + 1):  # point_up, once per level above the finest
            grow = level >= step
            box[grow] = box[grow] * ratio + 0.3
        order = np.argsort(-scores, kind="stable")
        return _lround(box[order]), scores[order]

    def suppress(self, rects: np.ndarray, scores: np.ndarray) -> list[int]:
        """Indices kept by dlib's loss_mmod non-max suppression (rects sorted by descending score)."""
        g = self.geometry
        kept: list[int] = []
        if len(rects) == 0:
            return kept
        area = ((rects[:, 2] - rects[:, 0] + 1) * (rects[:, 3] - rects[:, 1] + 1)).astype(np.float64)
        for i in range(len(rects)):
            if kept:
                k = np.array(kept)
                a, b = rects[i], rects[k]
                iw = np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]) + 1
                ih = np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]) + 1
                inner = np.where((iw > 0) & (ih > 0), iw * ih, 0).astype(np.float64)
                ow = np.maximum(a[2], b[:, 2]) - np.minimum(a[0], b[:, 0]) + 1
                oh = np.maximum(a[3], b[:, 3]) - np.minimum(a[1], b[:, 1]) + 1
                with np.errstate(divide="ignore", invalid="ignore"):
                    overlaps = (inner > 0) & (
                        (inner / (ow * oh) > g.nms_iou)
                        | (inner / area[k] > g.nms_percent_covered)
                        | (inner / area[i] > g.nms_percent_covered)
                    )
                if overlaps.any():
                    continue
            kept.append(i)
        return kept

    def detect_dlib_same_size(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`detect_dlib` (``upsample=0``) of several H×W×3 images of one size with one network run (the
        cascade's crops): the same rectangles and scores as one call per image."""
        if self.upsample or not images:
            return [self.detect_dlib(image) for image in images]
        g = self.geometry
        rows, cols = images[0].shape[:2]
        layout = tiled_pyramid_layout(rows, cols, g.pyramid_padding, g.pyramid_outer_padding)
        if len(layout.rects) == 0 or min(layout.rows, layout.cols) < g.min_input:
            return [(np.zeros((0, 4), np.int64), np.zeros(0)) for _ in images]
        tensor = np.concatenate([self.input_tensor(_as_rgb(image))[0] for image in images])
        out = []
        for score_map in self.batch_scores(tensor):
            rects, scores = self.candidates(score_map, layout)
            keep = self.suppress(rects, scores)
            out.append((rects[keep], scores[keep]))
        return out

    def detect_dlib(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dlib's own output: (K, 4) int64 inclusive rectangles ``(left, top, right, bottom)`` and scores."""
        image = _as_rgb(image)
        work = image
        for _ in range(self.upsample):
            work = _pyramid_up(work)
        g = self.geometry
        layout = tiled_pyramid_layout(work.shape[0], work.shape[1], g.pyramid_padding, g.pyramid_outer_padding)
        if len(layout.rects) == 0 or min(layout.rows, layout.cols) < g.min_input:
            return np.zeros((0, 4), np.int64), np.zeros(0)  # too small for the network to see anything
        tensor, layout = self.input_tensor(work)
        rects, scores = self.candidates(self.scores(tensor), layout)
        keep = self.suppress(rects, scores)
        rects, scores = rects[keep], scores[keep]
        if self.upsample:
            box = rects.astype(np.float64)
            for _ in range(self.upsample):  # pyramid_down<2>::point_down
                box = box / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
            rects = _lround(box)
        return rects, scores

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        """Faces as ``((x1, y1, x2, y2), score)`` in the image's pixels, best first."""
        h, w = image.shape[:2]
        scale = self.work_scale(h, w)
        if scale != 1.0:
            work = cv2.resize(
                _as_rgb(image),
                (max(1, round(w * scale)), max(1, round(h * scale))),
                interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA,
            )
            found = self._detect_native(work)
            sx, sy = work.shape[1] / w, work.shape[0] / h
            return [((x1 / sx, y1 / sy, x2 / sx, y2 / sy), score) for (x1, y1, x2, y2), score in found]
        return self._detect_native(image)

    def work_scale(self, rows: int, cols: int) -> float:
        """The resize factor applied before detection (1.0 when ``min_face`` is None)."""
        if self.min_face is None:
            return 1.0
        wanted = self.geometry_window / self.min_face
        cap = (self.max_work_pixels / max(1, rows * cols)) ** 0.5
        return float(min(wanted, cap))

    @property
    def geometry_window(self) -> float:
        """The detector window's width (80 px for dlib's face model): the smallest face at work scale."""
        return float(min(w for w, _ in self.geometry.windows))

    def _detect_native(self, image: np.ndarray) -> list[RawDetection]:
        h, w = image.shape[:2]
        pad = round(self.edge_margin * max(h, w)) if min(h, w) > 1 else 0
        if pad:
            padded = cv2.copyMakeBorder(_as_rgb(image), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
            return _detections(*self.detect_dlib(padded), w, h, pad=pad)
        return _detections(*self.detect_dlib(image), w, h)
