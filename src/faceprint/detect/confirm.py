"""A second look at a one-pass detector's boxes: MTCNN's output network (ONet) rates each box as face or not.

Why: a single low-resolution pass (UltraFace at 320×240) is fast but takes some blurred backgrounds for faces
with high scores (0.99 on a bokeh patch beside a portrait in the shared photos), and such a box can be the
"largest face" a verification or enrolment then uses. ONet — the cascade's third stage — sees each box as one
48×48 crop, in one batch (about a millisecond a face). Measured on 264 UltraFace boxes that the cascade also
finds (shared photos, 150 in-the-wild CelebA photos, dlib's examples): P(face) ≥ 0.685, 99 % ≥ 0.90; the
UltraFace boxes the cascade does not find split into 6 with P(face) ≤ 0.26 (background) and 4 with ≥ 0.82
(faces the cascade misses). The default cut, 0.5, drops the first kind and none of the faces.
"""

from __future__ import annotations

import threading

import numpy as np

from faceprint.detect.base import Detector, RawDetection
from faceprint.detect.cascade import _crop, _normalise, _onet_file, _square
from faceprint.errors import InvalidArgument
from faceprint.models.runtime import create_session

_ONET_SIZE = 48


class ConfirmedDetector:
    """``inner``'s detections whose ONet face probability is at least ``threshold`` (boxes and scores as
    ``inner`` gave them, so landmark models keep adapting to ``inner``'s boxes)."""

    def __init__(
        self, inner: Detector, *, threshold: float = 0.5, device: str = "cpu", threads: int | None = None
    ) -> None:
        if not 0 <= threshold < 1:
            raise InvalidArgument(f"the confirmation threshold must be in [0, 1), got {threshold}")
        self.inner = inner
        self.model_id = inner.model_id
        self.threshold = float(threshold)
        self.onet = create_session(_onet_file(), device=device, threads=threads)
        self._lock = threading.Lock()

    def face_probability(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """ONet's P(face) for each (x1, y1, x2, y2) box of ``image`` (RGB uint8), one batch."""
        if len(boxes) == 0:
            return np.zeros(0, np.float32)
        batch = np.stack([_crop(image, box, _ONET_SIZE) for box in _square(np.asarray(boxes, np.float64))])
        with self._lock:
            (prob,) = self.onet.run(["prob"], {"image": _normalise(batch)})
        return prob[:, 0]

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        found = self.inner.detect(image)
        if not found:
            return found
        pixels = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        prob = self.face_probability(pixels, np.array([box for box, _ in found]))
        return [det for det, p in zip(found, prob, strict=True) if p >= self.threshold]
