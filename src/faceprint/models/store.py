"""The user's model store: model files from optional packs or added by hand, their specs, and the default.

Layout (``$FACEPRINT_MODEL_DIR``, else ``$FACEPRINT_HOME/models``, else the user data directory's
``models``)::

    files/<model id>/<file name>   weight files, sha256-checked when copied in and again before each load
    specs/<model id>.json          specs of user-added models (the shipped specs live in the package)
    config.json                    {"default_embedder": "<model id>", "default_detector": "<model id>"}:
                                   the models new collections and commands use

Nothing is created until something is written. Writes go to a temporary name in the same folder and are moved
into place, so a crash never leaves a half-copied model under its real name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from faceprint.errors import ModelError
from faceprint.models.catalogue import sha256_file
from faceprint.models.spec import ModelSpec, parse_spec

MODEL_DIR_ENV = "FACEPRINT_MODEL_DIR"
HOME_ENV = "FACEPRINT_HOME"


def default_model_dir() -> Path:
    """``$FACEPRINT_MODEL_DIR``, or ``$FACEPRINT_HOME/models`` (the home the gallery and service use)."""
    if explicit := os.environ.get(MODEL_DIR_ENV):
        return Path(explicit).expanduser()
    if home := os.environ.get(HOME_ENV):
        return Path(home).expanduser() / "models"
    from platformdirs import user_data_path

    return user_data_path("faceprint", appauthor=False) / "models"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    """One model store folder (see the module docstring)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_model_dir()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # -- files ------------------------------------------------------------------------------------------
    def file_path(self, spec: ModelSpec) -> Path:
        return self.root / "files" / spec.id / spec.file_name

    def has_file(self, spec: ModelSpec) -> bool:
        return bool(spec.file_name) and self.file_path(spec).is_file()

    def put_file(self, spec: ModelSpec, source: Path) -> Path:
        """Copy ``source`` in as the file of ``spec`` after checking its sha256 (refused when it differs)."""
        actual = sha256_file(source)
        if actual != spec.sha256:
            raise ModelError(
                f"model {spec.id!r}: {source} has sha256 {actual}, but the spec expects {spec.sha256}; "
                "refusing to install a file that is not the model the spec describes"
            )
        target = self.file_path(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            if sha256_file(Path(tmp)) != spec.sha256:  # the copy itself went wrong (disk full, …)
                raise ModelError(f"model {spec.id!r}: copying {source} into {target.parent} failed")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    # -- user specs -------------------------------------------------------------------------------------
    def user_specs(self) -> dict[str, ModelSpec]:
        folder = self.root / "specs"
        if not folder.is_dir():
            return {}
        out: dict[str, ModelSpec] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelError(f"{path}: unreadable model spec in the store: {exc}") from None
            spec = parse_spec(data, str(path))
            out[spec.id] = spec
        return out

    def put_spec(self, spec: ModelSpec) -> Path:
        path = self.root / "specs" / f"{spec.id}.json"
        _write_atomic(path, (json.dumps(spec.to_dict(), indent=2, ensure_ascii=False) + "\n").encode())
        return path

    # -- default embedder -------------------------------------------------------------------------------
    def _config(self) -> dict:
        path = self.root / "config.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: unreadable model store settings: {exc}") from None
        return data if isinstance(data, dict) else {}

    def default_embedder(self) -> str | None:
        """The embedder set by ``faceprint models use``, or ``None`` (then the built-in default applies)."""
        value = self._config().get("default_embedder")
        return value if isinstance(value, str) else None

    def set_default_embedder(self, model_id: str) -> None:
        config = {**self._config(), "default_embedder": model_id}
        _write_atomic(self.root / "config.json", (json.dumps(config, indent=2) + "\n").encode())

    # -- default detector -------------------------------------------------------------------------------
    def default_detector(self) -> str | None:
        """The detector set by ``faceprint models use DETECTOR``, or ``None`` (the embedder's own applies)."""
        value = self._config().get("default_detector")
        return value if isinstance(value, str) else None

    def set_default_detector(self, model_id: str | None) -> None:
        config = {**self._config(), "default_detector": model_id}
        if model_id is None:
            del config["default_detector"]
        _write_atomic(self.root / "config.json", (json.dumps(config, indent=2) + "\n").encode())
