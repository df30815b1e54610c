"""The `faceprint` command: JSON shapes, annotated output, exit codes and error lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from tests.conftest import DATA, GROUPS, identity_photos


@pytest.fixture(scope="module")
def runner(cache_dir) -> CliRunner:
    return CliRunner()


def test_detect_json_and_annotation(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["detect", str(GROUPS / "couple.jpg"), "--json", "--annotate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["image"] == str(GROUPS / "couple.jpg") and len(data["faces"]) == 2
    face = data["faces"][0]
    assert set(face) == {"box", "score", "landmarks"} and len(face["box"]) == 4
    assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
    annotated = tmp_path / "couple.annotated.jpg"
    assert annotated.stat().st_size > 10_000


def test_verify_json_shape(runner: CliRunner) -> None:
    a, b = identity_photos("person01")[:2]
    result = runner.invoke(app, ["verify", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"same_person", "score", "distance", "threshold", "rule", "fmr", "fpir", "model"}
    assert data["same_person"] is True and data["fmr"] <= 1e-3 and data["rule"] == "fmr" and data["fpir"] is None
    other = runner.invoke(app, ["verify", str(a), str(identity_photos("person02")[0]), "--threshold", "0.9"])
    assert other.exit_code == 0 and "threshold 0.9000 (raw threshold" in other.stdout


def test_verify_takes_the_one_threshold_rule(runner: CliRunner) -> None:
    a, b = identity_photos("person01")[:2]
    by_fpir = runner.invoke(app, ["verify", str(a), str(b), "--fpir", "1e-4", "--json"])
    assert by_fpir.exit_code == 0, by_fpir.output
    data = json.loads(by_fpir.stdout)
    # One comparison: an FPIR of 1e-4 is an FMR of 1e-4, so the same threshold as --fmr 1e-4.
    by_fmr = json.loads(runner.invoke(app, ["verify", str(a), str(b), "--fmr", "1e-4", "--json"]).stdout)
    assert data["rule"] == "fpir" and data["fpir"] == 1e-4 and data["threshold"] == by_fmr["threshold"]
    text = runner.invoke(app, ["verify", str(a), str(b), "--fpir", "1e-4"])
    assert text.exit_code == 0 and "chosen for FPIR 0.0001" in text.stdout
    both = runner.invoke(app, ["verify", str(a), str(b), "--fmr", "1e-3", "--fpir", "1e-3"])
    assert both.exit_code == 2 and both.stderr.strip() == "error: give at most one of fmr, fpir and threshold"


def test_verify_group_photo_notes_the_largest_face(runner: CliRunner) -> None:
    result = runner.invoke(app, ["verify", str(GROUPS / "couple.jpg"), str(GROUPS / "img67.jpg"), "--json"])
    assert result.exit_code == 0
    assert "largest was used" in result.stderr


def test_verify_without_a_face_exits_2(runner: CliRunner) -> None:
    dogs = DATA / "dlib_faces" / "dogs.jpg"
    result = runner.invoke(app, ["verify", str(dogs), str(identity_photos("person01")[0])])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {dogs}: no face found"


def test_bad_files_exit_2_with_one_line(runner: CliRunner, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = runner.invoke(app, ["verify", str(text), str(text)])
    assert result.exit_code == 2 and str(text) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["detect", str(tmp_path / "missing.jpg")])
    assert result.exit_code == 2 and "file not found" in result.stderr
    result = runner.invoke(app, ["verify", str(text), str(text), "--fmr", "1e-3", "--threshold", "0.5"])
    assert result.exit_code == 2


def test_embed_writes_npz(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "prints.npz"
    folder = identity_photos("person03")[0].parent
    result = runner.invoke(app, ["embed", str(folder), str(GROUPS / "couple.jpg"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = np.load(out)
    n = len(list(folder.glob("*.jpg"))) + 2
    assert data["vectors"].shape == (n, 128) and data["boxes"].shape == (n, 4)
    assert str(data["model_id"]) == "dlib-resnet-v1"
    assert sum(str(GROUPS / "couple.jpg") == s for s in data["images"]) == 2
    np.testing.assert_allclose(np.linalg.norm(data["vectors"], axis=1), 1.0, atol=1e-5)


def test_models_lists_the_catalogue(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert rows["dlib-resnet-v1"]["installed"] and rows["dlib-resnet-v1"]["default"]
    assert rows["dlib-resnet-v1"]["licence"].startswith("public domain")
