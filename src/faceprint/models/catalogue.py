"""Where every weight file comes from: package, path inside it, sha256, licence.

Nothing here downloads anything. A weight file must arrive through a package registry at install time; a
missing package is a :class:`ModelNotInstalled` error naming the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from faceprint.errors import ModelError, ModelNotInstalled


@dataclass(frozen=True)
class ModelSpec:
    id: str
    task: str  # "detector" | "landmarks" | "embedder"
    package: str  # pip name of the package that ships the file
    module: str  # import name of that package
    relpath: str  # path of the file inside the module directory
    sha256: str
    licence: str
    description: str
    input_size: tuple[int, int] | None = None  # (width, height) of the network input, when fixed
    output_dim: int | None = None


_FRM = dict(package="face-recognition-models", module="face_recognition_models")

CATALOGUE: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="dlib-resnet-v1",
            task="embedder",
            relpath="models/dlib_face_recognition_resnet_model_v1.dat",
            sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            licence="public domain (dlib-models)",
            description="dlib ResNet-29, 150×150 aligned chip → 128-d; LFW 99.38%",
            input_size=(150, 150),
            output_dim=128,
            **_FRM,
        ),
        ModelSpec(
            id="dlib-mmod",
            task="detector",
            relpath="models/mmod_human_face_detector.dat",
            sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
            licence="public domain (dlib-models)",
            description="dlib CNN face detector (max-margin object detection), image pyramid",
            **_FRM,
        ),
        ModelSpec(
            id="dlib-shape5",
            task="landmarks",
            relpath="models/shape_predictor_5_face_landmarks.dat",
            sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            licence="public domain (dlib-models)",
            description="dlib 5-point shape predictor: eye corners and nose base",
            **_FRM,
        ),
        ModelSpec(
            id="dlib-hog",
            task="detector",
            relpath="",
            sha256="",
            licence="Boost Software License (built into dlib)",
            description="dlib HOG + linear SVM frontal face detector (built into dlib-bin)",
            package="dlib-bin",
            module="dlib",
        ),
    )
}


def get_spec(model_id: str) -> ModelSpec:
    try:
        return CATALOGUE[model_id]
    except KeyError:
        raise ModelError(f"unknown model {model_id!r}; known: {', '.join(sorted(CATALOGUE))}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_installed(spec: ModelSpec) -> bool:
    return importlib.util.find_spec(spec.module) is not None


@cache
def _verified_path(model_id: str) -> Path:
    spec = get_spec(model_id)
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalled(model_id, spec.package)
    root = Path(next(iter(found.submodule_search_locations)))
    path = root / spec.relpath
    if not path.is_file():
        raise ModelError(f"model {model_id!r}: {path} is missing; reinstall {spec.package!r}")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ModelError(
            f"model {model_id!r}: {path} has sha256 {actual}, expected {spec.sha256}; "
            f"the file is corrupt or from another version of {spec.package!r}"
        )
    return path


def model_path(model_id: str) -> Path:
    """The verified path of a model's weight file (sha256 checked once per process)."""
    return _verified_path(model_id)
