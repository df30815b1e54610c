"""The embedder seam: aligned face chips in, L2-normalised embedding rows out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns aligned chips (N×chip_size×chip_size×3 uint8 RGB) into N×dim float32 unit-length rows."""

    model_id: str
    chip_size: int
    dim: int

    def embed_chips(self, chips: np.ndarray) -> np.ndarray: ...


def embed_chips(embedder: Embedder, chips: np.ndarray, *, mirror: bool = False) -> np.ndarray:
    """``embedder``'s unit rows for ``chips``; with ``mirror``, of each chip plus its mirror image (the sum of the
    two embeddings, renormalised: test-time augmentation, twice the network work). The one place the mirrored
    chip is formed, so the pipeline, gallery migration and the Ray embedder give the same vectors."""
    vectors = embedder.embed_chips(chips)
    if not mirror or len(chips) == 0:
        return vectors
    total = vectors + embedder.embed_chips(np.ascontiguousarray(chips[:, :, ::-1]))
    return (total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)).astype(np.float32)
