"""ArcFace-layout embedders: an aligned S×S chip in, one embedding vector out.

insightface's w600k/glint models, MobileFaceNet, AdaFace, SFace and the faceplugin ``fr_feature.onnx`` all
share this layout; what differs (input size, colour order, normalisation, output dimension, chip template)
is in the spec, so adding one is a spec file and ``faceprint models add``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprint.errors import ModelError
from faceprint.models.onnx_model import OnnxModel
from faceprint.models.spec import ModelSpec


class OnnxEmbedder(OnnxModel):
    """Implements the :class:`faceprint.embed.base.Embedder` protocol from a spec. Thread-safe."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(spec, path, device=device, threads=threads)
        if self.input.width != self.input.height:
            raise ModelError(f"model {spec.id!r}: embedder chips must be square, spec says {self.input.width}×"
                             f"{self.input.height}")  # fmt: skip
        self.chip_size = self.input.width
        self.dim = int(spec.output_dim or 0)
        probe = self.run(np.zeros((1, self.input.channels, self.chip_size, self.chip_size), np.float32))[0]
        if probe.ndim != 2 or probe.shape[1] != self.dim:
            raise ModelError(
                f"model {spec.id!r}: the spec ({spec.origin}) says [output] dim = {self.dim}, but {path.name} "
                f"returns shape {probe.shape}; fix the spec"
            )

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """N×S×S×3 uint8 RGB aligned chips → N×dim float32 L2-normalised rows (N may be 0)."""
        self.check_images(chips, "chips")
        if chips.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.run(self.to_tensor(chips))[0].astype(np.float32, copy=False)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
