"""dlib's face-recognition ResNet (128-d, 150×150 chips) on ONNX Runtime."""

from __future__ import annotations

from functools import cache

import numpy as np

from faceprint.errors import InvalidImage
from faceprint.models.convert import converted_model
from faceprint.models.dlib_resnet_onnx import CONVERTER_VERSION, INPUT_NAME, OUTPUT_NAME, build_resnet_onnx
from faceprint.models.quantize import int8_model
from faceprint.models.runtime import create_session

# dlib's input_rgb_image_sized<150> defaults, also stored in the .dat file (checked by the tests).
_CHANNEL_MEANS = (122.782, 117.001, 104.298)


@cache
def _lookup_table() -> np.ndarray:
    """256×3 float32: pixel value → network input per channel, bit-exact with dlib's ``to_tensor``.

    dlib computes ``(pixel - avg)/256.0`` with ``avg`` a float; dividing by 256 is exact, so the float32
    difference scaled by 1/256 is the same number.
    """
    values = np.arange(256, dtype=np.float32)[:, None]
    table = (values - np.asarray(_CHANNEL_MEANS, dtype=np.float32)) / np.float32(256.0)
    table.setflags(write=False)
    return table


def preprocess(chips: np.ndarray) -> np.ndarray:
    """N×150×150×3 uint8 RGB → N×3×150×150 float32 network input (dlib's ``input_rgb_image_sized``)."""
    table = _lookup_table()
    out = np.empty((chips.shape[0], 3, *chips.shape[1:3]), dtype=np.float32)
    for c in range(3):
        np.take(table[:, c], chips[..., c], out=out[:, c], mode="clip")
    return out


class DlibResNetEmbedder:
    """dlib ResNet-29 face embeddings; matches ``dlib.face_recognition_model_v1`` to cosine ≥ 0.9999.

    The ONNX graph is converted from dlib's ``.dat`` file on first use and cached (see
    :mod:`faceprint.models.convert`). Safe to call from several threads at once.
    """

    model_id = "dlib-resnet-v1"
    chip_size = 150
    dim = 128
    max_batch = 64  # larger inputs are run in slices of this many chips to bound memory

    def __init__(self, *, device: str = "cpu", threads: int | None = None, precision: str = "fp32") -> None:
        """``precision``: ``fp32``, or ``int8`` (the graph quantized with the shipped ranges, cached)."""
        path = converted_model(self.model_id, build_resnet_onnx, version=CONVERTER_VERSION)
        self.path = int8_model(self.model_id, path) if precision == "int8" else path
        self.precision = precision
        self.session = create_session(self.path, device=device, threads=threads)
        self.device = device

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """N×150×150×3 uint8 RGB aligned chips → N×128 float32 L2-normalised rows (N may be 0)."""
        size = self.chip_size
        if not isinstance(chips, np.ndarray) or chips.dtype != np.uint8:
            kind = chips.dtype if isinstance(chips, np.ndarray) else type(chips).__name__
            raise InvalidImage("chips", f"expected a uint8 NumPy array, got {kind}")
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
            raise InvalidImage("chips", f"expected shape (N, {size}, {size}, 3), got {chips.shape}")
        n = chips.shape[0]
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.max_batch):
            batch = preprocess(chips[start : start + self.max_batch])
            out[start : start + len(batch)] = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
