"""int8 models: ONNX Runtime static quantization (QDQ) from activation ranges shipped with faceprint.

Static quantization needs the range of every activation tensor, measured by running the fp32 graph on
representative inputs. Those inputs (LFW DevTrain face chips, photos for detectors) cannot ship, but their
ranges can: ``faceprint/models/quantization/<model id>.json`` is ONNX Runtime's calibration cache
(``quantize_static(..., calibration_cache_path=…)``), written once by :func:`calibrate`
(``benchmarks/int8.py calibrate``). At run time :func:`int8_model` quantizes the fp32 graph with those
ranges, offline, and caches the result like the dlib conversions (:func:`faceprint.models.convert.
cached_build`: keyed by the fp32 graph's sha256, this module's version and the ranges file's sha256).

Both the calibration and the quantization run on the graph after ``quant_pre_process`` (shape inference and
ORT's basic graph optimisations, e.g. batch norm folded into convolutions), which is deterministic, so the
tensor names of the shipped ranges match. Scheme: QDQ, uint8 activations (asymmetric), int8 weights per
channel (VNNI/AVX-512 kernels on x86), MinMax ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from faceprint.errors import InvalidArgument, ModelError
from faceprint.models.catalogue import sha256_file
from faceprint.models.convert import cached_build

__all__ = ["PRECISIONS", "QUANT_VERSION", "calibrate", "has_int8", "int8_model", "ranges_file"]

PRECISIONS = ("fp32", "int8")
QUANT_VERSION = "1"
PRECISION_ENV = "FACEPRINT_PRECISION"


def resolve_precision(value: str | None) -> str:
    """``value``, else ``$FACEPRINT_PRECISION``, else ``fp32``; anything else is an :class:`InvalidArgument`."""
    chosen = value or os.environ.get(PRECISION_ENV) or "fp32"
    if chosen not in PRECISIONS:
        where = "precision" if value else PRECISION_ENV
        raise InvalidArgument(f"{where} must be one of {', '.join(PRECISIONS)}, got {chosen!r}")
    return chosen


def ranges_file(model_id: str) -> Path | None:
    """The shipped calibration ranges of ``model_id`` (``None``: no int8 version of it)."""
    ref = resources.files("faceprint.models") / "quantization" / f"{model_id}.json"
    return Path(str(ref)) if ref.is_file() else None


def has_int8(model_id: str) -> bool:
    return ranges_file(model_id) is not None


MIN_OPSET = 13  # per-channel DequantizeLinear (its `axis`) needs opset 13


def _prepared(fp32: Path, folder: Path) -> Path:
    source = fp32
    model = onnx.load(str(fp32))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=MIN_OPSET)
    if opset < MIN_OPSET:  # older exports (e.g. faceplugin's, opset 9/11): upgrade first
        source = folder / "upgraded.onnx"
        onnx.save(onnx.version_converter.convert_version(model, MIN_OPSET), str(source))
    out = folder / "prepared.onnx"
    quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


def _quantize(prepared: Path, out: Path, ranges: Path, reader: CalibrationDataReader | None = None) -> None:
    quantize_static(
        str(prepared),
        str(out),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(ranges),
    )


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}


def calibrate(fp32: Path, batches: Iterable[np.ndarray], out: Path) -> None:
    """Measure the activation ranges of ``fp32`` on ``batches`` (network inputs, N×C×H×W float32) and write
    them to ``out`` (ONNX Runtime's calibration cache format); see the module docstring."""
    out.unlink(missing_ok=True)  # a cache that exists would be read instead of measured
    with tempfile.TemporaryDirectory(prefix="faceprint-quant-") as tmp:
        prepared = _prepared(fp32, Path(tmp))
        name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        _quantize(prepared, Path(tmp) / "int8.onnx", out, _Batches(name, batches))


def _check_ranges(model_id: str, prepared: Path, ranges: Path) -> None:
    """The ranges must name the prepared graph's tensors: a graph changed since they were measured (another
    converter, another ONNX Runtime's pre-processing) would otherwise be quantized only in part, silently."""
    graph = onnx.load(str(prepared)).graph
    tensors = {name for node in graph.node for name in node.output} | {i.name for i in graph.input}
    try:
        measured = set(json.loads(ranges.read_text(encoding="utf-8"))["data"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model {model_id!r}: cannot read its int8 ranges {ranges}: {exc}") from None
    if not measured <= tensors or not measured:
        raise ModelError(
            f"model {model_id!r}: the int8 ranges in {ranges.name} were measured on another graph "
            f"({len(measured - tensors)} of {len(measured)} tensors not found); run it in fp32"
        )


def int8_model(model_id: str, fp32: Path) -> Path:
    """The int8 graph of ``model_id`` made from its fp32 graph ``fp32`` with the shipped ranges (cached)."""
    ranges = ranges_file(model_id)
    if ranges is None:
        raise ModelError(
            f"model {model_id!r} has no int8 version (no calibration ranges ship with faceprint); use fp32"
        )
    ranges_sha = sha256_file(ranges)
    version = f"{QUANT_VERSION}-{hashlib.sha256(ranges_sha.encode()).hexdigest()[:12]}"

    def build() -> onnx.ModelProto:
        with tempfile.TemporaryDirectory(prefix="faceprint-quant-") as tmp:
            out = Path(tmp) / "int8.onnx"
            prepared = _prepared(fp32, Path(tmp))
            _check_ranges(model_id, prepared, ranges)
            _quantize(prepared, out, ranges)
            return onnx.load(str(out))

    return cached_build(f"{model_id}-int8", fp32, sha256_file(fp32), version, build, what="quantizing")
