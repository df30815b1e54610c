"""`faceprint eval …`, `calibrate` and `bench` end to end on real photos with the real models.

A small identities folder of symlinks to ten ../shared/data photos (4 people with 2–3 photos, 1 with one)
is built in a temporary directory; every command shares one embeddings cache so that each photo is
detected and embedded once for the whole module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceprint.cli import app
from faceprint.matching import Calibration
from tests.conftest import DATA, IDENTITIES

PHOTOS = {
    "person01": ["img27.jpg", "img28.jpg", "img46.jpg"],
    "person02": ["img50.jpg", "img51.jpg"],
    "person04": ["img61.jpg", "img62.jpg"],
    "person08": ["img35.jpg", "img37.jpg"],
    "person06": ["img29.jpg"],
}
DOGS = DATA / "dlib_faces" / "dogs.jpg"


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("identities")
    for person, names in PHOTOS.items():
        (root / person).mkdir()
        for name in names:
            (root / person / name).symlink_to(IDENTITIES / person / name)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emb") / "embeddings.npz"


@pytest.fixture(scope="module")
def run(cache_dir: Path, cache: Path):
    runner = CliRunner()

    def invoke(*args: str, cached: bool = True) -> dict | str:
        argv = [*args, "--cache", str(cache)] if cached else list(args)
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else result.stdout

    return invoke


def test_verify_dir_with_report_and_cohorts(run, ids: Path, tmp_path: Path) -> None:
    (tmp_path / "cohorts.csv").write_text("identity,cohort\nperson01,a\nperson02,a\nperson04,b\nperson08,b\n")
    report = tmp_path / "report"
    data = run(
        "eval", "verify", "--dir", str(ids), "--json", "--report", str(report),
        "--cohorts", str(tmp_path / "cohorts.csv"), "--threshold", "0.9",
    )  # fmt: skip
    assert data["pairs"] == {"scored": 45, "genuine": 6, "impostor": 39, "skipped": 0}
    assert data["best_accuracy"]["accuracy"] >= 0.95 and data["roc_auc"] >= 0.95
    assert data["configured"]["threshold"] == 0.9
    levels = {p["target_fmr"]: p for p in data["tar_at_far"]}
    assert levels[0.1]["supported"] and not levels[1e-2]["supported"]
    assert "needs at least 100 impostor pairs" in levels[1e-2]["reason"]
    cohorts = {c["cohort"]: c for c in data["cohorts"]["cohorts"]}
    assert cohorts["a"]["genuine_pairs"] == 4 and cohorts["b"]["genuine_pairs"] == 2
    for name in ("report.md", "report.html", "roc.png", "det.png", "histogram.png"):
        assert (report / name).stat().st_size > 500
    assert "## TAR at FAR" in (report / "report.md").read_text()


def test_verify_csv_and_lfw_pairs_list_faceless_photos(run, ids: Path, tmp_path: Path) -> None:
    p1, p2, p4 = (sorted((ids / p).iterdir()) for p in ("person01", "person02", "person04"))
    (tmp_path / "pairs.csv").write_text(
        f"a,b,same\n{p1[0]},{p1[1]},yes\n{p2[0]},{p2[1]},Yes\n{p1[0]},{p2[0]},no\n{p4[0]},{DOGS},no\n"
    )
    data = run("eval", "verify", "--pairs", str(tmp_path / "pairs.csv"), "--json")
    assert data["pairs"]["scored"] == 3 and data["pairs"]["skipped"] == 1
    assert data["skipped_pairs"][0]["reason"] == f"{DOGS}: no face found"
    text = run("eval", "verify", "--pairs", str(tmp_path / "pairs.csv"))
    assert "Skipped pairs (1)" in text and "dogs.jpg" in text

    # LFW layout and the 10-fold header format (here 2 folds × 1 same + 1 different pair).
    lfw = tmp_path / "lfw"
    for person in ("person01", "person02", "person04"):
        (lfw / person).mkdir(parents=True)
        for i, photo in enumerate(sorted((ids / person).iterdir())[:2], start=1):
            (lfw / person / f"{person}_{i:04d}.jpg").symlink_to(photo.resolve())
    (tmp_path / "pairs.txt").write_text(
        "2\t1\nperson01\t1\t2\nperson01\t1\tperson02\t1\nperson04\t1\t2\nperson02\t2\tperson04\t1\n"
    )
    data = run("eval", "verify", "--pairs", str(tmp_path / "pairs.txt"), "--root", str(lfw), "--json")
    assert data["kfold"]["folds"] == 2 and data["kfold"]["pairs"] == [2, 2]
    # Each fold's threshold comes from the other fold's two pairs, so a fold may well miss one pair.
    assert all(a in (0.0, 0.5, 1.0) for a in data["kfold"]["accuracies"])
    assert data["best_accuracy"]["accuracy"] == 1.0


def test_calibrate_dir_people_then_verify_with_it(run, ids: Path, tmp_path: Path) -> None:
    (tmp_path / "people.txt").write_text("3\nperson01\t3\nperson02\t2\nperson04\t2\n")
    out = tmp_path / "table.json"
    data = run("calibrate", "--dir", str(ids), "--people", str(tmp_path / "people.txt"), "--out", str(out), "--json")
    table = Calibration.load(out)
    assert table.genuine_pairs == 3 + 1 + 1 and table.impostor_pairs == 21 - 5
    assert data["impostor_pairs"] == 16 and "3 people, 7 photos" in table.source
    assert list(table.thresholds) == sorted(table.thresholds)
    assert table.fmr_at(table.threshold_for(0.1)) <= 0.1
    verified = run("eval", "verify", "--dir", str(ids), "--calibration", str(out), "--fmr", "0.1", "--json")
    assert verified["configured"]["threshold"] == pytest.approx(table.threshold_for(0.1), abs=1e-6)


def test_identify(run, ids: Path) -> None:
    data = run("eval", "identify", "--dir", str(ids), "--json")
    assert data["enrolled_identities"] == 4 and data["nonmated_probes"] == 1
    assert data["mated_probes"] == 2 + 1 + 1 + 1 and data["rank1"] == 1.0
    assert not data["open_set"][0]["supported"]  # one distractor cannot resolve FPIR 0.1


def test_detect_on_dlib_boxes(run, tmp_path: Path) -> None:
    (tmp_path / "truth.xml").write_text(
        "<dataset><images><image file='2008_002506.jpg'><box top='78' left='329' width='109' height='109'/>"
        "<box top='95' left='224' width='91' height='91'/><box top='65' left='125' width='90' height='91'/>"
        "</image><image file='dogs.jpg'/></images></dataset>"
    )
    data = run(
        "eval", "detect", "--annotations", str(tmp_path / "truth.xml"), "--root", str(DATA / "dlib_faces"),
        "--iou", "0.4", "--json", cached=False,
    )  # fmt: skip
    assert data["images"] == 2 and data["faces"] == 3
    assert data["recall"] == 1.0 and data["average_precision"] >= 0.9


def test_bench(run) -> None:
    data = run("bench", str(IDENTITIES / "person01" / "img27.jpg"), "--repeat", "2", "--json", cached=False)
    stages = {s["stage"]: s for s in data["stages"]}
    assert set(stages) == {"decode", "detect", "landmarks", "align", "embed", "total"}
    assert stages["total"]["runs"] == 2 and stages["total"]["p99_ms"] >= stages["total"]["p50_ms"] > 0
    assert data["environment"]["logical_cpus"] >= 1 and data["faces"] == 1
