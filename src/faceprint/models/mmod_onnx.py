"""dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``) as an ONNX graph plus its geometry.

dlib's network is ``loss_mmod<con<1,9,9,1,1, rcon5<rcon5<rcon5<downsampler<input_rgb_image_pyramid<
pyramid_down<6>>>>>>>>`` — three stride-2 5×5 convolutions, three 5×5 ones and a 9×9 scorer, each but the last
followed by batch-norm statistics (stored as ``bn_con``, applied by dlib as a fixed ``affine``) and a relu.

The graph covers the convolutional trunk only: ``image`` float32 1×3×H×W (dynamic H, W; the tiled, normalised
pyramid that :mod:`faceprint.detect.mmod` builds) → ``scores`` float32 1×W×h×w, one channel per detector
window. Every affine is folded into the convolution before it (in float64, then cast); ONNX Runtime fuses
the relus and runs the convolutions in its blocked NCHWc layout (the 45-channel layers are padded to 48 with
zero filters for that). The 9×9 scorer is split into a 1×1 convolution and shifted sums (:func:`_split_conv`).

:func:`read_mmod` gives what the rest of the pipeline needs from the same file (:class:`MMODGeometry`): the
channel means, pyramid paddings, detector windows, NMS thresholds, and the affine map from a score-map cell to
its centre in the input tensor, composed from the convolutions' strides, paddings and kernel sizes exactly as
dlib's ``output_tensor_to_input_tensor`` does (``x_in = x_out·stride − padding + kernel//2`` per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from faceprint.models.dlib_format import DlibFormatError, LayerRecord, affine_params, read_network

__all__ = [
    "CONVERTER_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "MMODGeometry",
    "build_mmod_onnx",
    "build_resize_onnx",
    "read_mmod",
    "records_to_onnx",
]

CONVERTER_VERSION = "dlib-mmod-onnx-4"  # 4: symbolic batch (the cascade runs all its crops at once)
INPUT_NAME = "image"
OUTPUT_NAME = "scores"
OPSET = 17


@dataclass(frozen=True)
class MMODGeometry:
    """Everything outside the conv trunk that dlib's detector does, as stored in the ``.dat`` file."""

    channel_means: tuple[float, float, float]  # subtracted from R, G, B before dividing by 256
    pyramid_padding: int
    pyramid_outer_padding: int
    windows: tuple[tuple[int, int], ...]  # (width, height) of each detector window = score channel
    nms_iou: float
    nms_percent_covered: float
    # score-map cell (c, r) → input tensor point (c·stride + offset, r·stride + offset), per axis (x, y)
    stride: tuple[int, int]
    offset: tuple[int, int]
    min_input: int  # smallest input height/width that yields a score map (smaller inputs find nothing)


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise DlibFormatError(f"not dlib's MMOD face detector: {what}")


def _check_records(records: list[LayerRecord]) -> None:
    _require(len(records) >= 3, "too few layers")
    _require(records[0].kind == "input_rgb_image_pyramid", f"input layer is {records[0].kind!r}")
    _require(records[-1].kind == "loss_mmod", f"loss layer is {records[-1].kind!r}")
    loss = records[-1].attrs
    _require(not loss["use_bounding_box_regression"], "bounding-box regression is not supported")
    _require(bool(loss["assume_image_pyramid"]), "the detector does not assume an image pyramid")
    for rec in records[1:-1]:
        _require(rec.kind in ("con", "bn_con", "affine", "relu"), f"unsupported layer {rec.kind!r}")


