"""Reader for dlib's binary ``serialize`` format, enough to load its DNN ``.dat`` network files.

Written from dlib's documentation and source (``dlib/serialize.h``, ``dlib/float_details.h``,
``dlib/dnn/*.h``, ``dlib/cuda/tensor.h``); it needs no dlib at run time.

Primitive encodings
-------------------
* **int** (any width, signed or not): one control byte, then that many little-endian magnitude bytes.
  The low nibble of the control byte is the byte count (1..8); bit 0x80 marks a negative signed value.
* **float/double**: ``int64 mantissa`` then ``int16 exponent`` (both ints as above); the value is
  ``mantissa * 2**exponent``; exponent 32000/32001/32002 mean +inf/-inf/nan.
* **bool**: one ASCII byte, ``'0'`` or ``'1'``. **uint8**: one raw byte.
* **string**: int length, then the raw bytes. **std::vector**: int length, then the elements.
* **tensor** (``resizable_tensor``): int version 2, four ints ``num_samples, k, nr, nc``, then
  ``num_samples*k*nr*nc`` little-endian IEEE float32 values. **alias_tensor**: int version 1 and four ints.

Network layout
--------------
A network file holds one ``add_loss_layer``: int version 1, the loss details, then the nested
sub-network, outermost layer first. Each wrapping layer writes its own int version and then its sub-network,
so the versions of all wrappers come first, then the input layer, then the layers' details from the input
outwards. ``add_layer`` over another layer writes version 2 and, after the sub-network, its details plus some
bookkeeping (three bools and three tensors). ``add_tag_layer`` and ``add_skip_layer`` write version 1 and
nothing else: **dlib does not store which tag a layer is (tag1, tag2, ...) nor whether it is a tag or a
skip**; these come out as ``tag_or_skip`` records and a graph builder must know the architecture to
resolve them (for dlib's ResNet: a lone marker is a tag; a pair is ``tag`` followed by ``skip`` to the tag
before it).
``add_prev`` records likewise carry no tag id. ``repeat`` layers are not supported.

Record format
-------------
:func:`read_network` returns ``list[LayerRecord]`` in execution order: the input layer first, the loss layer
last (dlib's ``layer<i>`` is ``records[len(records) - 1 - i]``). A :class:`LayerRecord` has ``kind`` (below),
``version`` (dlib's version string as stored, e.g. ``"con_4"``), ``params`` (name → float32 NumPy array) and
``attrs`` (name → int/float/bool/str/list of hyper-parameters):

Per kind (``params`` | ``attrs``):

* ``input_rgb_image`` — | avg_red, avg_green, avg_blue (a pixel feeds the net as ``(v - avg) / 256``)
* ``input_rgb_image_sized`` — | avg_red, avg_green, avg_blue, nr, nc
* ``input_rgb_image_pyramid`` — | avg_red, avg_green, avg_blue, pyramid_padding, pyramid_outer_padding
  (the pyramid type, e.g. ``pyramid_down<6>``, is not stored)
* ``con`` weight (F, C, nr, nc), bias (F,) when use_bias | num_filters, nr, nc, stride_y, stride_x,
  padding_y, padding_x, use_bias, use_relu (a fused relu after the bias); cross-correlation like ONNX Conv
* ``fc`` weight (num_inputs, num_outputs), bias (num_outputs,) when has_bias | num_outputs, num_inputs,
  has_bias; ``y = flatten(x) @ weight + bias`` with x flattened in (k, nr, nc) order
* ``affine`` gamma, beta — (C,) in conv mode, (C·nr·nc,) in fc mode; none when disabled | mode ("conv" or
  "fc"), disabled; ``y = gamma * x + beta``
* ``bn_con`` / ``bn_fc`` gamma, beta, running_means, running_variances | eps, running_stats_window_size,
  num_updates (dlib turns these into ``affine`` at inference: use :func:`affine_params`)
* ``relu`` — | disabled
* ``max_pool`` / ``avg_pool`` — | nr, nc (0 = the whole input), stride_y, stride_x, padding_y, padding_x
* ``add_prev`` — | — (tag id not stored; the output has the larger size of each dimension, the smaller
  input is zero-padded at the end of each dimension)
* ``tag_or_skip`` — | —
* ``loss_metric`` — | margin, dist_thresh
* ``loss_mmod`` — | detector_windows (list of dicts with width, height, label), loss_per_false_alarm,
  loss_per_missed_target, truth_match_iou_threshold, overlaps_nms_iou, overlaps_nms_percent_covered,
  overlaps_ignore_iou, overlaps_ignore_percent_covered, assume_image_pyramid, use_bounding_box_regression,
  bbr_lambda
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceprint.errors import ModelError

__all__ = ["DlibFormatError", "LayerRecord", "affine_params", "parse_network", "read_network"]

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002
_NAME = re.compile(rb"[a-z][a-z0-9_]*\Z")


class DlibFormatError(ModelError):
    """The bytes are not a dlib network this reader understands."""


@dataclass(frozen=True, eq=False)
class LayerRecord:
    """One layer of a dlib network; see the module docstring for ``kind``/``params``/``attrs``."""

    kind: str
    version: str
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"LayerRecord({self.kind!r}, {self.version!r}, params=[{shapes}], attrs={self.attrs})"


class _Reader:
    """A cursor over the bytes of a dlib stream."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"dlib stream: {what} at byte offset {self.pos}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise self.fail(f"unexpected end of data (needed {n} more bytes)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, signed: bool = True) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little")
        if control & 0x80:
            if not signed:
                self.pos -= size + 1
                raise self.fail("negative value for an unsigned integer")
            value = -value
        return value

    def uint(self) -> int:
        return self.int(signed=False)

    def float(self) -> float:
        if self.pos < len(self.buf) and self.buf[self.pos] & 0x70:
            raise self.fail("old ASCII float encoding is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool(self) -> bool:
        ch = self._take(1)[0]
        if ch not in (0x30, 0x31):
            self.pos -= 1
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == 0x31

    def byte(self) -> int:
        return self._take(1)[0]

    def string(self) -> str:
        n = self.uint()
        return bytes(self._take(n)).decode("latin-1")

    def peek_name(self) -> str | None:
        """The string at the cursor if it looks like a dlib version/type name, without consuming it."""
        start = self.pos
        try:
            n = self.uint()
            if not 3 <= n <= 64 or self.pos + n > len(self.buf):
                return None
            raw = bytes(self.buf[self.pos : self.pos + n])
            return raw.decode("ascii") if _NAME.match(raw) else None
        except DlibFormatError:
            return None
        finally:
            self.pos = start

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"unsupported tensor version {version}")
        shape = tuple(self.int() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"bad tensor shape {shape}")
        count = math.prod(shape)
        data = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return data.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"unsupported alias_tensor version {version}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _slice(params: np.ndarray, offset: int, shape: tuple[int, ...], r: _Reader, what: str) -> np.ndarray:
    flat = params.reshape(-1)
    n = _size(shape)
    if offset + n > flat.size:
        raise r.fail(f"{what}: needs {offset + n} parameters, tensor has {flat.size}")
    return flat[offset : offset + n].reshape(shape).copy()


