"""`faceprint serve` on a fresh FACEPRINT_HOME hands out one admin key, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceprint.cli.service import _first_run_key, _store
from faceprint.service.auth import KeyStore


def test_first_start_creates_one_admin_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACEPRINT_HOME", str(tmp_path))
    _first_run_key()
    err = capsys.readouterr().err
    keys = KeyStore(_store()).list()
    assert len(keys) == 1 and keys[0].scopes == ("admin",)
    text = next(word for word in err.split() if word.startswith("fpk_"))
    assert KeyStore(_store()).authenticate(text).id == keys[0].id
    _first_run_key()  # the second start shows nothing and creates nothing
    assert capsys.readouterr().err == "" and len(KeyStore(_store()).list()) == 1
