"""RetinaFace-layout detectors: the common ONNX exports of RetinaFace (biubug6's Pytorch_Retinaface and the
many exports derived from it, MobileNet-0.25 or ResNet-50 backbones).

The graph has one image input and three heads over all prior boxes, told apart by their last dimension:
``loc`` (1×P×4, box offsets), ``conf`` (1×P×2, background/face) and ``landms`` (1×P×10, 5 points). Output
names differ between exports (``loc``/``conf``/``landms``, ``output0``/``592``/…), so shapes decide.

Prior boxes, for an input of W×H: for each step ``s`` of ``steps`` (8, 16, 32) with its ``min_sizes`` ((16, 32),
(64, 128), (256, 512)), the feature map has ``ceil(H/s)`` × ``ceil(W/s)`` cells; in row-major order, each cell
(i, j) gives one prior per min size m: centre ``((j + 0.5)·s / W, (i + 0.5)·s / H)``, size ``(m / W, m / H)``.
Decoding with ``variance`` (0.1, 0.2): centre = prior centre + loc[:2]·v0·prior size, size = prior size ·
exp(loc[2:]·v1); point k = prior centre + landms[2k:2k+2]·v0·prior size; all × (W, H).

Spec defaults (``[options]``): ``min_sizes``, ``steps``, ``variance`` as above; ``conf = "probability"`` (the
export applies softmax, as biubug6's does) or ``"logits"``. ``[input]``: BGR, mean (104, 117, 123), std 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprint.detect.keypoints import Decoded, KeypointDetector
from faceprint.errors import ModelError
from faceprint.models.spec import ModelSpec

DEFAULT_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
DEFAULT_STEPS = (8, 16, 32)
DEFAULT_VARIANCE = (0.1, 0.2)


def prior_boxes(
    width: int,
    height: int,
    min_sizes: tuple[tuple[int, ...], ...] = DEFAULT_MIN_SIZES,
    steps: tuple[int, ...] = DEFAULT_STEPS,
) -> np.ndarray:
    """(P, 4) priors ``cx, cy, w, h`` as fractions of the input (see the module docstring)."""
    parts = []
    for sizes, step in zip(min_sizes, steps, strict=True):
        rows, cols = int(np.ceil(height / step)), int(np.ceil(width / step))
        i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cx = ((j.reshape(-1, 1) + 0.5) * step / width).repeat(len(sizes), axis=1)
        cy = ((i.reshape(-1, 1) + 0.5) * step / height).repeat(len(sizes), axis=1)
        m = np.asarray(sizes, dtype=np.float64)[None, :]
        pw, ph = np.broadcast_to(m / width, cx.shape), np.broadcast_to(m / height, cx.shape)
        parts.append(np.stack([cx, cy, pw, ph], axis=-1).reshape(-1, 4))
    return np.concatenate(parts).astype(np.float32)


def decode_retinaface(
    loc: np.ndarray, conf: np.ndarray, landms: np.ndarray, priors: np.ndarray, width: int, height: int,
    variance: tuple[float, float] = DEFAULT_VARIANCE,
) -> Decoded:  # fmt: skip
    """One image's heads (P×4, P×2 probabilities, P×10) → boxes, face scores, points in input pixels."""
    v0, v1 = variance
    centre = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    scale = np.array([width, height], dtype=np.float32)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * np.tile(scale, 2)
    points = priors[:, None, :2] + landms.reshape(-1, 5, 2) * v0 * priors[:, None, 2:]
    return boxes, conf[:, 1], points * scale


class RetinaFaceDetector(KeypointDetector):
    """Implements :class:`faceprint.detect.base.Detector` (and ``detect_landmarks``) from a spec."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None,
                 min_score: float | None = None) -> None:  # fmt: skip
        super().__init__(spec, path, device=device, threads=threads, min_score=min_score)
        o = spec.options
        steps = tuple(int(s) for s in o.get("steps", DEFAULT_STEPS))
        min_sizes = tuple(tuple(int(m) for m in group) for group in o.get("min_sizes", DEFAULT_MIN_SIZES))
        if len(steps) != len(min_sizes):
            raise ModelError(f"model {spec.id!r} ({spec.origin}): [options] steps and min_sizes differ in length")
        self.variance = tuple(float(v) for v in o.get("variance", DEFAULT_VARIANCE))
        self.logits = o.get("conf", "probability") == "logits"
        self.priors = prior_boxes(self.input.width, self.input.height, min_sizes, steps)
        probe = self.run(np.zeros((1, self.input.channels, self.input.height, self.input.width), np.float32))
        self.heads: dict[int, str] = {}
        for name, array in zip(self.output_names, probe, strict=True):
            if array.ndim == 3 and array.shape[1] == len(self.priors) and array.shape[2] in (4, 2, 10):
                self.heads[array.shape[2]] = name
        if len(self.heads) != 3:
            shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(self.output_names, probe, strict=True))
            raise ModelError(
                f"model {spec.id!r}: a RetinaFace-layout graph has outputs 1×P×4 (loc), 1×P×2 (conf) and 1×P×10 "
                f"(landmarks) with P = {len(self.priors)} priors for a {self.input.width}×{self.input.height} "
                f"input and the spec's steps/min_sizes; {path.name} has {shapes}"
            )

    def decode(self, outputs: dict[str, np.ndarray]) -> Decoded:
        conf = outputs[self.heads[2]]
        if self.logits:
            e = np.exp(conf - conf.max(axis=1, keepdims=True))
            conf = e / e.sum(axis=1, keepdims=True)
        return decode_retinaface(
            outputs[self.heads[4]], conf, outputs[self.heads[10]], self.priors,
            self.input.width, self.input.height, self.variance,  # type: ignore[arg-type]
        )  # fmt: skip
