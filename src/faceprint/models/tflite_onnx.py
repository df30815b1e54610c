"""A TFLite flatbuffer → ONNX converter for the float graphs of mediapipe's face models.

The flatbuffer is read with the generated schema classes of the PyPI package ``tflite`` (no TensorFlow, no
interpreter). Only the operators the three shipped graphs use are mapped (BlazeFace short/full range, the
468-point face mesh); any other operator is a :class:`~faceprint.errors.ModelError` naming it:

``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``ADD``, ``RELU``, ``PRELU``, ``MAX_POOL_2D``, ``PAD``, ``RESHAPE``,
``CONCATENATION``, ``RESIZE_BILINEAR``, ``DEPTH_TO_SPACE``, and on constants ``DEQUANTIZE`` (float16 weights →
float32) and ``DENSIFY`` (sparse weights, TFLite's CSR dimension format → dense), both folded at conversion.

Layout: TFLite is NHWC, ONNX convolutions are NCHW. Every 4-D activation is kept NCHW inside the graph; the
graph input is ``N×C×H×W`` (so it fits :class:`~faceprint.models.onnx_model.OnnxModel`) and only where a 4-D
tensor leaves the 4-D world (``RESHAPE``, a 4-D graph output) is it transposed back to NHWC, so the outputs
have TFLite's shapes and element order. ``SAME`` padding is TensorFlow's: ``out = ceil(in / stride)``, the
total padding split with the smaller half first, written as explicit ONNX pads. The batch dimension is
symbolic (reshape targets copy it), so several crops run in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faceprint.errors import ModelError

__all__ = ["CONVERTER_VERSION", "TfliteGraph", "convert_tflite", "read_tflite"]

CONVERTER_VERSION = "tflite-onnx-1"
OPSET = 17

# TFLite enums (schema.fbs)
_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
_SAME, _VALID = 0, 1
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3
_DENSE, _SPARSE_CSR = 0, 1
_NHWC_TO_NCHW = [0, 3, 1, 2]
_NCHW_TO_NHWC = [0, 2, 3, 1]


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: type
    data: np.ndarray | None  # constants only


@dataclass
class _Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: object | None


@dataclass
class TfliteGraph:
    """The one subgraph of a TFLite model: tensors, operators in execution order, graph inputs/outputs."""

    tensors: list[_Tensor]
    ops: list[_Op]
    inputs: list[int]
    outputs: list[int]

    def op_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.kind] = out.get(op.kind, 0) + 1
        return out


def _schema() -> Any:
    """The ``tflite`` package's generated schema classes. Imported only when a model is converted (once per
    model and converter version): its ~200 modules would add about 0.2 s to every command's start."""
    import tflite

    return tflite


