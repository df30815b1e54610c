"""dlib's HOG + linear-SVM frontal face detector: the fast CPU option for frontal faces.

It is not a neural network and ships inside dlib itself (``dlib-bin``), so it runs there.
"""

from __future__ import annotations

import threading

import numpy as np

from faceprint.detect.base import RawDetection


class HOGDetector:
    model_id = "dlib-hog"

    def __init__(self, *, upsample: int = 1) -> None:
        import dlib  # imported lazily: only this detector needs it at run time

        self._detector = dlib.get_frontal_face_detector()
        self._upsample = upsample
        # dlib's object detector keeps scratch buffers: one call at a time per instance.
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[RawDetection]:
        with self._lock:
            rects, scores, _ = self._detector.run(image, self._upsample, 0.0)
        h, w = image.shape[:2]
        out: list[RawDetection] = []
        for rect, score in zip(rects, scores, strict=True):
            # dlib rectangles are inclusive pixel ranges; clip to the image like face_recognition does not.
            box = (
                float(max(0, rect.left())),
                float(max(0, rect.top())),
                float(min(w, rect.right() + 1)),
                float(min(h, rect.bottom() + 1)),
            )
            out.append((box, float(score)))
        out.sort(key=lambda d: -d[1])
        return out
