"""1:1 verification of two images or faceprints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceprint.image import Image, ImageSource, load_image
from faceprint.matching import Calibration, Decision, decide
from faceprint.pipeline import Pipeline
from faceprint.types import Faceprint

VerifyInput = ImageSource | Image | Faceprint


@dataclass(frozen=True)
class Verification:
    """The decision plus which face of each input was used."""

    decision: Decision
    a: Faceprint
    b: Faceprint
    faces_in_a: int
    faces_in_b: int

    def to_dict(self) -> dict:
        out = self.decision.to_dict()
        notes = [
            f"image {label} holds {n} faces; the largest was used, box {_box(fp)}"
            for label, n, fp in (("a", self.faces_in_a, self.a), ("b", self.faces_in_b, self.b))
            if n > 1
        ]
        if notes:
            out["notes"] = notes
        return out


def _box(fp: Faceprint) -> str:
    return "unknown" if fp.detection is None else "(" + ", ".join(f"{v:.0f}" for v in fp.detection.box) + ")"


def _as_faceprint(value: VerifyInput, pipeline: Pipeline, name: str) -> tuple[Faceprint, int]:
    if isinstance(value, Faceprint):
        return value, 1
    if isinstance(value, np.ndarray) and value.ndim == 1:
        # A bare vector: taken to come from this pipeline's embedder.
        return Faceprint(vector=np.asarray(value, dtype=np.float32), model_id=pipeline.model_id), 1
    return pipeline.largest_face(load_image(value, name=None if not isinstance(value, np.ndarray) else name))


def verify(
    a: VerifyInput,
    b: VerifyInput,
    *,
    fmr: float | None = None,
    fpir: float | None = None,
    threshold: float | None = None,
    pipeline: Pipeline,
    calibration: Calibration | None = None,
) -> Verification:
    """Same person? Images use their largest face; vectors and faceprints are compared as they are. The
    threshold follows the one rule (``fmr`` | ``fpir`` | ``threshold``) on the pipeline's calibration table."""
    fa, na = _as_faceprint(a, pipeline, "image_a")
    fb, nb = _as_faceprint(b, pipeline, "image_b")
    table = calibration or pipeline.calibration
    decision = decide(fa, fb, fmr=fmr, fpir=fpir, threshold=threshold, calibration=table)
    return Verification(decision, fa, fb, na, nb)