# ---------------------------------------------------------------------------------------------- layers


def _read_con(r: _Reader, version: str) -> LayerRecord:
    params = r.tensor()
    attrs: dict[str, Any] = {"num_filters": r.int()}
    attrs["nr"], attrs["nc"] = r.int(), r.int()
    attrs["stride_y"], attrs["stride_x"] = r.int(), r.int()
    attrs["padding_y"], attrs["padding_x"] = r.int(), r.int()
    filters = r.alias_tensor()
    biases = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float()
    attrs["use_bias"] = r.bool() if version in ("con_5", "con_6") else True
    attrs["use_relu"] = r.bool() if version == "con_6" else False
    out = {"weight": _slice(params, 0, filters, r, "con filters")}
    if attrs["use_bias"] and _size(biases) > 0:
        out["bias"] = _slice(params, _size(filters), (_size(biases),), r, "con biases")
    else:
        attrs["use_bias"] = False
    if out["weight"].shape[0] != attrs["num_filters"]:
        raise r.fail(f"con: {out['weight'].shape[0]} filters stored, num_filters={attrs['num_filters']}")
    return LayerRecord("con", version, out, attrs)


def _read_fc(r: _Reader, version: str) -> LayerRecord:
    num_outputs, num_inputs = r.uint(), r.uint()
    params = r.tensor()
    weights = r.alias_tensor()
    biases = r.alias_tensor()
    bias_mode = r.int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for _ in range(4):
        r.float()
    use_bias = r.bool() if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias and _size(biases) > 0
    out = {"weight": _slice(params, 0, (num_inputs, num_outputs), r, "fc weights")}
    if _size(weights) != num_inputs * num_outputs:
        raise r.fail(f"fc: weights alias {weights} does not match {num_inputs}×{num_outputs}")
    if has_bias:
        out["bias"] = _slice(params, _size(weights), (num_outputs,), r, "fc biases")
    attrs = {"num_outputs": num_outputs, "num_inputs": num_inputs, "has_bias": has_bias}
    return LayerRecord("fc", version, out, attrs)


