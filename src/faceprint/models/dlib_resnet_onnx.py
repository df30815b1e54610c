"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as an ONNX graph.

The graph takes ``chips``: float32 N×3×150×150, already normalised the way dlib's ``input_rgb_image_sized``
does it (``(pixel - channel_mean) / 256``, RGB planes), and gives ``embedding``: float32 N×128, the raw
output of dlib's network (not L2-normalised, like ``compute_face_descriptor``). The batch dimension is
dynamic. Every ``affine`` layer that follows a convolution is folded into that convolution's weights.

dlib does not store which tag a ``tag``/``skip``/``add_prev`` layer refers to (see
:mod:`faceprint.models.dlib_format`), so the builder uses the two residual shapes of this network:

* ``relu(add_prev1(block(tag1(x))))``: a lone marker tags ``x``; ``add_prev`` adds the last tag.
* ``relu(add_prev2(avg_pool(skip1(tag2(block(tag1(x)))))))``: a pair of markers tags the block output and
  skips back to the tag before it; ``add_prev`` again adds the last tag (the block output).

As in dlib, ``add_prev`` of tensors of different shape zero-pads the smaller one at the end of each dimension
(this network adds a 3×3 block output to a 4×4 pooled skip, and 32-channel skips to 64-channel blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faceprint.models.dlib_format import DlibFormatError, LayerRecord, affine_params, read_network

__all__ = ["CONVERTER_VERSION", "INPUT_NAME", "OUTPUT_NAME", "build_resnet_onnx", "records_to_onnx"]

CONVERTER_VERSION = "dlib-resnet-onnx-2"
INPUT_NAME = "chips"
OUTPUT_NAME = "embedding"
OPSET = 17


@dataclass(frozen=True)
class _Value:
    """A tensor of the graph under construction with its static C×H×W shape (batch is dynamic)."""

    name: str
    shape: tuple[int, int, int]


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: object) -> str:
        out = self._name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # ------------------------------------------------------------------------------------------ layers

    def conv(self, x: _Value, rec: LayerRecord, fold: LayerRecord | None) -> _Value:
        a = rec.attrs
        weight = rec.params["weight"].astype(np.float64)
        bias = rec.params.get("bias", np.zeros(weight.shape[0])).astype(np.float64)
        if weight.shape[1] != x.shape[0]:
            raise DlibFormatError(f"con expects {weight.shape[1]} input channels, got {x.shape[0]}")
        if fold is not None:
            scale, shift = (v.astype(np.float64) for v in affine_params(fold))
            if scale.size:  # an enabled affine layer in conv mode: y = scale * (w*x + b) + shift
                weight = weight * scale[:, None, None, None]
                bias = bias * scale + shift
        kh, kw = weight.shape[2:]
        sy, sx, py, px = a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"]
        out = self.node(
            "Conv",
            [x.name, self.const("W", weight.astype(np.float32)), self.const("B", bias.astype(np.float32))],
            "conv",
            kernel_shape=[kh, kw],
            strides=[sy, sx],
            pads=[py, px, py, px],
        )
        h = (x.shape[1] + 2 * py - kh) // sy + 1
        w = (x.shape[2] + 2 * px - kw) // sx + 1
        value = _Value(out, (weight.shape[0], h, w))
        return self.relu(value) if a["use_relu"] else value

    def affine(self, x: _Value, rec: LayerRecord) -> _Value:
        scale, shift = affine_params(rec)
        if not scale.size:
            return x
        conv_mode = rec.kind == "bn_con" or rec.attrs.get("mode") == "conv"
        shape = (1, -1, 1, 1) if conv_mode else (1, *x.shape)
        mul = self.node("Mul", [x.name, self.const("scale", scale.reshape(shape))], "affine_mul")
        add = self.node("Add", [mul, self.const("shift", shift.reshape(shape))], "affine_add")
        return _Value(add, x.shape)

    def relu(self, x: _Value) -> _Value:
        return _Value(self.node("Relu", [x.name], "relu"), x.shape)

    def pool(self, x: _Value, rec: LayerRecord, channels: int | None = None) -> _Value:
        """A pooling layer; an ``avg_pool`` whose output is zero-padded to ``channels`` becomes a Conv.

        The Conv (weights 1/(kh·kw) on the diagonal, 0 elsewhere) averages and widens in one op, which keeps
        ORT's blocked NCHWc layout and its Conv+Add+Relu fusion alive where a Pad node would break them.
        """
        a = rec.attrs
        if a["nr"] == 0 and a["nc"] == 0:
            op = "GlobalAveragePool" if rec.kind == "avg_pool" else "GlobalMaxPool"
            return _Value(self.node(op, [x.name], "gpool"), (x.shape[0], 1, 1))
        kh, kw = a["nr"] or x.shape[1], a["nc"] or x.shape[2]
        sy, sx, py, px = a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"]
        if rec.kind == "avg_pool" and (py or px):
            raise DlibFormatError("avg_pool with padding is not supported")
        h = (x.shape[1] + 2 * py - kh) // sy + 1
        w = (x.shape[2] + 2 * px - kw) // sx + 1
        geometry = {"kernel_shape": [kh, kw], "strides": [sy, sx], "pads": [py, px, py, px]}
        if rec.kind == "avg_pool" and channels is not None and channels > x.shape[0]:
            weight = np.zeros((channels, x.shape[0], kh, kw), dtype=np.float32)
            weight[np.arange(x.shape[0]), np.arange(x.shape[0])] = 1.0 / (kh * kw)
            out = self.node("Conv", [x.name, self.const("Wpool", weight)], "pool_widen", **geometry)
            return _Value(out, (channels, h, w))
        op = "AveragePool" if rec.kind == "avg_pool" else "MaxPool"
        return _Value(self.node(op, [x.name], "pool", **geometry), (x.shape[0], h, w))

    def pad_to(self, x: _Value, shape: tuple[int, int, int]) -> str:
        if x.shape == shape:
            return x.name
        ends = [0, *(t - s for t, s in zip(shape, x.shape, strict=True))]
        pads = np.array([0, 0, 0, 0, *ends], dtype=np.int64)
        return self.node("Pad", [x.name, self.const("pads", pads)], "pad", mode="constant")

    def add(self, x: _Value, y: _Value) -> _Value:
        shape = tuple(max(a, b) for a, b in zip(x.shape, y.shape, strict=True))
        return _Value(self.node("Add", [self.pad_to(x, shape), self.pad_to(y, shape)], "add"), shape)

    def fc(self, x: _Value, rec: LayerRecord) -> _Value:
        n_in = rec.attrs["num_inputs"]
        if n_in != int(np.prod(x.shape)):
            raise DlibFormatError(f"fc expects {n_in} inputs, got {x.shape}")
        flat = self.node("Flatten", [x.name], "flatten", axis=1)
        out = self.node("MatMul", [flat, self.const("fcW", rec.params["weight"])], "fc")
        if "bias" in rec.params:
            out = self.node("Add", [out, self.const("fcB", rec.params["bias"])], "fc_bias")
        return _Value(out, (rec.attrs["num_outputs"], 1, 1))


