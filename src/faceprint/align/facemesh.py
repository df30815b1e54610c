"""mediapipe's face mesh (``face_landmark.tflite``, 468 points) as a landmark model giving ArcFace's 5 points.

Each face box is cut out as mediapipe's face landmark graph does: a square around the box centre, its side
``crop_scale`` (1.5) times the box's longer side, upright, resized to 192×192 (pixels scaled to [0, 1]); all the
faces of a photo run in one batch. The graph returns 468 (x, y, z) points in crop pixels; the ``arcface5``
points are the centres of the two eye contours (16 mesh points each), the nose tip (mesh point 1) and the mouth
corners (the mean of the outer and inner lip corner, 61/78 and 291/308), as :func:`faceprint.align.landmark68.
arcface5_from_68` takes them from the 68-point layout.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceprint.errors import InvalidImage, ModelError
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec

#: mesh indices of the eye contours: the face's right eye (image left) and left eye (image right)
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
NOSE_TIP = 1
MOUTH_RIGHT = (61, 78)  # outer and inner lip corner, image left
MOUTH_LEFT = (291, 308)
NUM_POINTS = 468


def arcface5_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """N×468×2 (or ×3) mesh points → N×5×2 ``arcface5`` points."""
    m = np.asarray(mesh, dtype=np.float64)[..., :2]
    return np.stack(
        [
            m[:, RIGHT_EYE].mean(axis=1),
            m[:, LEFT_EYE].mean(axis=1),
            m[:, NOSE_TIP],
            m[:, list(MOUTH_RIGHT)].mean(axis=1),
            m[:, list(MOUTH_LEFT)].mean(axis=1),
        ],
        axis=1,
    )


class FaceMesh(OnnxModel):
    """``predict(image, boxes) → N×5×2`` ``arcface5`` points; :meth:`mesh` gives all 468 points."""

    scheme = "arcface5"

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(spec, path, device=device, threads=threads)
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        points = [name for name, s in shapes.items() if s[-1] == NUM_POINTS * 3]
        if len(points) != 1:
            raise ModelError(
                f"model {spec.id!r}: expected an output of {NUM_POINTS * 3} values, {path.name} has {shapes}"
            )
        self.points_output = points[0]
        self.crop_scale = float(spec.options.get("crop_scale", 1.5))

    def mesh(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """N×468×3 points (x, y in image pixels; z in the same scale) for N (x1, y1, x2, y2) boxes."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InvalidImage("image", "expected an H×W×3 or H×W uint8 array")
        pixels = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, NUM_POINTS, 3))
        size = self.input.width
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.maximum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * self.crop_scale, 1.0)
        scale = size / side
        origin = centre - side[:, None] / 2
        crops = np.empty((len(boxes), size, size, 3), np.uint8)
        for i in range(len(boxes)):
            m = np.array([[scale[i], 0, -origin[i, 0] * scale[i]], [0, scale[i], -origin[i, 1] * scale[i]]])
            crops[i] = cv2.warpAffine(pixels, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        outputs = dict(zip(self.output_names, self.run(self.to_tensor(crops)), strict=True))
        points = outputs[self.points_output].reshape(len(boxes), NUM_POINTS, 3).astype(np.float64)
        points[:, :, :2] = points[:, :, :2] / scale[:, None, None] + origin[:, None, :]
        points[:, :, 2] /= scale[:, None]
        return points

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return arcface5_from_mesh(self.mesh(image, boxes))