def _index_vector(union_type: int, table: object) -> np.ndarray:
    tflite = _schema()
    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(union_type)
    if cls is None or table is None:
        raise ModelError(f"TFLite sparse tensor: unsupported index vector type {union_type}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)  # type: ignore[attr-defined]
    return vec.ValuesAsNumpy().astype(np.int64)


def _densify(values: np.ndarray, shape: tuple[int, ...], sparsity: object) -> np.ndarray:
    """A dense array from TFLite's sparse format (identity traversal order, no block map; dense and CSR
    dimensions in any mix): walk the dimensions keeping, per element so far, its flat position in the dense
    array and its node index in the compressed structure."""
    order = sparsity.TraversalOrderAsNumpy()  # type: ignore[attr-defined]
    if sparsity.BlockMapLength() or not np.array_equal(order, np.arange(len(shape))):  # type: ignore[attr-defined]
        raise ModelError("TFLite sparse tensor: block-sparse or reordered tensors are not supported")
    flat = np.zeros(1, np.int64)
    node = np.zeros(1, np.int64)
    for level, size in enumerate(shape):
        meta = sparsity.DimMetadata(level)  # type: ignore[attr-defined]
        if meta.Format() == _DENSE:
            flat = (flat[:, None] * size + np.arange(size)).ravel()
            node = (node[:, None] * size + np.arange(size)).ravel()
            continue
        segments = _index_vector(meta.ArraySegmentsType(), meta.ArraySegments())
        indices = _index_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
        counts = segments[node + 1] - segments[node]
        starts = np.repeat(segments[node], counts)
        child = starts + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        flat = np.repeat(flat, counts) * size + indices[child]
        node = child
    if node.size != values.size:
        raise ModelError(f"TFLite sparse tensor: {values.size} values for {node.size} positions")
    dense = np.zeros(int(np.prod(shape)), values.dtype)
    dense[flat] = values[node]
    return dense.reshape(shape)


def read_tflite(path: Path) -> TfliteGraph:
    """Parse a ``.tflite`` file's first subgraph (weights as NumPy arrays, sparse ones densified)."""
    tflite = _schema()
    data = path.read_bytes()
    try:
        if not tflite.Model.ModelBufferHasIdentifier(data, 0):
            raise ModelError(f"{path}: not a TFLite model (no TFL3 identifier)")
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise ModelError(f"{path}: {model.SubgraphsLength()} subgraphs; only single-graph models convert")
        graph = model.Subgraphs(0)
        opnames = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        tensors: list[_Tensor] = []
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            dtype = _TYPES.get(t.Type())
            if dtype is None:
                raise ModelError(f"{path}: tensor {t.Name().decode()!r} has unsupported TFLite type {t.Type()}")
            raw = model.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() < model.BuffersLength() else 0
            array = None
            if isinstance(raw, np.ndarray) and raw.size:
                values = np.frombuffer(raw.tobytes(), dtype=dtype)
                sparsity = t.Sparsity()
                array = _densify(values, shape, sparsity) if sparsity is not None else values.reshape(shape)
            tensors.append(_Tensor(t.Name().decode(), shape, dtype, array))
        ops: list[_Op] = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            kind = opnames.get(builtin, str(builtin))
            if kind == "CUSTOM":
                kind = "CUSTOM:" + (code.CustomCode() or b"").decode()
            options = None
            table = op.BuiltinOptions()
            cls = _OPTIONS.get(kind)
            if table is not None and cls is not None:
                options = getattr(tflite, cls)()
                options.Init(table.Bytes, table.Pos)
            ops.append(_Op(kind, [int(v) for v in op.InputsAsNumpy()], [int(v) for v in op.OutputsAsNumpy()], options))
        return TfliteGraph(
            tensors, ops, [int(v) for v in graph.InputsAsNumpy()], [int(v) for v in graph.OutputsAsNumpy()]
        )
    except ModelError:
        raise
    except Exception as exc:  # the flatbuffer reader raises struct/index errors on damaged files
        raise ModelError(f"{path}: cannot read the TFLite flatbuffer: {exc}") from None


_OPTIONS = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "ADD": "AddOptions",
    "CONCATENATION": "ConcatenationOptions",
    "RESHAPE": "ReshapeOptions",
    "RESIZE_BILINEAR": "ResizeBilinearOptions",
    "DEPTH_TO_SPACE": "DepthToSpaceOptions",
}


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, graph: TfliteGraph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.const: dict[int, np.ndarray] = {i: t.data for i, t in enumerate(graph.tensors) if t.data is not None}
        self.nchw: set[int] = set()  # tensors held NCHW (4-D activations)
        self.n = 0

    def name(self, index: int) -> str:
        return f"t{index}"

    def add_const(self, array: np.ndarray, hint: str) -> str:
        self.n += 1
        name = f"{hint}_{self.n}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, kind: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        self.n += 1
        out = output or f"{kind.lower()}_{self.n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"n{self.n}_{kind}", **attrs))
        return out

    def weight(self, index: int) -> np.ndarray:
        if index not in self.const:
            raise ModelError(f"TFLite tensor {self.g.tensors[index].name!r}: weights computed at run time")
        value = self.const[index]
        if value.dtype.kind != "f":
            raise ModelError(f"TFLite tensor {self.g.tensors[index].name!r}: {value.dtype} weights are not supported")
        return value.astype(np.float32)

    def activation(self, x: str, fused: int, output: str) -> str:
        if fused == _ACT_NONE:
            return self.node("Identity", [x], output)
        if fused == _ACT_RELU:
            return self.node("Relu", [x], output)
        if fused == _ACT_RELU6:
            lo, hi = self.add_const(np.float32(0), "zero"), self.add_const(np.float32(6), "six")
            return self.node("Clip", [x, lo, hi], output)
        raise ModelError(f"TFLite fused activation {fused} is not supported")

    def nhwc(self, index: int) -> str:
        """Tensor ``index`` in TFLite's own layout (transposed back when it is held NCHW)."""
        if index in self.nchw:
            return self.node("Transpose", [self.name(index)], perm=_NCHW_TO_NHWC)
        return self.name(index)

    def operand(self, index: int, like_nchw: bool) -> str:
        """An input of an elementwise op: a constant is laid out to broadcast against an NCHW tensor."""
        if index not in self.const:
            return self.name(index)
        value = self.const[index].astype(np.float32)
        if like_nchw:
            if value.ndim == 4:
                value = value.transpose(_NHWC_TO_NCHW)
            elif value.ndim in (1, 2, 3) and value.shape[-1] > 1:  # per-channel values on the last axis
                value = value.reshape(-1, 1, 1) if value.size == value.shape[-1] else np.moveaxis(value, -1, -3)
        return self.add_const(value, "c")

    # -- operators ------------------------------------------------------------------------------------------
    def convert(self, op: _Op) -> None:
        handler = getattr(self, "op_" + op.kind.lower().replace(":", "_"), None)
        if handler is None:
            raise ModelError(f"TFLite operator {op.kind} is not supported by faceprint's converter")
        handler(op)

    def _fold(self, op: _Op, value: np.ndarray) -> None:
        self.const[op.outputs[0]] = value

    def op_dequantize(self, op: _Op) -> None:
        if op.inputs[0] not in self.const:
            raise ModelError("TFLite DEQUANTIZE of a run-time tensor (a quantized graph) is not supported")
        value = self.const[op.inputs[0]]
        if value.dtype != np.float16:  # integer weights need their scale and zero point: not read here
            raise ModelError(f"TFLite DEQUANTIZE of {value.dtype} weights (a quantized graph) is not supported")
        self._fold(op, value.astype(np.float32))

    def op_densify(self, op: _Op) -> None:
        self._fold(op, self.const[op.inputs[0]])  # densified when read

    def _conv(self, op: _Op, depthwise: bool) -> None:
        o = op.options
        x = self.g.tensors[op.inputs[0]]
        w = self.weight(op.inputs[1])  # conv: O×kh×kw×I; depthwise: 1×kh×kw×(I·mult)
        kh, kw = w.shape[1], w.shape[2]
        sh, sw = o.StrideH(), o.StrideW()  # type: ignore[attr-defined]
        dh, dw = max(o.DilationHFactor(), 1), max(o.DilationWFactor(), 1)  # type: ignore[attr-defined]
        if o.Padding() == _SAME:  # type: ignore[attr-defined]
            (t, b), (left, r) = _same_pads(x.shape[1], kh, sh, dh), _same_pads(x.shape[2], kw, sw, dw)
        else:
            t = b = left = r = 0
        if depthwise:
            kernel = w.transpose(3, 0, 1, 2)  # (I·mult)×1×kh×kw
            group = x.shape[3]
        else:
            kernel = w.transpose(0, 3, 1, 2)
            group = 1
        inputs = [self.name(op.inputs[0]), self.add_const(kernel, "w")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            inputs.append(self.add_const(self.weight(op.inputs[2]), "b"))
        y = self.node(
            "Conv", inputs, kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], pads=[t, left, b, r],
            group=group,
        )  # fmt: skip
        self.activation(y, o.FusedActivationFunction(), self.name(op.outputs[0]))  # type: ignore[attr-defined]
        self.nchw.add(op.outputs[0])

    def op_conv_2d(self, op: _Op) -> None:
        self._conv(op, depthwise=False)

    def op_depthwise_conv_2d(self, op: _Op) -> None:
        self._conv(op, depthwise=True)

    def op_max_pool_2d(self, op: _Op) -> None:
        o = op.options
        x = self.g.tensors[op.inputs[0]]
        kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()  # type: ignore[attr-defined]
        if o.Padding() == _SAME:  # type: ignore[attr-defined]
            (t, b), (left, r) = _same_pads(x.shape[1], kh, sh), _same_pads(x.shape[2], kw, sw)
        else:
            t = b = left = r = 0
        y = self.node("MaxPool", [self.name(op.inputs[0])], kernel_shape=[kh, kw], strides=[sh, sw],
                      pads=[t, left, b, r])  # fmt: skip
        self.activation(y, o.FusedActivationFunction(), self.name(op.outputs[0]))  # type: ignore[attr-defined]
        self.nchw.add(op.outputs[0])

    def op_add(self, op: _Op) -> None:
        like = any(i in self.nchw for i in op.inputs)
        y = self.node("Add", [self.operand(i, like) for i in op.inputs])
        fused = op.options.FusedActivationFunction() if op.options is not None else _ACT_NONE  # type: ignore[attr-defined]
        self.activation(y, fused, self.name(op.outputs[0]))
        if like:
            self.nchw.add(op.outputs[0])

    def op_relu(self, op: _Op) -> None:
        self.node("Relu", [self.name(op.inputs[0])], self.name(op.outputs[0]))
        if op.inputs[0] in self.nchw:
            self.nchw.add(op.outputs[0])

    def op_prelu(self, op: _Op) -> None:
        like = op.inputs[0] in self.nchw
        self.node("PRelu", [self.name(op.inputs[0]), self.operand(op.inputs[1], like)], self.name(op.outputs[0]))
        if like:
            self.nchw.add(op.outputs[0])

    def op_pad(self, op: _Op) -> None:
        pads = self.const[op.inputs[1]].astype(np.int64).reshape(-1, 2)
        if op.inputs[0] in self.nchw:
            pads = pads[_NHWC_TO_NCHW]
            self.nchw.add(op.outputs[0])
        spec = self.add_const(np.concatenate([pads[:, 0], pads[:, 1]]), "pads")
        self.node("Pad", [self.name(op.inputs[0]), spec], self.name(op.outputs[0]), mode="constant")

    def op_reshape(self, op: _Op) -> None:
        out = self.g.tensors[op.outputs[0]]
        shape = np.array(out.shape, np.int64)
        shape[0] = 0  # copy the (symbolic) batch dimension
        x = self.nhwc(op.inputs[0])
        if len(out.shape) == 4:  # back into the NCHW world
            y = self.node("Reshape", [x, self.add_const(shape, "shape")])
            self.node("Transpose", [y], self.name(op.outputs[0]), perm=_NHWC_TO_NCHW)
            self.nchw.add(op.outputs[0])
        else:
            self.node("Reshape", [x, self.add_const(shape, "shape")], self.name(op.outputs[0]))

    def op_concatenation(self, op: _Op) -> None:
        o = op.options
        rank = len(self.g.tensors[op.outputs[0]].shape)
        axis = o.Axis() % rank  # type: ignore[attr-defined]
        layouts = {i in self.nchw for i in op.inputs}
        if len(layouts) != 1:
            raise ModelError("TFLite CONCATENATION of tensors in different layouts is not supported")
        if layouts.pop():
            axis = _NHWC_TO_NCHW.index(axis)
            self.nchw.add(op.outputs[0])
        y = self.node("Concat", [self.name(i) for i in op.inputs], axis=axis)
        self.activation(y, o.FusedActivationFunction(), self.name(op.outputs[0]))  # type: ignore[attr-defined]

    def op_resize_bilinear(self, op: _Op) -> None:
        o = op.options
        x, out = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        if op.inputs[0] not in self.nchw:
            raise ModelError("TFLite RESIZE_BILINEAR of a tensor that is not a 4-D activation")
        if o.AlignCorners():  # type: ignore[attr-defined]
            mode = "align_corners"
        elif o.HalfPixelCenters():  # type: ignore[attr-defined]
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        scales = np.array([1, 1, out.shape[1] / x.shape[1], out.shape[2] / x.shape[2]], np.float32)
        empty = self.add_const(np.zeros(0, np.float32), "roi")
        self.node("Resize", [self.name(op.inputs[0]), empty, self.add_const(scales, "scales")],
                  self.name(op.outputs[0]), mode="linear", coordinate_transformation_mode=mode)  # fmt: skip
        self.nchw.add(op.outputs[0])

    def op_depth_to_space(self, op: _Op) -> None:
        # TensorFlow's depth_to_space on NHWC is ONNX's DCR mode on NCHW
        block = op.options.BlockSize()  # type: ignore[attr-defined]
        self.node("DepthToSpace", [self.name(op.inputs[0])], self.name(op.outputs[0]), blocksize=block, mode="DCR")
        self.nchw.add(op.outputs[0])