def records_to_onnx(records: list[LayerRecord]) -> onnx.ModelProto:
    """Build the ONNX model from the layer records of dlib's face-recognition ResNet."""
    if not records or records[0].kind != "input_rgb_image_sized" or records[-1].kind != "loss_metric":
        raise DlibFormatError("not a dlib metric-learning network with an input_rgb_image_sized input")
    size = (records[0].attrs["nr"], records[0].attrs["nc"])
    g = _GraphBuilder()
    x = _Value(INPUT_NAME, (3, *size))
    tags: list[_Value] = []
    layers = records[1:-1]
    i = 0
    while i < len(layers):
        rec = layers[i]
        if rec.kind == "con":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            fold = nxt if nxt is not None and nxt.kind in ("affine", "bn_con") else None
            if fold is not None and fold.kind == "affine" and fold.attrs["mode"] != "conv":
                fold = None
            x = g.conv(x, rec, fold)
            i += 2 if fold is not None else 1
            continue
        if rec.kind in ("affine", "bn_con", "bn_fc"):
            x = g.affine(x, rec)
        elif rec.kind == "relu":
            if not rec.attrs["disabled"]:
                x = g.relu(x)
        elif rec.kind in ("max_pool", "avg_pool"):
            feeds_add = i + 1 < len(layers) and layers[i + 1].kind == "add_prev" and tags
            x = g.pool(x, rec, channels=tags[-1].shape[0] if feeds_add else None)
        elif rec.kind == "tag_or_skip":
            run = 1
            while i + run < len(layers) and layers[i + run].kind == "tag_or_skip":
                run += 1
            if run == 1:
                tags.append(x)
            elif run == 2 and tags:
                tags.append(x)
                x = tags[-2]
            else:
                raise DlibFormatError(f"unexpected run of {run} tag/skip layers at layer {i + 1}")
            i += run
            continue
        elif rec.kind == "add_prev":
            if not tags:
                raise DlibFormatError(f"add_prev without a tag at layer {i + 1}")
            x = g.add(x, tags[-1])
            tags.clear()
        elif rec.kind == "fc":
            x = g.fc(x, rec)
        else:
            raise DlibFormatError(f"layer kind {rec.kind!r} is not supported in the ResNet graph")
        i += 1

    out_dim = x.shape[0]
    g.nodes[-1].output[0] = OUTPUT_NAME
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, *size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", out_dim])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="faceprint",
        producer_version=CONVERTER_VERSION,
    )
    model.ir_version = 8  # readable by every onnxruntime faceprint supports
    onnx.checker.check_model(model)
    return model


def build_resnet_onnx(path: Path) -> onnx.ModelProto:
    """Read a dlib ResNet ``.dat`` file and build its ONNX model (a ``builder`` for ``converted_model``)."""
    return records_to_onnx(read_network(path))
