"""The detector seam: an image in, face boxes with scores out (landmarks come from ``align``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

RawDetection = tuple[tuple[float, float, float, float], float]


class Detector(Protocol):
    """Finds faces. ``detect`` returns ``((x1, y1, x2, y2), score)`` pairs in the image's pixels."""

    model_id: str

    def detect(self, image: np.ndarray) -> list[RawDetection]: ...


@runtime_checkable
class LandmarkingDetector(Protocol):
    """A detector whose faces come with the 5 points of its profile's landmark scheme (BlazeFace's keypoints):
    ``detect_landmarks`` returns what ``detect`` does plus those points, K×5×2, from the same pass."""

    model_id: str

    def detect(self, image: np.ndarray) -> list[RawDetection]: ...

    def detect_landmarks(self, image: np.ndarray) -> tuple[list[RawDetection], np.ndarray]: ...
