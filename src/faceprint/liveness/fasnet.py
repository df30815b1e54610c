"""MiniFASNet-layout passive liveness models (e.g. faceplugin's ``fr_liveness.onnx``).

Each face is cropped as the model was trained: the box scaled ``crop_scale`` (2.7) around its centre (less
when the image is too small), shifted to stay inside the image, resized to the input size; raw 0–255 values
in the spec's colour order; the softmax entry ``live_class`` is P(live). The crops of all faces run in one
batch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec


def liveness_crop_box(box: np.ndarray, width: int, height: int, scale: float) -> tuple[int, int, int, int]:
    """The crop (x1, y1, x2, y2, exclusive) for one face box, as the model's own code computes it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    s = min((height - 1) / bh, (width - 1) / bw, scale)
    nw, nh = bw * s, bh * s
    cx, cy = x1 + bw / 2, y1 + bh / 2
    left, top, right, bottom = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if left < 0:
        right, left = right - left, 0.0
    if top < 0:
        bottom, top = bottom - top, 0.0
    if right > width - 1:
        left, right = left - (right - width + 1), float(width - 1)
    if bottom > height - 1:
        top, bottom = top - (bottom - height + 1), float(height - 1)
    left_i, top_i = max(int(left), 0), max(int(top), 0)
    return left_i, top_i, min(left_i + max(int(right - left), 1), width), min(top_i + max(int(bottom - top), 1), height)


class FasNetLiveness(OnnxModel):
    """Implements :class:`faceprint.liveness.base.LivenessModel` from a spec."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(spec, path, device=device, threads=threads)
        self.crop_scale = float(spec.options.get("crop_scale", 2.7))
        self.live_class = int(spec.options.get("live_class", 0))

    def crops(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N×H×W×3 uint8 RGB crops, one per box."""
        h, w = image.shape[:2]
        size = (self.input.width, self.input.height)
        out = np.empty((len(boxes), size[1], size[0], 3), dtype=np.uint8)
        for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
            x1, y1, x2, y2 = liveness_crop_box(box, w, h, self.crop_scale)
            crop = image[y1:y2, x1:x2]
            shrink = crop.shape[1] > size[0] or crop.shape[0] > size[1]
            out[i] = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return out

    def scores(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros(0, dtype=np.float64)
        logits = self.run(self.to_tensor(self.crops(image, boxes)))[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        return prob[:, self.live_class]
