"""The gallery contract on the embedded backend, plus what only the embedded backend promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceprint.gallery import EmbeddedGallery
from tests.gallery_contract import GalleryContract, OpenStore, check_cli_identify_with_fpir

KEY = bytes.fromhex("11" * 32)


class TestEmbeddedContract(GalleryContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: EmbeddedGallery(tmp_path / "gallery", key=KEY)

    @pytest.fixture
    def location(self, tmp_path: Path) -> tuple[str, bytes]:
        return str(tmp_path / "gallery"), KEY


class TestEmbeddedContractOnHNSW(GalleryContract):
    """The same contract with the ANN index forced on from the first template."""

    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: EmbeddedGallery(tmp_path / "gallery", key=KEY, ann_min_size=1)

    @pytest.fixture
    def location(self, tmp_path: Path) -> tuple[str, bytes]:
        return str(tmp_path / "gallery"), KEY


def test_cli_identify_with_fpir(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_cli_identify_with_fpir(str(tmp_path / "gallery"), KEY, monkeypatch, tmp_path / "home")
