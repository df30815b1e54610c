"""Convert a weight file to ONNX on first use and keep the result in the user cache.

The cache file is named after the model id and a key made of the source file's sha256, this module's format
version and the converter's own version, so a new weight file or a changed converter never reuses a stale
graph. Next to each ``.onnx`` file a small ``.json`` sidecar records the ``.onnx`` file's own sha256; a cached
file that does not match it (truncated, bit-rot, edited) is rebuilt. Both files are written to a temporary
name in the same folder and moved into place with :func:`os.replace`, so processes converting at the same
time never see a half-written file: the last one to finish wins with identical content.

The cache folder is ``platformdirs.user_cache_dir("faceprint")/models``, or ``$FACEPRINT_CACHE_DIR/models``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import platformdirs

from faceprint.errors import ModelError
from faceprint.models.catalogue import get_spec, model_path, sha256_file

__all__ = ["CACHE_ENV", "FORMAT_VERSION", "cache_dir", "cached_build", "cached_paths", "converted_model"]

CACHE_ENV = "FACEPRINT_CACHE_DIR"
FORMAT_VERSION = "1"


def cache_dir() -> Path:
    """Where converted models live (not created here)."""
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("faceprint")
    return Path(root).expanduser() / "models"


def _key(source_sha256: str, version: str) -> str:
    return hashlib.sha256(f"{source_sha256}\0{FORMAT_VERSION}\0{version}".encode()).hexdigest()[:16]


def cached_paths(model_id: str, version: str) -> tuple[Path, Path]:
    """``(onnx_path, sidecar_path)`` of a model's converted file for a converter version."""
    spec = get_spec(model_id)
    stem = f"{model_id}-{_key(spec.sha256, version)}"
    folder = cache_dir()
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_valid(onnx_path: Path, sidecar: Path, source_sha256: str, version: str) -> bool:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        return (
            isinstance(meta, dict)
            and meta.get("source_sha256") == source_sha256
            and meta.get("converter_version") == version
            and meta.get("format_version") == FORMAT_VERSION
            and onnx_path.is_file()
            and meta.get("onnx_sha256") == sha256_file(onnx_path)
        )
    except (OSError, ValueError):
        return False


def converted_model(
    model_id: str, builder: Callable[[Path], onnx.ModelProto], *, version: str = "1", source: Path | None = None
) -> Path:
    """The path of ``model_id`` converted to ONNX by ``builder``, converting on first use.

    ``builder`` gets the verified source weight file and returns the ONNX model; ``version`` names the
    converter so that a change to it invalidates older cached files. ``source``: the weight file when it is not
    shipped by a Python package (a pack's file in the model store), already sha256-verified by the caller
    (:meth:`~faceprint.models.registry.ModelRegistry.path`).
    """
    if source is None:
        source = model_path(model_id)  # verifies the source file's sha256 against the catalogue
    weights = source
    onnx_path, sidecar = cached_paths(model_id, version)
    return cached_build(
        model_id,
        weights,
        get_spec(model_id).sha256,
        version,
        lambda: builder(weights),
        (onnx_path, sidecar),
        "converting",
    )


def cached_build(
    model_id: str,
    source: Path,
    source_sha256: str,
    version: str,
    build: Callable[[], onnx.ModelProto],
    paths: tuple[Path, Path] | None = None,
    what: str = "building",
) -> Path:
    """The cached ONNX file made by ``build()`` from ``source`` (sha256 ``source_sha256``) with a builder of
    ``version``, building it on first use; ``paths`` (``.onnx``, sidecar) default to
    ``<cache>/<model_id>-<key>.onnx``. The one cache of derived graphs: conversions and quantized models."""
    if paths is None:
        stem = f"{model_id}-{_key(source_sha256, version)}"
        paths = (cache_dir() / f"{stem}.onnx", cache_dir() / f"{stem}.json")
    onnx_path, sidecar = paths
    if _is_valid(onnx_path, sidecar, source_sha256, version):
        return onnx_path

    try:
        data = build().SerializeToString()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {model_id!r}: {what} {source} to ONNX failed: {exc}") from exc
    meta = {
        "model_id": model_id,
        "source": source.name,
        "source_sha256": source_sha256,
        "converter_version": version,
        "format_version": FORMAT_VERSION,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_bytes": len(data),
    }
    try:
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(onnx_path, data)
        _write_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise ModelError(
            f"model {model_id!r}: cannot write the converted model to {onnx_path.parent}: {exc}; "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc
    return onnx_path
