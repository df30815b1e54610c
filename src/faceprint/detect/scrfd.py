"""SCRFD-layout detectors: insightface's ``scrfd_*_kps.onnx`` (also inside the buffalo/antelope packs as
``det_*.onnx``).

Outputs, per stride of ``strides`` (8, 16, 32), in insightface's order: all scores, then all box distances,
then all keypoint distances (``score_8, score_16, score_32, bbox_8, …, kps_32`` in recent exports, numbers in
older ones; names ``score_<s>``/``bbox_<s>``/``kps_<s>`` are used when present, else the order). Shapes are
``(1, A, k)`` or ``(A, k)`` with k = 1, 4, 10 and A = ``anchors`` × ⌈H/s⌉ × ⌈W/s⌉.

Anchors: cell (i, j) of a stride s has centre ``(j·s, i·s)`` (no half-cell offset), row-major, each centre
repeated ``anchors`` (2) times in a row. Scores are already sigmoid probabilities. Box distances and keypoint
offsets are in units of the stride: ``distance2bbox``: x1 = cx − d0·s, y1 = cy − d1·s, x2 = cx + d2·s,
y2 = cy + d3·s; ``distance2kps``: point k = (cx + e[2k]·s, cy + e[2k+1]·s).

Spec defaults: ``[input]`` RGB, mean 127.5, std 128 (insightface's ``blobFromImage``); ``[options]``
``strides`` [8, 16, 32], ``anchors`` 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprint.detect.keypoints import Decoded, KeypointDetector
from faceprint.errors import ModelError
from faceprint.models.spec import ModelSpec

DEFAULT_STRIDES = (8, 16, 32)


def anchor_centres(width: int, height: int, stride: int, anchors: int) -> np.ndarray:
    """(A, 2) anchor centres ``x, y`` in input pixels for one stride (see the module docstring)."""
    rows, cols = -(-height // stride), -(-width // stride)
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.stack([j.ravel(), i.ravel()], axis=1).astype(np.float32) * stride
    return np.repeat(centres, anchors, axis=0)


def decode_scrfd(
    scores: np.ndarray, distances: np.ndarray, kps: np.ndarray, centres: np.ndarray, stride: int
) -> Decoded:
    """One stride's outputs (A×1, A×4, A×10) and anchor centres (A×2) → boxes, scores, points (input px)."""
    d = distances * stride
    boxes = np.concatenate([centres - d[:, :2], centres + d[:, 2:]], axis=1)
    points = centres[:, None, :] + kps.reshape(-1, 5, 2) * stride
    return boxes, scores.reshape(-1), points


class ScrfdDetector(KeypointDetector):
    """Implements :class:`faceprint.detect.base.Detector` (and ``detect_landmarks``) from a spec."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads, min_score=min_score)
        self.strides = tuple(int(s) for s in spec.options.get("strides", DEFAULT_STRIDES))
        anchors = int(spec.options.get("anchors", 2))
        w, h = self.input.width, self.input.height
        self.centres = [anchor_centres(w, h, s, anchors) for s in self.strides]
        n = len(self.strides)
        names = self.output_names
        if all(f"{kind}_{s}" in names for kind in ("score", "bbox", "kps") for s in self.strides):
            self.heads = [(f"score_{s}", f"bbox_{s}", f"kps_{s}") for s in self.strides]
        elif len(names) == 3 * n:
            self.heads = [(names[k], names[k + n], names[k + 2 * n]) for k in range(n)]
        else:
            raise ModelError(
                f"model {spec.id!r}: an SCRFD-layout graph with keypoints has 3 outputs per stride "
                f"({', '.join(map(str, self.strides))}): scores, boxes, keypoints; {path.name} has {names}"
            )
        probe = dict(zip(names, self.run(np.zeros((1, self.input.channels, h, w), np.float32)), strict=True))
        for (score, bbox, kps), centres in zip(self.heads, self.centres, strict=True):
            for name, k in ((score, 1), (bbox, 4), (kps, 10)):
                got = probe[name].shape[-2:] if probe[name].ndim == 3 else probe[name].shape
                if tuple(got) != (len(centres), k):
                    raise ModelError(
                        f"model {spec.id!r}: output {name} of {path.name} has shape {probe[name].shape}, expected "
                        f"({len(centres)}, {k}) for a {w}×{h} input, {anchors} anchors per cell "
                        "(fix [input] or [options] strides/anchors in the spec)"
                    )
        self.unbatched = probe[self.heads[0][0]].ndim == 2

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        if getattr(self, "unbatched", False):  # exported without a batch dimension: one image per run
            return [a[None] for a in self.session.run(self.output_names, {self.input_name: tensor[:1]})]
        return super().run(tensor)

    def decode(self, outputs: dict[str, np.ndarray]) -> Decoded:
        parts = [
            decode_scrfd(outputs[score], outputs[bbox], outputs[kps], centres, stride)
            for (score, bbox, kps), centres, stride in zip(self.heads, self.centres, self.strides, strict=True)
        ]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]