def read_mmod(path: Path | str) -> MMODGeometry:
    """The non-network parameters of an MMOD detector file."""
    records = read_network(path)
    _check_records(records)
    inp, loss = records[0].attrs, records[-1].attrs
    stride, offset = [1, 1], [0, 0]
    # compose dlib's map_output_to_input from the output layer down to the input
    for rec in reversed(records[1:-1]):
        if rec.kind != "con":
            continue
        a = rec.attrs
        for axis, (s, p, k) in enumerate(
            ((a["stride_x"], a["padding_x"], a["nc"]), (a["stride_y"], a["padding_y"], a["nr"]))
        ):
            offset[axis] = offset[axis] * s - p + k // 2
            stride[axis] *= s
    convs = [(r.attrs["nr"], r.attrs["stride_y"], r.attrs["padding_y"]) for r in records if r.kind == "con"]
    convs += [(r.attrs["nc"], r.attrs["stride_x"], r.attrs["padding_x"]) for r in records if r.kind == "con"]

    def _fits(size: int) -> bool:
        for axis in (convs[: len(convs) // 2], convs[len(convs) // 2 :]):
            n = size
            for k, s, p in axis:
                n = (n + 2 * p - k) // s + 1
                if n < 1:
                    return False
        return True

    min_input = next(n for n in range(1, 4096) if _fits(n))
    windows = tuple((int(w["width"]), int(w["height"])) for w in loss["detector_windows"])
    _require(len(windows) > 0, "no detector windows")
    return MMODGeometry(
        channel_means=(float(inp["avg_red"]), float(inp["avg_green"]), float(inp["avg_blue"])),
        pyramid_padding=int(inp["pyramid_padding"]),
        pyramid_outer_padding=int(inp["pyramid_outer_padding"]),
        windows=windows,
        nms_iou=float(loss["overlaps_nms_iou"]),
        nms_percent_covered=float(loss["overlaps_nms_percent_covered"]),
        stride=(stride[0], stride[1]),
        offset=(offset[0], offset[1]),
        min_input=min_input,
    )


def records_to_onnx(
    records: list[LayerRecord], *, split_scorer: bool = True, channel_multiple: int = 8
) -> onnx.ModelProto:
    """The conv trunk of an MMOD detector as an ONNX model (affine layers folded into the convolutions).

    ``channel_multiple`` pads every hidden layer with all-zero filters (zero bias, so relu keeps them 0) to a
    multiple of that many channels, and the next layer with zero weights for them: the result is unchanged, but
    ONNX Runtime only runs convolutions in its fast blocked NCHWc layout when the channel counts are multiples
    of 8 (45 → 48 here, ~5% less time overall). 1 disables it.

    ``split_scorer`` rewrites the last convolution (45 → 1 channel, 9×9) as a 1×1 convolution to one channel
    per kernel tap plus a sum of shifted slices (see :func:`_split_conv`): same result, ~10% less time,
    because ONNX Runtime runs a one-output 9×9 convolution as a slow matrix-vector product.
    """
    _check_records(records)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x, channels, width = INPUT_NAME, 3, 3  # real channels, and channels of the tensor after zero padding
    layers = records[1:-1]
    i = 0
    while i < len(layers):
        rec = layers[i]
        n = len(nodes)
        if rec.kind == "con":
            a = rec.attrs
            weight = rec.params["weight"].astype(np.float64)
            _require(weight.shape[1] == channels, f"con expects {weight.shape[1]} channels, has {channels}")
            bias = rec.params.get("bias", np.zeros(weight.shape[0], np.float32)).astype(np.float64)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if nxt is not None and (nxt.kind == "bn_con" or (nxt.kind == "affine" and nxt.attrs["mode"] == "conv")):
                scale, shift = (v.astype(np.float64) for v in affine_params(nxt))
                if scale.size:  # y = scale·(w∗x + b) + shift
                    weight = weight * scale[:, None, None, None]
                    bias = bias * scale + shift
                i += 1
            is_scorer = all(r.kind != "con" for r in layers[i + 1 :])
            filters = weight.shape[0]
            weight = np.pad(weight, ((0, 0), (0, width - channels), (0, 0), (0, 0)))
            if not is_scorer:
                extra = -filters % channel_multiple
                weight = np.pad(weight, ((0, extra), (0, 0), (0, 0), (0, 0)))
                bias = np.pad(bias, (0, extra))
            if is_scorer and split_scorer and a["stride_y"] == a["stride_x"] == 1:
                x = _split_conv(nodes, inits, x, weight, bias, a["padding_y"], a["padding_x"], f"conv{n}")
            else:
                w_name, b_name = f"W{n}", f"B{n}"
                inits.append(numpy_helper.from_array(weight.astype(np.float32), w_name))
                inits.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
                py, px = a["padding_y"], a["padding_x"]
                nodes.append(
                    helper.make_node(
                        "Conv",
                        [x, w_name, b_name],
                        [f"conv{n}"],
                        name=f"conv{n}",
                        kernel_shape=[a["nr"], a["nc"]],
                        strides=[a["stride_y"], a["stride_x"]],
                        pads=[py, px, py, px],
                    )
                )
            x, channels, width = f"conv{n}", filters, weight.shape[0]
            if a["use_relu"]:
                nodes.append(helper.make_node("Relu", [x], [f"relu{n}"], name=f"relu{n}"))
                x = f"relu{n}"
        elif rec.kind in ("affine", "bn_con"):  # an affine not after a convolution
            scale, shift = affine_params(rec)
            if scale.size:
                scale, shift = np.pad(scale, (0, width - channels)), np.pad(shift, (0, width - channels))
                inits.append(numpy_helper.from_array(scale.reshape(1, -1, 1, 1), f"S{n}"))
                inits.append(numpy_helper.from_array(shift.reshape(1, -1, 1, 1), f"T{n}"))
                nodes.append(helper.make_node("Mul", [x, f"S{n}"], [f"mul{n}"], name=f"mul{n}"))
                nodes.append(helper.make_node("Add", [f"mul{n}", f"T{n}"], [f"add{n}"], name=f"add{n}"))
                x = f"add{n}"
        elif rec.kind == "relu" and not rec.attrs["disabled"]:
            nodes.append(helper.make_node("Relu", [x], [f"relu{n}"], name=f"relu{n}"))
            x = f"relu{n}"
        i += 1
    num_windows = len(records[-1].attrs["detector_windows"])
    _require(channels == num_windows, f"{channels} score channels for {num_windows} detector windows")
    nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="scores"))
    graph = helper.make_graph(
        nodes,
        "dlib_mmod_face_detector",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", channels, "rows", "cols"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceprint " + CONVERTER_VERSION
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _split_conv(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    x: str,
    weight: np.ndarray,
    bias: np.ndarray,
    pad_y: int,
    pad_x: int,
    out: str,
) -> str:
    """A stride-1 F×C×kh×kw convolution as ``Σ_(i,j) shift_(i,j)(taps[i,j])`` with ``taps = Conv1×1(x)``.

    ``taps`` has kh·kw·F channels, tap ``(i, j)`` at channels ``[(i·kw + j)·F, +F)``, holding
    ``Σ_c w[f, c, i, j]·x[c]``; padded by the convolution's padding, tap (i, j) is sliced at offset (i, j)
    to the output size, and all slices plus the bias are summed.
    """
    filters, channels, kh, kw = weight.shape
    taps = weight.transpose(2, 3, 0, 1).reshape(kh * kw * filters, channels, 1, 1)
    inits.append(numpy_helper.from_array(taps.astype(np.float32), f"{out}_Wtaps"))
    nodes.append(
        helper.make_node("Conv", [x, f"{out}_Wtaps"], [f"{out}_taps"], name=f"{out}_taps", kernel_shape=[1, 1])
    )
    source = f"{out}_taps"
    if pad_y or pad_x:
        pads = np.array([0, 0, pad_y, pad_x, 0, 0, pad_y, pad_x], dtype=np.int64)
        inits.append(numpy_helper.from_array(pads, f"{out}_pads"))
        nodes.append(helper.make_node("Pad", [source, f"{out}_pads"], [f"{out}_padded"], name=f"{out}_pad"))
        source = f"{out}_padded"
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), f"{out}_axes"))
    # padded size − (k − 1) is the output size, so each slice ends (k − 1 − offset) before the end
    last = np.iinfo(np.int64).max
    terms = []
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            starts = np.array([k * filters, i, j], dtype=np.int64)
            ends = np.array([(k + 1) * filters, i - (kh - 1) or last, j - (kw - 1) or last], dtype=np.int64)
            inits.append(numpy_helper.from_array(starts, f"{out}_s{k}"))
            inits.append(numpy_helper.from_array(ends, f"{out}_e{k}"))
            nodes.append(
                helper.make_node(
                    "Slice", [source, f"{out}_s{k}", f"{out}_e{k}", f"{out}_axes"], [f"{out}_t{k}"], name=f"{out}_t{k}"
                )
            )
            terms.append(f"{out}_t{k}")
    inits.append(numpy_helper.from_array(bias.astype(np.float32).reshape(1, -1, 1, 1), f"{out}_B"))
    nodes.append(helper.make_node("Sum", [*terms, f"{out}_B"], [out], name=out))
    return out


def build_mmod_onnx(path: Path) -> onnx.ModelProto:
    """Builder for :func:`faceprint.models.convert.converted_model`."""
    return records_to_onnx(read_network(path))


def build_resize_onnx() -> onnx.ModelProto:
    """dlib's bilinear ``resize_image`` as a one-node graph: ``x`` 1×C×h×w, ``sizes`` [1, C, rows, cols] → ``y``.

    ``align_corners`` maps output pixel ``i`` to input ``i·(h−1)/(rows−1)``, as dlib does. Used to build the
    pyramid levels (ONNX Runtime's kernel is several times faster than NumPy gathers).
    """
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="align_corners"
    )
    graph = helper.make_graph(
        [node],
        "dlib_resize_bilinear",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "channels", "h", "w"]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "channels", "rows", "cols"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="faceprint")
    model.ir_version = 8
    return model
