"""UltraFace-layout detectors (Ultra-Light-Fast-Generic-Face-Detector, e.g. faceplugin's ``fr_detect.onnx``).

The whole image is resized to the network input (320×240 for RFB-320), and the graph returns, per anchor,
softmaxed ``scores`` (background, face) and ``boxes`` already decoded to corners in [0, 1] of the input.
Score threshold and NMS IoU come from the spec's ``[options]`` (``score_threshold``, ``nms_iou``).
One low-resolution pass: fast, but faces under ~20 px in the resized image are missed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.base import RawDetection
from faceprint.detect.boxes import nms
from faceprint.errors import ModelError
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec


class UltraFaceDetector(OnnxModel):
    """Implements :class:`faceprint.detect.base.Detector` from a spec."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads)
        if set(self.output_names) != {"scores", "boxes"}:
            raise ModelError(f"model {spec.id!r}: an UltraFace-layout graph has outputs 'scores' and 'boxes', "
                             f"{path.name} has {self.output_names}")  # fmt: skip
        self.min_score = float(min_score if min_score is not None else spec.options.get("score_threshold", 0.7))
        self.nms_iou = float(spec.options.get("nms_iou", 0.4))

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        h, w = image.shape[:2]
        resized = cv2.resize(image, (self.input.width, self.input.height), interpolation=cv2.INTER_LINEAR)
        outputs = dict(zip(self.output_names, self.run(self.to_tensor(resized[None])), strict=True))
        scores = outputs["scores"][0, :, 1]
        keep = scores >= self.min_score
        boxes = outputs["boxes"][0][keep] * np.array([w, h, w, h], dtype=np.float32)
        scores = scores[keep]
        chosen = nms(boxes, scores, self.nms_iou)
        boxes = np.clip(boxes[chosen], 0, [w, h, w, h])
        return [(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores[chosen], strict=True)]