def convert_tflite(path: Path, *, name: str | None = None) -> onnx.ModelProto:
    """``path`` (a float ``.tflite`` graph) as an ONNX model with an ``N×C×H×W`` float32 input named
    ``input`` and TFLite's outputs (names and shapes; batch symbolic)."""
    graph = read_tflite(path)
    if len(graph.inputs) != 1:
        raise ModelError(f"{path}: {len(graph.inputs)} graph inputs; faceprint converts single-input graphs")
    b = _Builder(graph)
    (inp,) = graph.inputs
    in_shape = graph.tensors[inp].shape
    if len(in_shape) != 4:
        raise ModelError(f"{path}: the input is {in_shape}, not an image batch (N×H×W×C)")
    b.nchw.add(inp)
    b.nodes.append(helper.make_node("Identity", ["input"], [b.name(inp)], name="input_identity"))
    for op in graph.ops:
        b.convert(op)
    outputs = []
    for index in graph.outputs:
        t = graph.tensors[index]
        src = b.nhwc(index)
        b.node("Identity", [src], t.name)
        outputs.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["N", *t.shape[1:]]))
    _, h, w, c = in_shape
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])]
    onnx_graph = helper.make_graph(b.nodes, name or path.stem, inputs, outputs, b.inits)
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceprint " + CONVERTER_VERSION
    )
    model.ir_version = 8  # readable by every onnxruntime faceprint supports
    onnx.checker.check_model(model)
    return model
