"""The detector seam: an image in, face boxes with scores out (landmarks come from ``align``)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

RawDetection = tuple[tuple[float, float, float, float], float]


class Detector(Protocol):
    """Finds faces. ``detect`` returns ``((x1, y1, x2, y2), score)`` pairs in the image's pixels."""

    model_id: str

    def detect(self, image: np.ndarray) -> list[RawDetection]: ...
