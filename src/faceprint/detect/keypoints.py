"""What the single-stage detectors with 5 keypoints share (RetinaFace, SCRFD, YuNet): letterboxing, NMS and
the result type.

Each family's module only decodes its graph's outputs into boxes, scores and points *in the network input's
pixels*; :class:`KeypointDetector` resizes the photo to fit the input with its aspect ratio kept (padding right
and bottom with zeros, as insightface and OpenCV's FaceDetectorYN do), runs the graph, keeps scores ≥
``score_threshold``, applies greedy NMS (``nms_iou``) and maps everything back to the photo.

The 5 points are in ArcFace's order and sense (image-left eye, image-right eye, nose tip, image-left mouth
corner, image-right mouth corner: the ``arcface5`` landmark scheme), so the pipeline aligns chips with them
directly (:meth:`KeypointDetector.faces`) instead of running a landmark model.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceprint.detect.base import RawDetection
from faceprint.detect.boxes import iou_one, nms
from faceprint.detect.mmod import _as_rgb
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec

__all__ = ["Decoded", "KeypointDetection", "KeypointDetector", "letterbox"]

#: ``(box, score, points)``: box ``(x1, y1, x2, y2)`` and 5×2 float32 points in the image's pixels.
KeypointDetection = tuple[tuple[float, float, float, float], float, np.ndarray]
#: A decoder's result: (N, 4) boxes, (N,) scores, (N, 5, 2) points, in the network input's pixels.
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``width``×``height`` with its aspect ratio kept, at the top left of a zero
    canvas of that size; returns ``(canvas, scale)`` (input px = image px × scale)."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return canvas, scale


class KeypointDetector(OnnxModel):
    """Base of the keypoint families: subclasses implement :meth:`decode` (see the module docstring)."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads)
        self.min_score = float(min_score if min_score is not None else spec.options.get("score_threshold", 0.5))
        self.nms_iou = float(spec.options.get("nms_iou", 0.4))

    def decode(self, outputs: dict[str, np.ndarray]) -> Decoded:
        """The graph's outputs for ONE image (batch dimension removed) → boxes, scores, points in input px."""
        raise NotImplementedError

    def _outputs(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        canvas, scale = letterbox(_as_rgb(image), self.input.width, self.input.height)
        arrays = self.run(self.to_tensor(canvas[None]))
        return {name: a[0] for name, a in zip(self.output_names, arrays, strict=True)}, scale

    def faces(self, image: np.ndarray) -> list[KeypointDetection]:
        """Faces with their 5 points (``arcface5``) in the image's pixels, best first."""
        h, w = image.shape[:2]
        outputs, scale = self._outputs(image)
        boxes, scores, points = self.decode(outputs)
        keep = scores >= self.min_score
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        chosen = nms(boxes, scores, self.nms_iou)
        boxes = np.clip(boxes[chosen] / scale, 0, [w, h, w, h])
        points = (points[chosen] / scale).astype(np.float32)
        return [
            (tuple(float(v) for v in box), float(s), p)  # type: ignore[misc]
            for box, s, p in zip(boxes, scores[chosen], points, strict=True)
        ]

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        return [(box, score) for box, score, _ in self.faces(image)]

    def detect_landmarks(self, image: np.ndarray) -> tuple[list[RawDetection], np.ndarray]:
        """:class:`~faceprint.detect.base.LandmarkingDetector`: :meth:`detect` plus the K×5×2 points."""
        found = self.faces(image)
        points = np.stack([p for _, _, p in found]) if found else np.zeros((0, 5, 2), np.float32)
        return [(box, score) for box, score, _ in found], points


# where the 5 points of a face usually sit in its box (fractions of width and height), for a box the detector
# itself cannot find again (see DetectorPoints)
_BOX_POINTS = np.array([[0.32, 0.42], [0.68, 0.42], [0.5, 0.6], [0.35, 0.78], [0.65, 0.78]], np.float32)


class DetectorPoints:
    """A keypoint detector used as the landmark model (``predict(image, boxes) → N×5×2``, ``arcface5``).

    The pipeline takes the points straight from :meth:`KeypointDetector.faces`; this serves boxes
    that come from elsewhere (a tracker, a caller's boxes): each box gets the points of the detection that
    overlaps it best (IoU ≥ 0.3) in the whole image, else in a crop of twice the box around it, else the
    usual positions of the points in a box (a rough guess: the face is not found there)."""

    scheme = "arcface5"

    def __init__(self, detector: KeypointDetector) -> None:
        self.detector = detector
        self.model_id = detector.model_id

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = np.empty((len(boxes), 5, 2), np.float32)
        found = self.detector.faces(image)
        for i, box in enumerate(boxes):
            points = self._best(box, found)
            if points is None:
                points = self._in_crop(image, box)
            if points is None:
                size = np.array([box[2] - box[0], box[3] - box[1]], np.float32)
                points = box[:2].astype(np.float32) + _BOX_POINTS * size
            out[i] = points
        return out

    @staticmethod
    def _best(box: np.ndarray, found: list[KeypointDetection], offset: np.ndarray | None = None) -> np.ndarray | None:
        if not found:
            return None
        shift = np.zeros(2) if offset is None else offset
        candidates = np.array([d[0] for d in found], np.float64) + np.tile(shift, 2)
        overlap = iou_one(box, candidates)
        best = int(np.argmax(overlap))
        return found[best][2] + shift.astype(np.float32) if overlap[best] >= 0.3 else None

    def _in_crop(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        h, w = image.shape[:2]
        cx, cy, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, max(box[2] - box[0], box[3] - box[1])
        x1, y1 = int(max(0, cx - side)), int(max(0, cy - side))
        x2, y2 = int(min(w, cx + side)), int(min(h, cy + side))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        found = self.detector.faces(image[y1:y2, x1:x2])
        return self._best(box, found, np.array([x1, y1], np.float64))
