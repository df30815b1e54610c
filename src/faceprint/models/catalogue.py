"""The built-in model catalogue: one declarative spec per model under ``models/specs/`` (see
:mod:`faceprint.models.spec`), the dlib models included.

Nothing here downloads anything. A weight file must arrive through a package registry at install time; a
missing package is a :class:`ModelNotInstalled` error naming the package. Models from optional packs or
added by the user live in the model store (:mod:`faceprint.models.store`); :class:`~faceprint.models.
registry.ModelRegistry` joins both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from faceprint.errors import ModelError, ModelNotInstalled
from faceprint.models.spec import ModelSpec, SpecError, parse_spec

__all__ = [
    "ModelSpec",
    "builtin_specs",
    "get_spec",
    "is_installed",
    "model_path",
    "packs",
    "sha256_file",
]


@cache
def builtin_specs() -> dict[str, ModelSpec]:
    """Every spec shipped in ``faceprint/models/specs/*.toml`` by id (read once per process)."""
    out: dict[str, ModelSpec] = {}
    folder = resources.files("faceprint.models") / "specs"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml") or entry.name == "packs.toml":
            continue
        origin = f"faceprint/models/specs/{entry.name}"
        try:
            spec = parse_spec(tomllib.loads(entry.read_text(encoding="utf-8")), origin)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{origin}: {exc}") from None
        if spec.id in out:
            raise SpecError(f"{origin}: duplicate model id {spec.id!r}")
        out[spec.id] = spec
    return out


@cache
def packs() -> dict[str, dict[str, Any]]:
    """Optional model packs (``specs/packs.toml``): name → registry, package, version, tarball sha256."""
    ref = resources.files("faceprint.models") / "specs" / "packs.toml"
    return tomllib.loads(ref.read_text(encoding="utf-8"))


def __getattr__(name: str) -> Any:
    # `CATALOGUE` was a module-level dict; it is now read lazily from the spec files (no import-time I/O).
    if name == "CATALOGUE":
        return builtin_specs()
    raise AttributeError(name)


def get_spec(model_id: str) -> ModelSpec:
    """The built-in spec of ``model_id`` (see the registry for models in the user's model store)."""
    try:
        return builtin_specs()[model_id]
    except KeyError:
        known = ", ".join(sorted(builtin_specs()))
        raise ModelError(f"unknown model {model_id!r}; known: {known}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_installed(spec: ModelSpec) -> bool:
    """Whether the pip package that ships a ``python``/``builtin`` model is importable."""
    return bool(spec.source.module) and importlib.util.find_spec(spec.source.module) is not None


def verify_file(model_id: str, path: Path, sha256: str, remedy: str) -> Path:
    """``path`` when it exists and has the expected sha256; a :class:`ModelError` saying what to do otherwise."""
    if not path.is_file():
        raise ModelError(f"model {model_id!r}: {path} is missing; {remedy}")
    actual = sha256_file(path)
    if actual != sha256:
        raise ModelError(
            f"model {model_id!r}: {path} has sha256 {actual}, expected {sha256}; the file is corrupt, "
            f"truncated or another model: refusing to load it ({remedy})"
        )
    return path


@cache
def _verified_path(model_id: str) -> Path:
    spec = get_spec(model_id)
    if spec.source.kind != "python":
        raise ModelError(f"model {model_id!r} is not shipped by a Python package; use ModelRegistry.path()")
    found = importlib.util.find_spec(spec.source.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalled(model_id, spec.source.package)
    root = Path(next(iter(found.submodule_search_locations)))
    return verify_file(model_id, root / spec.source.path, spec.sha256, f"reinstall {spec.source.package!r}")


def model_path(model_id: str) -> Path:
    """The verified path of a built-in model's weight file (sha256 checked once per process)."""
    return _verified_path(model_id)
