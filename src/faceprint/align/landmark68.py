"""68-point landmark regressors on a grey crop of the face box (faceplugin's ``fr_landmark.onnx`` layout),
and the ArcFace 5 points derived from the 68 (iBUG 300-W numbering).

The network sees the face box resized to its input (64×64 grey) and returns 68 (x, y) pairs in [0, 1] of
that box. It was trained on boxes of its own detector (UltraFace), which are taller than dlib's boxes; the
spec's ``[options.box_adapt]`` gives, per detector id, ``[dx1, dy1, dx2, dy2]`` in box widths/heights to move
that detector's box to what the network expects (measured on the shared photos, see docs/models.md).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceprint.errors import ModelError
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec

# ArcFace's 5 points from the 68, as the faceplugin SDK forms them: eye centres from the 4 eyelid points,
# nose tip (30), mouth corners as the mean of the outer (48/54) and inner (60/64) lip corners.
_EYE_A = (36 + 1, 36 + 2, 36 + 4, 36 + 5)
_EYE_B = (42 + 1, 42 + 2, 42 + 4, 42 + 5)


def arcface5_from_68(points: np.ndarray) -> np.ndarray:
    """N×68×2 → N×5×2: image-left eye centre, image-right eye centre, nose tip, left and right mouth corner."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack(
        [
            points[:, _EYE_A].mean(axis=1),
            points[:, _EYE_B].mean(axis=1),
            points[:, 30],
            (points[:, 48] + points[:, 60]) / 2,
            (points[:, 54] + points[:, 64]) / 2,
        ],
        axis=1,
    )


class Landmark68(OnnxModel):
    """68 landmarks per box; :meth:`predict` gives ArcFace's 5 (the ``arcface5`` scheme)."""

    scheme = "arcface5"

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 detector: str | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads)
        probe = self.run(np.zeros((1, self.input.channels, self.input.height, self.input.width), np.float32))[0]
        if probe.shape != (1, 136):
            raise ModelError(
                f"model {spec.id!r}: a 68-point model returns 136 numbers, {path.name} gives {probe.shape}"
            )
        adapt = spec.options.get("box_adapt", {})
        self.box_scale = np.asarray(adapt.get(detector or "", [0.0, 0.0, 0.0, 0.0]), dtype=np.float64)
        if self.box_scale.shape != (4,):
            raise ModelError(f"model {spec.id!r}: [options.box_adapt] {detector} must be 4 numbers")

    def adapt(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes moved by ``box_adapt`` (fractions of their width/height) to what the network was trained on."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        return boxes + size * self.box_scale

    def predict68(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N×68×2 landmarks in image pixels for the given (x1, y1, x2, y2) boxes."""
        boxes = np.round(self.adapt(boxes))  # whole pixels: the crop below is exactly this box
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        n = len(boxes)
        if n == 0:
            return np.zeros((0, 68, 2))
        h, w = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        crops = np.empty((n, self.input.height, self.input.width), dtype=np.uint8)
        size_in = (self.input.width, self.input.height)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            crop = self._crop(grey, x1, y1, x2, y2, w, h)
            shrink = crop.shape[1] > size_in[0] or crop.shape[0] > size_in[1]
            crops[i] = cv2.resize(crop, size_in, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = self.run(self.to_tensor(crops))[0].reshape(n, 68, 2).astype(np.float64)
        size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        return out * size + boxes[:, None, :2]

    @staticmethod
    def _crop(grey: np.ndarray, x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> np.ndarray:
        """The box's pixels, padded with zeros where it leaves the image."""
        ix1, iy1, ix2, iy2 = (round(float(v)) for v in (x1, y1, x2, y2))
        ix2, iy2 = max(ix2, ix1 + 1), max(iy2, iy1 + 1)
        out = np.zeros((iy2 - iy1, ix2 - ix1), dtype=grey.dtype)
        sx1, sy1, sx2, sy2 = max(0, ix1), max(0, iy1), min(w, ix2), min(h, iy2)
        if sx2 > sx1 and sy2 > sy1:
            out[sy1 - iy1 : sy2 - iy1, sx1 - ix1 : sx2 - ix1] = grey[sy1:sy2, sx1:sx2]
        return out

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N×5×2 ArcFace points (``arcface5`` scheme) for the boxes."""
        return arcface5_from_68(self.predict68(image, boxes))
