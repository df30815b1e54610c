"""The default face detector: cheap MTCNN proposals, confirmed and boxed by dlib's CNN (MMOD) detector.

Why a cascade: dlib's CNN detector (:mod:`faceprint.detect.mmod`) costs ~3,900 multiply-adds per pixel of
its image pyramid and its window is 80 px, so finding a 40-px face means scanning the photo at twice its
size — on a typical 2 MP photo over a second of CPU, spent almost entirely on places with no face. MTCNN's
proposal network (PNet) looks through a 12-px window at ~1,800 multiply-adds per pixel, so the same 40-px
faces are found at 0.3× the photo's size: ~25× less work. Its proposals are filtered by MTCNN's refinement
network (RNet, one 24×24 crop each), and every surviving region is then handed to the MMOD network on a small
crop (~200 px) scaled so the face fills its window. The MMOD detector decides what is a face and where its box
is, so boxes, scores and the landmarks that follow keep the exact conventions of the full-scan detector, and
a proposal MMOD does not confirm is dropped.

Stages, for one image:

1. a mirrored margin (``edge_margin`` of the longer side) so faces cut by the frame can still be proposed;
2. PNet over a pyramid (factor 0.709) from the scale where ``min_face`` becomes 12 px down to 12 px, one
   ONNX Runtime run per level; cells with P(face) ≥ ``pnet_threshold`` become boxes (regressed), NMS per level
   and across levels;
3. RNet, then ONet, on all remaining proposals in one batch each; P(face) ≥ ``rnet_threshold`` /
   ``onet_threshold`` survive, regressed and NMS-merged; overlapping survivors share one crop (:meth:`cover`);
4. MMOD (:class:`~faceprint.detect.mmod.MMODDetector` without its own margin) on a square crop of
   ``crop_factor`` × each proposal, resized so the proposal is ``crop_face`` px — all crops of a photo have
   that one size, so their pyramids go through the network as one batch (one run per photo); detections from
   all crops are merged with dlib's own non-max suppression and mapped back; those centred in the margin are
   dropped.

When proposals are many (a crowd), crops overlap and the work approaches a full scan: above
``max_crop_pixels`` (the crops' total area in pixels of the image MMOD would see) the detector falls back to
the full-scan MMOD detector, which is then cheaper and finds the same faces.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.base import RawDetection
from faceprint.detect.mmod import MMODDetector, _as_rgb, _detections
from faceprint.errors import InvalidArgument
from faceprint.models.convert import converted_model
from faceprint.models.mtcnn_onnx import CONVERTER_VERSION, build_onet_onnx, build_pnet_onnx, build_rnet_onnx
from faceprint.models.runtime import create_session

__all__ = ["CascadeDetector"]

_PNET_WINDOW = 12
_PNET_STRIDE = 2
_RNET_SIZE = 24
_ONET_SIZE = 48


@cache
def _pnet_file() -> Path:
    return converted_model("mtcnn-pnet", build_pnet_onnx, version=CONVERTER_VERSION)


@cache
def _rnet_file() -> Path:
    return converted_model("mtcnn-rnet", build_rnet_onnx, version=CONVERTER_VERSION)


@cache
def _onet_file() -> Path:
    return converted_model("mtcnn-onet", build_onet_onnx, version=CONVERTER_VERSION)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """N×H×W×3 (or one H×W×3) uint8 RGB → N×3×H×W float32 ``(v − 127.5) / 128`` (MTCNN's input)."""
    batch = pixels if pixels.ndim == 4 else pixels[None]
    planes = np.moveaxis(batch, 3, 1).astype(np.float32)
    planes -= 127.5
    planes *= 1 / 128
    return planes


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy IoU non-max suppression (``boxes`` x1, y1, x2, y2; scores ≥ 0), best first.
    OpenCV's implementation: the same greedy rule as a NumPy loop, without Python per kept box."""
    if len(boxes) == 0:
        return np.zeros(0, np.intp)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2]], axis=1).astype(np.float64)
    kept = cv2.dnn.NMSBoxes(xywh, np.asarray(scores, np.float32), 0.0, float(iou))
    return np.asarray(kept, np.intp).reshape(-1)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """MTCNN's box regression: each corner moves by its offset × the box's width or height."""
    size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * size


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres (side = the longer side)."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _crop(pixels: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The square ``box`` (x1, y1, x2, y2, may leave the image: zero-filled there) resized to size×size."""
    x1, y1, x2 = box[:3]
    scale = size / max(x2 - x1, 1e-6)
    # one affine warp per crop: source box → destination square (cheaper than cutting then resizing)
    matrix = np.array([[scale, 0, -x1 * scale], [0, scale, -y1 * scale]], dtype=np.float64)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(pixels, matrix, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT)


