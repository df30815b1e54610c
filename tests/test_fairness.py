"""Per-cohort error rates (issue 17): cohort labels from the operator's lists, conflicts reported, the cohort
that drives the errors named, and the optional per-cohort threshold table of `faceprint calibrate --cohorts`.

Real photos (../shared/data/faces/identities, 36 photos of 9 people) and the real default model; LFW's real
gender lists for the conflict handling.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.errors import FaceprintError
from faceprint.evaluation import metrics as m
from faceprint.evaluation.verification import load_cohorts, read_cohorts
from tests.conftest import DATA, IDENTITIES

LFW = DATA / "lfw"


def test_lfw_gender_lists_conflicts_and_unlabelled_are_explicit() -> None:
    cohorts = load_cohorts([f"female={LFW / 'female_names.txt'}", f"male={LFW / 'male_names.txt'}"])
    # Five images sit in both lists: they count for no cohort, and the report names them.
    assert set(cohorts.conflicts) == {
        "Allison_Searing_0001.jpg",
        "Claudia_Coslovich_0001.jpg",
        "Elizabeth_Hill_0001.jpg",
        "Erika_Reyes_0001.jpg",
        "Tatiana_Shchegoleva_0001.jpg",
    }
    assert cohorts.label(LFW / "Allison_Searing" / "Allison_Searing_0001.jpg", LFW) is None
    assert "5 key(s) carry two cohort labels" in cohorts.describe()[0]
    # Three images are in neither list: unlabelled, never guessed.
    for name in ("Robert_Evans_0001.jpg", "Robert_Evans_0002.jpg", "Yasser_Arafat_0005.jpg"):
        assert cohorts.label(LFW / name.rsplit("_", 1)[0] / name, LFW) is None
    assert cohorts.label(LFW / "AJ_Cook" / "AJ_Cook_0001.jpg", LFW) == "female"
    assert len(cohorts.mapping) == 2967 + 10268 - 2 * 5


def test_cohort_inputs_that_cannot_be_used(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("key,cohort\nperson01,a\nperson01,b\n")
    with pytest.raises(FaceprintError, match="carry two cohort labels"):
        read_cohorts(csv)
    assert load_cohorts([str(csv)]).conflicts == {"person01": ("a", "b")}
    with pytest.raises(FaceprintError, match="LABEL=FILE with an existing file"):
        load_cohorts(["a=/nonexistent/list.txt"])
    with pytest.raises(FaceprintError, match="not both"):
        load_cohorts([str(csv), f"a={csv}"])


def test_the_driving_cohort() -> None:
    scores = np.array([0.9, 0.2, 0.95, 0.3, 0.7, 0.8, 0.1, 0.6])
    same = np.array([True, True, True, False, True, True, False, False])
    a = ["x", "x", "x", "x", "y", "y", "y", None]
    out = m.cohort_error_rates(scores, same, a, a, 0.5)
    # x: genuine 0.9, 0.2, 0.95 → FNMR 1/3; y: genuine 0.7, 0.8 → 0. One pair has no label.
    assert out["drivers"]["fnmr"]["cohort"] == "x"
    assert out["drivers"]["fnmr"]["error_share"] == 1.0 and out["drivers"]["fnmr"]["pair_share"] == 0.6
    assert out["drivers"]["fmr"] is None  # no false match in any cohort
    assert out["unlabelled_pairs"] == 1


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Every pair of the 36 identity photos, and two identity lists (person09 in neither, person05 in both)."""
    root = tmp_path_factory.mktemp("fairness")
    photos = sorted(IDENTITIES.glob("person*/*.jpg"))
    pairs = root / "pairs.csv"
    rows = [f"{a},{b},{'same' if a.parent == b.parent else 'different'}" for a, b in itertools.combinations(photos, 2)]
    pairs.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    first, second = root / "first.txt", root / "second.txt"
    first.write_text("person01\nperson02\nperson03\nperson04\nperson05\n")
    second.write_text("person05\nperson06\nperson07\nperson08\n")
    return pairs, first, second


def test_eval_and_calibrate_by_cohort(cohort_files: tuple[Path, Path, Path], tmp_path: Path, cache_dir: Path) -> None:
    pairs, first, second = cohort_files
    cache = tmp_path / "emb.npz"
    lists = ["--cohorts", f"first={first}", "--cohorts", f"second={second}"]
    runner = CliRunner()
    out = tmp_path / "table.json"
    result = runner.invoke(app, ["calibrate", "--pairs", str(pairs), "--out", str(out), "--cache", str(cache), *lists])
    assert result.exit_code == 0, result.output
    table = json.loads(out.with_suffix(".cohorts.json").read_text())
    by = {c["cohort"]: c for c in table["cohorts"]}
    assert set(by) == {"first", "second"}
    assert by["first"]["genuine_pairs"] > 0 and by["first"]["impostor_pairs"] >= 10
    assert by["first"]["thresholds"][0]["fmr"] == 0.1
    assert "person05 (first/second)" in table["notes"][0]
    assert "thresholds per cohort" in result.output

    # A strict threshold, so that these easy photos give false non-matches to attribute.
    verify = ["eval", "verify", "--pairs", str(pairs), "--cache", str(cache), "--threshold", "0.96", *lists]
    text = runner.invoke(app, verify)
    assert text.exit_code == 0, text.output
    cohorts = text.output.split("## Cohorts", 1)[1]
    assert "| first |" in cohorts and "| second |" in cohorts
    assert "cohort drives the false non-matches" in cohorts
    assert "count for no cohort" in cohorts  # person09 (unlabelled) and person05 (in both lists)
    data = json.loads(runner.invoke(app, [*verify, "--json"]).stdout)
    assert data["cohorts"]["unlabelled_pairs"] > 0
    assert data["cohorts"]["drivers"]["fnmr"]["cohort"] in {"first", "second"}