def _read_affine(r: _Reader, version: str) -> LayerRecord:
    params = r.tensor()
    gamma = r.alias_tensor()
    beta = r.alias_tensor()
    mode = r.int()
    disabled = r.bool() if version == "affine_2" else False
    out = {}
    if not disabled:
        out["gamma"] = _slice(params, 0, (_size(gamma),), r, "affine gamma")
        out["beta"] = _slice(params, _size(gamma), (_size(beta),), r, "affine beta")
    return LayerRecord("affine", version, out, {"mode": "conv" if mode == 0 else "fc", "disabled": disabled})


def _read_bn(r: _Reader, version: str) -> LayerRecord:
    params = r.tensor()
    gamma = r.alias_tensor()
    beta = r.alias_tensor()
    r.tensor()  # means of the last training batch
    r.tensor()  # invstds of the last training batch
    running_means = r.tensor().reshape(-1)
    running_variances = r.tensor().reshape(-1)
    num_updates = r.uint()
    window = r.uint()
    for _ in range(4):
        r.float()
    eps = r.float()
    out = {
        "gamma": _slice(params, 0, (_size(gamma),), r, "bn gamma"),
        "beta": _slice(params, _size(gamma), (_size(beta),), r, "bn beta"),
        "running_means": running_means,
        "running_variances": running_variances,
    }
    attrs = {"eps": eps, "running_stats_window_size": window, "num_updates": num_updates}
    return LayerRecord("bn_con" if version == "bn_con2" else "bn_fc", version, out, attrs)


def _read_relu(r: _Reader, version: str) -> LayerRecord:
    disabled = r.bool() if version == "relu_2" else False
    return LayerRecord("relu", version, {}, {"disabled": disabled})


