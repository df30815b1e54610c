"""YuNet-layout detectors: OpenCV Zoo's ``face_detection_yunet_2023mar.onnx`` (the model behind
``cv2.FaceDetectorYN``), decoded as OpenCV's ``face_detect.cpp`` does.

Outputs per stride s of ``strides`` (8, 16, 32): ``cls_<s>`` and ``obj_<s>`` (1×A×1, sigmoid already
applied), ``bbox_<s>`` (1×A×4) and ``kps_<s>`` (1×A×10), with A = (H/s)·(W/s) cells in row-major order, one
anchor each (the input's sides are multiples of 32). For cell (r, c):

* score = √(clip(cls, 0, 1) · clip(obj, 0, 1));
* centre = ((c + b0)·s, (r + b1)·s), size = (exp(b2)·s, exp(b3)·s) → box corners around the centre;
* point k = ((e[2k] + c)·s, (e[2k+1] + r)·s).

OpenCV lists the points as right eye, left eye, nose tip, right and left mouth corner *of the person*, which
is image-left first: ArcFace's order. Spec defaults: ``[input]`` BGR, mean 0, std 1 (raw pixel values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprint.detect.keypoints import Decoded, KeypointDetector
from faceprint.errors import ModelError
from faceprint.models.spec import ModelSpec

DEFAULT_STRIDES = (8, 16, 32)


def cell_grid(width: int, height: int, stride: int) -> np.ndarray:
    """(A, 2) cell indices ``c, r`` in row-major order for one stride."""
    r, c = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
    return np.stack([c.ravel(), r.ravel()], axis=1).astype(np.float32)


def decode_yunet(
    cls: np.ndarray, obj: np.ndarray, bbox: np.ndarray, kps: np.ndarray, cells: np.ndarray, stride: int
) -> Decoded:
    """One stride's outputs (A×1, A×1, A×4, A×10) and cells (A×2) → boxes, scores, points (input px)."""
    scores = np.sqrt(np.clip(cls.reshape(-1), 0, 1) * np.clip(obj.reshape(-1), 0, 1))
    centre = (cells + bbox[:, :2]) * stride
    size = np.exp(bbox[:, 2:]) * stride
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    points = (kps.reshape(-1, 5, 2) + cells[:, None, :]) * stride
    return boxes, scores, points


class YuNetDetector(KeypointDetector):
    """Implements :class:`faceprint.detect.base.Detector` (and ``detect_landmarks``) from a spec."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads, min_score=min_score)
        self.strides = tuple(int(s) for s in spec.options.get("strides", DEFAULT_STRIDES))
        w, h = self.input.width, self.input.height
        if w % max(self.strides) or h % max(self.strides):
            raise ModelError(f"model {spec.id!r} ({spec.origin}): a YuNet input's width and height must be "
                             f"multiples of {max(self.strides)}, the spec says {w}×{h}")  # fmt: skip
        self.cells = [cell_grid(w, h, s) for s in self.strides]
        wanted = [f"{kind}_{s}" for s in self.strides for kind in ("cls", "obj", "bbox", "kps")]
        missing = [name for name in wanted if name not in self.output_names]
        if missing:
            raise ModelError(f"model {spec.id!r}: a YuNet-layout graph has outputs cls_/obj_/bbox_/kps_<stride>; "
                             f"{path.name} lacks {', '.join(missing)} (it has {self.output_names})")  # fmt: skip

    def decode(self, outputs: dict[str, np.ndarray]) -> Decoded:
        parts = [
            decode_yunet(outputs[f"cls_{s}"], outputs[f"obj_{s}"], outputs[f"bbox_{s}"], outputs[f"kps_{s}"], cells, s)
            for s, cells in zip(self.strides, self.cells, strict=True)
        ]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]