class CascadeDetector:
    """MTCNN proposals (PNet, RNet, ONet) confirmed and boxed by dlib's MMOD network; all on ONNX Runtime."""

    model_id = "dlib-mmod"  # boxes and scores are MMOD's; the proposal networks only decide where to look

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int | None = None,
        min_face: float = 40.0,
        min_score: float = 0.0,
        edge_margin: float = 0.1,
        pnet_threshold: float = 0.5,
        rnet_threshold: float = 0.3,
        onet_threshold: float = 0.6,
        pyramid_factor: float = 0.709,
        crop_factor: float = 1.6,
        crop_face: float = 145.0,
        max_crop_pixels: float = 2e6,
        max_pnet_pixels: float = 4e6,
        mmod: MMODDetector | None = None,
        precision: str = "fp32",
    ) -> None:
        """``min_face``: smallest face width (px) to find. ``min_score``: MMOD's detection threshold (dlib's
        ``adjust_threshold``). ``edge_margin``: mirrored margin, as :class:`MMODDetector`'s.
        ``pnet_threshold``/``rnet_threshold``: the proposal stages' P(face) cut-offs — lower finds more and
        costs more MMOD crops; MTCNN's own are 0.6/0.7, ours are lower because MMOD confirms.
        ``onet_threshold``: what ONet rates below it is background and gets no MMOD crop. 0.6 (was 0.3) cuts
        the crops by a quarter with every face kept on the shared photos and ``dlib_faces``; 0.8 loses one
        (``benchmarks/cascade.py``; real faces rate ≥ 0.685 in detect/confirm.py's measurement).
        ``crop_factor``: MMOD crop side / proposal side. ``crop_face``: the proposal's side in the crop, px
        (MMOD's window is 80 px; MTCNN boxes are a little larger than MMOD's). ``max_crop_pixels``: above this
        total crop area a full MMOD scan is cheaper and is used instead. ``max_pnet_pixels``: the largest
        pyramid level PNet scans (a huge photo then finds larger faces only). ``precision``: ``int8`` runs MMOD
        quantized (:mod:`faceprint.models.quantize`); the proposal networks are small and stay fp32."""
        if min_face <= 0:
            raise InvalidArgument(f"min_face must be positive, got {min_face}")
        if not 0 <= edge_margin <= 0.5:
            raise InvalidArgument(f"edge_margin must be in [0, 0.5], got {edge_margin}")
        if not 0 < pyramid_factor < 1:
            raise InvalidArgument(f"pyramid_factor must be in (0, 1), got {pyramid_factor}")
        self.min_face = float(min_face)
        self.min_score = float(min_score)
        self.edge_margin = float(edge_margin)
        self.pnet_threshold = float(pnet_threshold)
        self.rnet_threshold = float(rnet_threshold)
        self.onet_threshold = float(onet_threshold)
        self.pyramid_factor = float(pyramid_factor)
        self.crop_factor = float(crop_factor)
        self.crop_face = float(crop_face)
        self.max_crop_pixels = float(max_crop_pixels)
        self.max_pnet_pixels = float(max_pnet_pixels)
        self.pnet = create_session(_pnet_file(), device=device, threads=threads)
        self.rnet = create_session(_rnet_file(), device=device, threads=threads)
        self.onet = create_session(_onet_file(), device=device, threads=threads)
        # MMOD on crops: no margin (the cascade adds its own once), dlib's scale
        self.precision = precision
        self.mmod = mmod or MMODDetector(
            device=device, threads=threads, min_score=min_score, edge_margin=0.0, precision=precision
        )
        self._full_scan: MMODDetector | None = None
        self._device, self._threads = device, threads
        self._lock = threading.Lock()
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------ stages

    def pnet_scales(self, rows: int, cols: int) -> list[float]:
        """The pyramid: scale factors from ``12 / min_face`` (capped by ``max_pnet_pixels``) down to 12 px."""
        scale = min(_PNET_WINDOW / self.min_face, (self.max_pnet_pixels / max(1, rows * cols)) ** 0.5)
        scales = []
        while min(rows, cols) * scale >= _PNET_WINDOW:
            scales.append(scale)
            scale *= self.pyramid_factor
        return scales

    def propose(self, pixels: np.ndarray) -> np.ndarray:
        """PNet over the pyramid: (N, 5) boxes ``x1, y1, x2, y2, P(face)`` in ``pixels``' coordinates."""
        h, w = pixels.shape[:2]
        found = []
        level = pixels
        for scale in self.pnet_scales(h, w):
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            # each level from the one before: resizing the full photo for every level would cost more than PNet
            level = cv2.resize(
                level, size, interpolation=cv2.INTER_AREA if size[0] < level.shape[1] else cv2.INTER_LINEAR
            )
            with self._lock:
                prob, reg = self.pnet.run(["prob", "reg"], {"image": _normalise(level)})
            rows, cols = np.nonzero(prob[0, 0] >= self.pnet_threshold)
            if rows.size == 0:
                continue
            # each cell is a 12×12 window at stride 2 of this level; back to the image's pixels
            sx, sy = size[0] / w, size[1] / h
            x1, y1 = cols * _PNET_STRIDE / sx, rows * _PNET_STRIDE / sy
            boxes = np.stack([x1, y1, x1 + _PNET_WINDOW / sx, y1 + _PNET_WINDOW / sy], axis=1)
            boxes = _regress(boxes, reg[0][:, rows, cols].T)
            scores = prob[0, 0, rows, cols]
            keep = _nms(boxes, scores, 0.5)
            found.append(np.concatenate([boxes[keep], scores[keep, None]], axis=1))
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        return boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]

    def refine(self, pixels: np.ndarray, boxes: np.ndarray, stage: str = "rnet") -> np.ndarray:
        """RNet or ONet on every box (one batch): the survivors, regressed, squared and merged, as (M, 5)."""
        if len(boxes) == 0:
            return boxes
        session, size, threshold = (
            (self.rnet, _RNET_SIZE, self.rnet_threshold)
            if stage == "rnet"
            else (self.onet, _ONET_SIZE, self.onet_threshold)
        )
        squares = _square(boxes[:, :4])
        batch = np.stack([_crop(pixels, box, size) for box in squares])
        with self._lock:
            prob, reg = session.run(["prob", "reg"], {"image": _normalise(batch)})
        keep = prob[:, 0] >= threshold
        if not keep.any():
            return np.zeros((0, 5))
        regressed = _regress(squares[keep], reg[keep])
        scores = prob[keep, 0]
        kept = _nms(regressed, scores, 0.7)
        return np.concatenate([_square(regressed[kept]), scores[kept, None]], axis=1)

    def cover(self, regions: np.ndarray) -> np.ndarray:
        """The crops MMOD must look at: greedily, best region first, a region whose box lies inside an
        already chosen crop and whose size MMOD's pyramid on that crop still covers needs no crop of its own.
        Returns crop windows (K, 4) ``x1, y1, x2, y2`` (squares, ``crop_factor`` × their region)."""
        windows: list[np.ndarray] = []
        sides: list[float] = []
        smallest = 80.0 / self.crop_face  # a face this fraction of the region's side still fills the window
        for x1, y1, x2, y2, _ in regions[np.argsort(-regions[:, 4], kind="stable")]:
            side = x2 - x1
            covered = False
            for window, own in zip(windows, sides, strict=True):
                inside = x1 >= window[0] and y1 >= window[1] and x2 <= window[2] and y2 <= window[3]
                if inside and smallest * own <= 0.9 * side:
                    covered = True
                    break
            if not covered:
                cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, side * self.crop_factor / 2
                windows.append(np.array([cx - half, cy - half, cx + half, cy + half]))
                sides.append(side)
        return np.array(windows).reshape(-1, 4)

    def confirm(self, pixels: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MMOD on each crop window: dlib rectangles (inclusive, ``pixels``' coordinates) and scores, after
        dlib's non-max suppression across all crops."""
        all_rects, all_scores = [], []
        side = round(self.crop_face * self.crop_factor)
        crops = [_crop(pixels, window, side) for window in windows]
        # every crop has the same size: their pyramids go through the network as one batch
        for window, (rects, scores) in zip(windows, self.mmod.detect_dlib_same_size(crops), strict=True):
            half = (window[2] - window[0]) / 2
            if len(rects) == 0:
                continue
            scale = (2 * half) / side  # crop px → image px
            box = rects.astype(np.float64)
            box[:, 2:] += 1  # inclusive → exclusive before scaling
            box = box * scale + np.array([window[0], window[1], window[0], window[1]])
            box[:, 2:] -= 1
            all_rects.append(np.round(box).astype(np.int64))
            all_scores.append(scores)
        if not all_rects:
            return np.zeros((0, 4), np.int64), np.zeros(0)
        rects, scores = np.concatenate(all_rects), np.concatenate(all_scores)
        order = np.argsort(-scores, kind="stable")
        rects, scores = rects[order], scores[order]
        keep = self.mmod.suppress(rects, scores)
        return rects[keep], scores[keep]

    # ------------------------------------------------------------------------------------------ detect

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        """Faces as ``((x1, y1, x2, y2), score)`` in the image's pixels, best first."""
        image = _as_rgb(image)
        h, w = image.shape[:2]
        pad = round(self.edge_margin * max(h, w)) if min(h, w) > 1 else 0
        pixels = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101) if pad else image
        proposals = self.propose(pixels)
        regions = self.refine(pixels, self.refine(pixels, proposals, "rnet"), "onet")
        windows = self.cover(regions)
        crop_pixels = len(windows) * (self.crop_face * self.crop_factor) ** 2
        self.last_stats = {"proposals": len(proposals), "regions": len(regions), "crops": len(windows)}
        if crop_pixels > self.max_crop_pixels:
            self.last_stats["full_scan"] = 1
            return self.full_scan.detect(image)
        rects, scores = self.confirm(pixels, windows)
        return _detections(rects, scores, w, h, pad=pad)

    @property
    def full_scan(self) -> MMODDetector:
        """The full-scan MMOD detector used for crowds (built on first use)."""
        if self._full_scan is None:
            self._full_scan = MMODDetector(
                device=self._device,
                threads=self._threads,
                min_score=self.min_score,
                edge_margin=self.edge_margin,
                min_face=self.min_face,
                precision=self.precision,
            )
        return self._full_scan