def _read_pool(r: _Reader, version: str) -> LayerRecord:
    attrs = {"nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int()}
    attrs["padding_y"], attrs["padding_x"] = r.int(), r.int()
    return LayerRecord(version[: -len("_2")], version, {}, attrs)


def _read_nothing(kind: str) -> Callable[[_Reader, str], LayerRecord]:
    return lambda r, version: LayerRecord(kind, version)


_LAYERS: dict[str, Callable[[_Reader, str], LayerRecord]] = {
    "con_4": _read_con,
    "con_5": _read_con,
    "con_6": _read_con,
    "fc_2": _read_fc,
    "fc_3": _read_fc,
    "affine_": _read_affine,
    "affine_2": _read_affine,
    "bn_con2": _read_bn,
    "bn_fc2": _read_bn,
    "relu_": _read_relu,
    "relu_2": _read_relu,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "add_prev_": _read_nothing("add_prev"),
}


# ---------------------------------------------------------------------------------------------- inputs


def _read_input(r: _Reader) -> LayerRecord:
    version = r.string()
    attrs: dict[str, Any] = {}
    if version in (
        "input_rgb_image",
        "input_rgb_image_sized",
        "input_rgb_image_pyramid",
        "input_rgb_image_pyramid2",
    ):
        attrs["avg_red"], attrs["avg_green"], attrs["avg_blue"] = r.float(), r.float(), r.float()
    if version == "input_rgb_image_sized":
        attrs["nr"], attrs["nc"] = r.uint(), r.uint()
        return LayerRecord(version, version, {}, attrs)
    if version == "input_rgb_image":
        return LayerRecord(version, version, {}, attrs)
    if version.startswith("input_rgb_image_pyramid"):
        if version == "input_rgb_image_pyramid2":
            attrs["pyramid_padding"], attrs["pyramid_outer_padding"] = r.uint(), r.uint()
        else:  # dlib's defaults for files written before the padding was stored
            attrs["pyramid_padding"], attrs["pyramid_outer_padding"] = 10, 11
        return LayerRecord("input_rgb_image_pyramid", version, {}, attrs)
    raise r.fail(f"unsupported input layer {version!r}")


# ---------------------------------------------------------------------------------------------- losses


def _read_loss(r: _Reader) -> LayerRecord:
    version = r.string()
    if version == "loss_metric_":
        return LayerRecord("loss_metric", version, {}, {"margin": 0.1, "dist_thresh": 0.75})
    if version == "loss_metric_2":
        return LayerRecord("loss_metric", version, {}, {"margin": r.float(), "dist_thresh": r.float()})
    if version == "loss_mmod_":
        return LayerRecord("loss_mmod", version, {}, _read_mmod_options(r))
    raise r.fail(f"unsupported loss layer {version!r}")


def _read_mmod_options(r: _Reader) -> dict[str, Any]:
    version = r.int()
    if not 1 <= version <= 4:
        raise r.fail(f"unsupported mmod_options version {version}")
    windows: list[dict[str, Any]] = []
    if version == 1:
        windows.append({"width": r.uint(), "height": r.uint(), "label": ""})
    else:
        for _ in range(r.uint()):
            wversion = r.int()
            if wversion not in (1, 2):
                raise r.fail(f"unsupported detector_window_details version {wversion}")
            width, height = r.uint(), r.uint()
            windows.append({"width": width, "height": height, "label": r.string() if wversion == 2 else ""})
    attrs: dict[str, Any] = {"detector_windows": windows}
    attrs["loss_per_false_alarm"] = r.float()
    attrs["loss_per_missed_target"] = r.float()
    attrs["truth_match_iou_threshold"] = r.float()
    attrs["overlaps_nms_iou"], attrs["overlaps_nms_percent_covered"] = r.float(), r.float()
    attrs["overlaps_ignore_iou"], attrs["overlaps_ignore_percent_covered"] = r.float(), r.float()
    attrs["assume_image_pyramid"] = bool(r.byte()) if version >= 3 else True
    attrs["use_bounding_box_regression"] = False
    attrs["bbr_lambda"] = 100.0
    if version >= 4:
        attrs["use_bounding_box_regression"] = r.bool()
        attrs["bbr_lambda"] = r.float()
    return attrs


# ---------------------------------------------------------------------------------------------- network


def _skip_layer_bookkeeping(r: _Reader, version: int, *, on_input: bool) -> None:
    """What add_layer writes after its details: setup/stale/disabled flags and gradient/cache tensors."""
    for _ in range(3):
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    if on_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.int()  # sample expansion factor
    elif version >= 2:
        r.tensor()  # params_grad


def _read_details(r: _Reader) -> LayerRecord:
    version = r.string()
    reader = _LAYERS.get(version)
    if reader is None:
        raise r.fail(f"unsupported layer {version!r} (supported: {', '.join(sorted(_LAYERS))})")
    return reader(r, version)


def parse_network(data: bytes | memoryview) -> list[LayerRecord]:
    """Parse a serialised dlib ``add_loss_layer`` network; input layer first, loss layer last."""
    r = _Reader(data)
    if r.int() != 1:
        raise r.fail("not a dlib network (add_loss_layer version must be 1)")
    loss = _read_loss(r)

    wrappers: list[int] = []  # versions of the wrapping layers, outermost first
    while (name := r.peek_name()) is None or not name.startswith("input"):
        if len(wrappers) > 100_000:
            raise r.fail("no input layer found")
        wrappers.append(r.int())
    if not wrappers:
        raise r.fail("network without layers")
    records = [_read_input(r)]

    # The wrapper right on the input: add_layer (details follow) or add_tag_layer (tensors follow).
    innermost = wrappers.pop()
    name = r.peek_name()
    if name is not None and name in _LAYERS:
        records.append(_read_details(r))
        _skip_layer_bookkeeping(r, innermost, on_input=True)
    else:
        records.append(LayerRecord("tag_or_skip", ""))
        r.tensor()  # cached_output
        r.tensor()  # grad_final
        r.bool()  # gradient_input_is_stale
        if innermost >= 2:
            r.int()  # sample expansion factor

    for version in reversed(wrappers):
        if version == 1:  # add_tag_layer / add_skip_layer: nothing after the sub-network
            records.append(LayerRecord("tag_or_skip", ""))
        elif version == 2:
            records.append(_read_details(r))
            _skip_layer_bookkeeping(r, version, on_input=False)
        else:
            raise r.fail(f"unsupported layer wrapper version {version}")

    if r.pos != len(r.buf):
        raise r.fail(f"{len(r.buf) - r.pos} trailing bytes after the network")
    records.append(loss)
    return records


def read_network(path: Path | str) -> list[LayerRecord]:
    """Read a dlib DNN ``.dat`` file into layer records (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    try:
        return parse_network(data)
    except DlibFormatError as exc:
        raise DlibFormatError(f"{path}: {exc}") from None


def affine_params(record: LayerRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` with ``y = scale·x + shift`` for an ``affine`` or inference-mode ``bn_*`` record.

    A disabled affine layer is the identity and gives empty arrays.
    """
    p = record.params
    if record.kind == "affine":
        if record.attrs.get("disabled"):
            return np.empty(0, np.float32), np.empty(0, np.float32)
        return p["gamma"], p["beta"]
    if record.kind in ("bn_con", "bn_fc"):
        # What dlib's affine_(const bn_&) constructor computes.
        scale = p["gamma"] / np.sqrt(p["running_variances"] + np.float32(record.attrs["eps"]))
        return scale.astype(np.float32), (p["beta"] - scale * p["running_means"]).astype(np.float32)
    raise ModelError(f"{record.kind} is not an affine-like layer")
