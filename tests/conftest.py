"""Shared fixtures: the real photos in ../shared/data and one pipeline per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEPRINT_TEST_DATA", REPO.parent / "shared" / "data"))
FACES = DATA / "faces"
IDENTITIES = FACES / "identities"
GROUPS = FACES / "groups"

if not FACES.is_dir():  # fail loudly: the suite is meaningless without the real photos
    raise RuntimeError(f"test photos not found at {DATA}; set FACEPRINT_TEST_DATA or check out ../shared")


def identity_photos(person: str) -> list[Path]:
    return sorted((IDENTITIES / person).glob("*.jpg"))


def install_faceplugin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`faceprint models install faceplugin` into a fresh model store, exactly as a user runs it: the store
    and the command's output. Fails (not skips) without npm: the model-pack tests are part of the suite."""
    import shutil

    from typer.testing import CliRunner

    from faceprint.cli import app

    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: the faceplugin pack (and this test) needs it (apt-get install npm)")
    store = tmp_path_factory.mktemp("model-store")
    result = CliRunner().invoke(app, ["models", "install", "faceplugin"], env={"FACEPRINT_MODEL_DIR": str(store)})
    assert result.exit_code == 0, result.output
    return store, result.output


@pytest.fixture(scope="session")
def faceplugin_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The faceplugin pack installed once per test session (npm pack, sha256 checks): store and output."""
    return install_faceplugin(tmp_path_factory)


@pytest.fixture(scope="session")
def faceplugin_store(faceplugin_install: tuple[Path, str]) -> Path:
    return faceplugin_install[0]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache shared by the whole session, so ONNX conversion happens once per run."""
    path = Path(os.environ.get("FACEPRINT_CACHE_DIR") or tmp_path_factory.mktemp("model-cache"))
    os.environ["FACEPRINT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def pipeline(cache_dir: Path):
    from faceprint import Pipeline

    return Pipeline()


@pytest.fixture(scope="session")
def hog_pipeline(cache_dir: Path):
    from faceprint import Pipeline

    return Pipeline(detector="hog")
