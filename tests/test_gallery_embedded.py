"""The gallery contract on the embedded backend, plus what only the embedded backend promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceprint.gallery import EmbeddedGallery
from tests.gallery_contract import GalleryContract, OpenStore

KEY = bytes.fromhex("11" * 32)


class TestEmbeddedContract(GalleryContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: EmbeddedGallery(tmp_path / "gallery", key=KEY)


class TestEmbeddedContractOnHNSW(GalleryContract):
    """The same contract with the ANN index forced on from the first template."""

    @pytest.fixture
    def open_store(self, tmp_path: Path) -> OpenStore:
        return lambda: EmbeddedGallery(tmp_path / "gallery", key=KEY, ann_min_size=1)
