"""The base of every spec-driven ONNX model: session, input checks, preprocessing, batching.

A concrete family (ArcFace-layout embedder, UltraFace detector, 68-point landmarks) only says what to do
with the outputs; everything the spec describes is done here:

* the graph's input must be ``N×C×H×W`` with the spec's channels, height and width; a spec that disagrees
  fails at load with a message naming both shapes (never garbage vectors later);
* images are converted to the spec's colour order and normalised ``(pixel - mean) / std`` with one
  vectorised NumPy expression;
* graphs exported with a fixed batch of 1 (common for mobile models) are made batchable by marking the
  batch dimension symbolic and turning reshape targets ``[1, …]`` into ``[0, …]`` (copy the batch); the
  rewrite is kept only when a two-image probe gives the same outputs as two single runs, otherwise images
  are run one at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from faceprint.errors import InvalidImage, ModelError
from faceprint.models.runtime import create_session
from faceprint.models.spec import InputSpec, ModelSpec

log = logging.getLogger(__name__)

#: Largest batch given to the network in one run (bounds memory for big requests).
MAX_BATCH = 64


def _batchable(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` with a symbolic batch dimension, or ``None`` when it already has one."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    if first.dim_param or first.dim_value != 1:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in [out.graph.input[0], *out.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"
    inits = {init.name: init for init in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.ndim == 1 and shape.size and shape[0] == 1:
                shape[0] = 0  # ONNX Reshape: 0 copies that dimension from the input
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    return out


class OnnxModel:
    """Owns one ONNX Runtime session for a spec; subclasses interpret the outputs."""

    def __init__(self, spec: ModelSpec, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        if spec.input is None:
            raise ModelError(f"model {spec.id!r} ({spec.origin}): the spec has no [input] section")
        self.spec = spec
        self.model_id = spec.id
        self.path = path
        self.input: InputSpec = spec.input
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ModelError(f"model {spec.id!r}: {path} is not a readable ONNX model: {exc}") from None
        self._check_input(proto, path)
        self.input_name = proto.graph.input[0].name
        self.output_names = [o.name for o in proto.graph.output]
        self.batched = False
        batchable = _batchable(proto)
        if batchable is not None:
            try:
                session = create_session(batchable.SerializeToString(), device=device, threads=threads)
                self.session = session
                self.batched = self._probe_batching(create_session(path, device=device, threads=threads))
            except Exception as exc:  # the rewrite broke the graph: keep the original
                log.debug("model %s: batch rewrite failed (%s); running one image at a time", spec.id, exc)
            if not self.batched:
                self.session = create_session(path, device=device, threads=threads)
        else:
            self.session = create_session(path, device=device, threads=threads)
            self.batched = True

    def _check_input(self, proto: onnx.ModelProto, path: Path) -> None:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.dim_value else (d.dim_param or "?") for d in dims]
        want = (self.input.channels, self.input.height, self.input.width)
        got = tuple(shape[1:])
        fixed = [isinstance(g, int) for g in got]
        if len(shape) != 4 or any(f and g != w for f, g, w in zip(fixed, got, want, strict=True)):
            raise ModelError(
                f"model {self.spec.id!r}: the spec ({self.spec.origin}) says the input is "
                f"{want[0]}×{want[1]}×{want[2]} (channels×height×width), but {path.name} expects "
                f"{'×'.join(map(str, shape))}; fix [input] width/height/colour in the spec"
            )

    def _probe_batching(self, single: object) -> bool:
        rng = np.random.default_rng(0)
        probe = rng.standard_normal((2, self.input.channels, self.input.height, self.input.width)).astype(np.float32)
        both = self.session.run(None, {self.input_name: probe})
        ones = [single.run(None, {self.input_name: probe[i : i + 1]}) for i in range(2)]  # type: ignore[attr-defined]
        for k, out in enumerate(both):
            expected = np.concatenate([o[k] for o in ones])
            if out.shape != expected.shape or not np.allclose(out, expected, rtol=1e-3, atol=1e-4):
                return False
        return True

    # -- preprocessing and running ----------------------------------------------------------------------
    def to_tensor(self, images: np.ndarray) -> np.ndarray:
        """N×H×W×3 uint8 RGB (or N×H×W grey) → N×C×H×W float32 in the spec's colour order and scale."""
        spec = self.input
        if spec.colour == "GRAY":
            if images.ndim == 4:
                # ITU-R 601 luma, as OpenCV's RGB2GRAY
                images = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            x = images.astype(np.float32)[:, None]
        else:
            x = images[..., ::-1] if spec.colour == "BGR" else images
            x = x.astype(np.float32).transpose(0, 3, 1, 2)
        mean = np.asarray(spec.mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[None, :, None, None]
        return np.ascontiguousarray((x - mean) / std)

    def check_images(self, images: np.ndarray, what: str = "images") -> None:
        spec = self.input
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise InvalidImage(what, f"expected a uint8 NumPy array, got {kind}")
        if images.ndim != 4 or images.shape[1:] != (spec.height, spec.width, 3):
            raise InvalidImage(what, f"expected shape (N, {spec.height}, {spec.width}, 3), got {images.shape}")

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the network on an N×C×H×W tensor in batches; one array per graph output, N rows each."""
        n = tensor.shape[0]
        step = MAX_BATCH if self.batched else 1
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, step):
            parts.append(self.session.run(self.output_names, {self.input_name: tensor[start : start + step]}))
        if not parts:
            return []
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]
