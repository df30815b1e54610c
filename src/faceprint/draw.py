"""Annotated images: boxes, scores and landmarks drawn on a copy of the photo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from faceprint.image import Image
from faceprint.types import Detection


def draw_detections(pixels: np.ndarray, faces: Sequence[Detection], labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of ``pixels`` (RGB) with each face's box, score (or label) and landmarks drawn."""
    canvas = pixels.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 220, 0), thickness)
        text = labels[i] if labels is not None else f"{face.score:.2f}"
        scale = max(0.4, thickness * 0.4)
        cv2.putText(
            canvas, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), thickness, cv2.LINE_AA
        )
        if face.landmarks is not None:
            for x, y in face.landmarks:
                cv2.circle(canvas, (round(float(x)), round(float(y))), thickness + 1, (255, 0, 0), -1)
    return canvas


def annotate_detections(image: Image, faces: Sequence[Detection], out_dir: Path) -> Path:
    """Write the annotated image as ``OUT_DIR/<stem>.annotated.jpg``; never into the photo's own folder
    unless asked to."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image.source).stem or "image"
    target = out_dir / f"{stem}.annotated.jpg"
    canvas = draw_detections(image.pixels, faces)
    cv2.imwrite(str(target), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return target
