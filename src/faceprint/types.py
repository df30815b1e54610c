"""Frozen result types passed between the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class Detection:
    """One face found in an image.

    ``box`` is ``(x1, y1, x2, y2)`` in pixels of the original (EXIF-rotated) image.
    ``landmarks`` is a 5×2 float32 array in the same pixels, in the order of ``landmark_scheme``:
    ``"dlib5"`` = outer and inner corner of the face's left eye (image right), outer and inner corner of the
    face's right eye (image left), base of the nose — dlib's 5-point shape predictor order.
    """

    box: Box
    score: float
    landmarks: np.ndarray | None = None
    landmark_scheme: str = "dlib5"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": None
            if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


@dataclass(frozen=True, eq=False)
class Faceprint:
    """An L2-normalised face embedding tied to the model that produced it."""

    vector: np.ndarray
    model_id: str
    detection: Detection | None = None
    quality: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])
