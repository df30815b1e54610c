"""Pair, people, cohort and annotation readers on small files; score matrices; reports from known scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from faceprint.evaluation import metrics as m
from faceprint.evaluation.calibration import all_pair_scores, calibrate_identities
from faceprint.evaluation.detection import ellipse_box, read_annotations
from faceprint.evaluation.embedding import Embeddings, key
from faceprint.evaluation.identification import evaluate_identification, split_identities
from faceprint.evaluation.pairs import (
    PairFileError,
    folder_pairs,
    parse_label,
    read_pairs,
    read_people,
)
from faceprint.evaluation.report import to_html, to_markdown, verification_blocks, write_verification_report
from faceprint.evaluation.verification import cohort_of, evaluate_scores, read_cohorts, score_pairs

FOLD_PAIRS = "2\t2\nAnn\t1\t2\nBob\t1\t3\nAnn\t1\tBob\t2\nCid\t1\tAnn\t2\n" + (
    "Cid\t1\t2\nBob\t2\t3\nAnn\t2\tCid\t1\nBob\t1\tCid\t2\n"
)


def test_lfw_pairs_with_folds(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text(FOLD_PAIRS)
    pairs = read_pairs(tmp_path / "pairs.txt", tmp_path / "lfw")
    assert len(pairs) == 8
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.same for p in pairs[:4]] == [True, True, False, False]
    assert pairs[0].a == tmp_path / "lfw" / "Ann" / "Ann_0001.jpg"
    assert pairs[2].b == tmp_path / "lfw" / "Bob" / "Bob_0002.jpg"


def test_lfw_pairs_plain_count_header(tmp_path: Path) -> None:
    (tmp_path / "dev.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 4\n")
    pairs = read_pairs(tmp_path / "dev.txt", tmp_path)
    assert [(p.same, p.fold) for p in pairs] == [(True, None), (False, None)]
    (tmp_path / "bad.txt").write_text("2\nAnn 1 2\n")
    with pytest.raises(PairFileError, match="promises 4 pairs"):
        read_pairs(tmp_path / "bad.txt", tmp_path)
    (tmp_path / "bad2.txt").write_text("1\nAnn 1 2\nAnn 1 Bob\n")
    with pytest.raises(PairFileError, match=r"bad2.txt:3"):
        read_pairs(tmp_path / "bad2.txt", tmp_path)


@pytest.mark.parametrize(
    ("yes", "no"), [("Yes", "No"), ("1", "0"), ("true", "false"), ("same", "different"), ("TRUE", "False")]
)
def test_csv_labels(tmp_path: Path, yes: str, no: str) -> None:
    (tmp_path / "p.csv").write_text(f"img/a.jpg,img/b.jpg,{yes}\nimg/a.jpg,/abs/c.jpg,{no}\n")
    pairs = read_pairs(tmp_path / "p.csv")
    assert [p.same for p in pairs] == [True, False]
    assert pairs[0].a == tmp_path / "img" / "a.jpg" and pairs[1].b == Path("/abs/c.jpg")


def test_csv_header_tab_and_folds(tmp_path: Path) -> None:
    (tmp_path / "p.tsv").write_text("same\tleft\tright\tfold\nyes\ta.jpg\tb.jpg\t0\nno\ta.jpg\tc.jpg\t1\n")
    pairs = read_pairs(tmp_path / "p.tsv", root=Path("/data"))
    assert [(p.a, p.b, p.same, p.fold) for p in pairs] == [
        (Path("/data/a.jpg"), Path("/data/b.jpg"), True, 0),
        (Path("/data/a.jpg"), Path("/data/c.jpg"), False, 1),
    ]
    (tmp_path / "bad.csv").write_text("a.jpg,b.jpg,maybe\n")
    with pytest.raises(PairFileError, match="no label column"):
        read_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("a.jpg,b.jpg,yes\na.jpg,b.jpg,maybe\n")
    with pytest.raises(PairFileError, match=r"bad2.csv:2: label 'maybe'"):
        read_pairs(tmp_path / "bad2.csv")
    assert parse_label(" Different ") is False and parse_label("x") is None


def test_people_file_and_folder_pairs(tmp_path: Path) -> None:
    (tmp_path / "people.txt").write_text("2\nAnn\t2\nBob\t1\n1\nCid\t3\n")
    assert read_people(tmp_path / "people.txt") == ["Ann", "Bob", "Cid"]
    ids = {n: [Path(f"{n}/{i}.jpg") for i in range(k)] for n, k in (("a", 3), ("b", 2), ("c", 1))}
    pairs = folder_pairs(ids, impostors=None)
    assert sum(p.same for p in pairs) == 3 + 1
    assert sum(not p.same for p in pairs) == math.comb(6, 2) - 4
    sample = folder_pairs(ids, impostors=5, seed=1)
    assert sum(not p.same for p in sample) == 5
    assert sample == folder_pairs(ids, impostors=5, seed=1)
    assert all(p.a.parent != p.b.parent for p in sample if not p.same)


def test_cohorts(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("key,cohort\nperson01,f\nx/img2.jpg,m\n")
    mapping = read_cohorts(tmp_path / "c.csv")
    assert cohort_of(Path("/r/person01/img1.jpg"), Path("/r"), mapping) == "f"
    assert cohort_of(Path("/r/x/img2.jpg"), Path("/r"), mapping) == "m"
    assert cohort_of(Path("/r/y/img3.jpg"), Path("/r"), mapping) is None


def test_wider_fddb_and_dlib_annotations(tmp_path: Path) -> None:
    (tmp_path / "wider.txt").write_text(
        "0--Parade/a.jpg\n2\n10 20 30 40 0 0 0 0 0 0\n5 5 10 10 0 0 0 1 0 0\n"
        "0--Parade/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n1--Handshaking/c.jpg\n1\n1 2 3 4\n"
    )
    anns = read_annotations(tmp_path / "wider.txt", Path("/w"))
    assert [a.image.name for a in anns] == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_array_equal(anns[0].boxes[0], [10, 20, 40, 60])
    assert anns[0].ignore.tolist() == [False, True] and len(anns[1].boxes) == 0
    (tmp_path / "fddb.txt").write_text(
        "2002/08/11/big/img_591\n1\n123.583300 85.549500 1.265839 269.693400 161.781200  1\n"
    )
    (fddb,) = read_annotations(tmp_path / "fddb.txt", Path("/f"))
    assert fddb.image == Path("/f/2002/08/11/big/img_591.jpg")
    x1, y1, x2, y2 = fddb.boxes[0]
    assert (x1 + x2) / 2 == pytest.approx(269.6934) and y2 - y1 > x2 - x1  # the major axis is near vertical
    assert ellipse_box(2, 1, 0, 0, 0) == (-2, -1, 2, 1)
    (tmp_path / "t.xml").write_text(
        "<dataset><images><image file='p.jpg'><box top='1' left='2' width='3' height='4'/>"
        "<box top='0' left='0' width='5' height='5' ignore='1'/></image></images></dataset>"
    )
    (xml,) = read_annotations(tmp_path / "t.xml")
    assert xml.image == tmp_path / "p.jpg" and xml.ignore.tolist() == [False, True]
    np.testing.assert_array_equal(xml.boxes[0], [2, 1, 5, 5])


def test_all_pair_scores_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = [f"p{i % 7}" for i in range(50)]
    gen, imp = all_pair_scores(v, labels, block=16)
    s = v @ v.T
    i, j = np.triu_indices(50, 1)
    same = np.array(labels)[i] == np.array(labels)[j]
    np.testing.assert_allclose(np.sort(gen), np.sort(s[i, j][same]), atol=1e-6)
    np.testing.assert_allclose(np.sort(imp), np.sort(s[i, j][~same]), atol=1e-6)
    table = calibrate_identities(v, labels, "toy", "random vectors")
    assert table.impostor_pairs == int((~same).sum()) and table.genuine_pairs == int(same.sum())


def _toy_embeddings(tmp_path: Path) -> tuple[dict[str, list[Path]], Embeddings]:
    """Three identities as clusters of unit vectors, a fourth with one photo, one photo without a face."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    ids = {f"id{k}": [tmp_path / f"id{k}" / f"{i}.jpg" for i in range(4 if k < 3 else 1)] for k in range(4)}
    keys, vecs = [], []
    for k, (_, paths) in enumerate(ids.items()):
        for p in paths[1:] if k == 0 else paths:  # id0's first photo "has no face"
            keys.append(key(p))
            vecs.append(centres[k] + 0.3 * rng.normal(size=16))
    v = np.array(vecs, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return ids, Embeddings("toy", "none/largest", tuple(keys), v, {key(ids["id0"][0]): "no face found"})


def test_identification_and_embeddings_roundtrip(tmp_path: Path) -> None:
    ids, emb = _toy_embeddings(tmp_path)
    emb.save(tmp_path / "cache")
    again = Embeddings.load(tmp_path / "cache")
    assert again.keys == emb.keys and again.failures == emb.failures
    np.testing.assert_array_equal(again.vectors, emb.vectors)
    split = split_identities(ids, enrol=1, seed=0)
    assert set(split.gallery) == {"id0", "id1", "id2"} and split.nonmated == ids["id3"]
    result = evaluate_identification(split, emb)
    assert result.rank(1) == 1.0 and result.nonmated_probes == 1
    assert result.open_set and not result.open_set[0].supported  # one distractor resolves no FPIR
    assert result.skipped == {str(ids["id0"][0]): "no face found"}


def test_verification_result_and_report(tmp_path: Path) -> None:
    ids, emb = _toy_embeddings(tmp_path)
    pairs = folder_pairs(ids, impostors=None)
    scored = score_pairs(pairs, emb)
    assert len(scored.skipped) == 3 + 9  # id0's faceless photo: 3 genuine, 9 impostor pairs
    assert "no face found" in scored.skipped[0][1]
    res = evaluate_scores(scored, model_id="toy", source="toy", threshold=0.5)
    assert res.best_accuracy == pytest.approx(m.best_accuracy(scored.genuine, scored.impostor)[0])
    assert res.accuracy_skipped_as_errors < res.best_accuracy
    assert not res.tar_at_far[-1].supported  # 1e-4 needs 10,000 impostor pairs
    assert any("skipped" in n for n in res.notes)
    text = to_markdown(verification_blocks(res))
    assert "not resolvable" in text and "Skipped pairs (12)" in text
    assert "<table>" in to_html(verification_blocks(res), "t")
    written = write_verification_report(res, tmp_path / "report")
    assert {p.name for p in written} == {"report.md", "report.html", "roc.png", "det.png", "histogram.png"}
    assert all(p.stat().st_size > 0 for p in written)
    assert (tmp_path / "report" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from faceprint.cli import app

    runner = CliRunner()
    neither = runner.invoke(app, ["eval", "verify"])
    assert neither.exit_code == 2 and "give either --pairs FILE" in neither.stderr
    missing = runner.invoke(app, ["eval", "verify", "--pairs", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "nope.txt: file not found" in missing.stderr
    (tmp_path / "p.txt").write_text("10\t300\nAnn\t1\t2\n")
    short = runner.invoke(app, ["calibrate", "--pairs", str(tmp_path / "p.txt"), "--out", str(tmp_path / "t.json")])
    assert short.exit_code == 2 and "header promises 6000 pairs, the file has 1" in short.stderr
    bad_out = runner.invoke(app, ["calibrate", "--dir", str(tmp_path), "--out", str(tmp_path / "t.txt")])
    assert bad_out.exit_code == 2 and "must end in .json" in bad_out.stderr


def test_calibration_resolves_target_fmrs_in_a_narrow_score_range() -> None:
    from faceprint.matching import Calibration

    rng = np.random.default_rng(0)
    impostor = rng.normal(0.85, 0.04, 200_000)  # dlib-like: impostors crowd into a narrow band
    table = Calibration.from_scores("toy", rng.normal(0.95, 0.015, 2_000), impostor, "synthetic")
    for target in (1e-2, 1e-3, 1e-4):
        measured = float(np.mean(impostor >= table.threshold_for(target)))
        assert 0.95 * target <= measured <= target
