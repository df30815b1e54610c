"""The liveness seam: face boxes of an image in, P(live) per face out; and the result users see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from faceprint.errors import ModelNotInstalled
from faceprint.types import Box


class LivenessModel(Protocol):
    """Scores faces: ``scores(image, boxes)`` → P(live) in [0, 1] for each (x1, y1, x2, y2) box of the RGB
    uint8 ``image`` (the photo's own pixels)."""

    model_id: str

    def scores(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray: ...


class LivenessUnavailable(ModelNotInstalled):
    """No liveness model can be loaded: every liveness request fails with this, naming the install command —
    a face is never passed as live because nothing could check it."""

    def __init__(self, model_id: str, how: str) -> None:
        Exception.__init__(
            self, f"liveness needs the model {model_id!r}, which is not installed: run `{how}` (nothing is "
            "treated as live without a check)"
        )  # fmt: skip
        self.model_id = model_id
        self.package = how


@dataclass(frozen=True)
class LivenessResult:
    """One face's liveness: ``score`` is P(live); ``live`` is ``score >= threshold``; ``apcer``/``bpcer`` are
    the error rates the threshold was calibrated for (attacks passed as live / live faces refused), ``None``
    when the threshold is explicit or the model has no table."""

    box: Box
    score: float
    live: bool
    threshold: float
    model: str
    apcer: float | None = None
    bpcer: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "live": self.live,
            "score": round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "apcer": self.apcer,
            "bpcer": self.bpcer,
            "model": self.model,
        }
