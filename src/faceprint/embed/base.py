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
