"""Scores, distances and the calibration table, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprint import Faceprint, FaceprintError, IncompatibleFaceprints
from faceprint.matching import Calibration, cosine_scores, decide, score_to_distance


def test_cosine_and_distance_agree() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 128))
    score = cosine_scores(a, b)[0, 0]
    na, nb = a / np.linalg.norm(a), b / np.linalg.norm(b)
    assert score == pytest.approx(float(na @ nb), abs=1e-6)
    assert score_to_distance(score) == pytest.approx(float(np.linalg.norm(na - nb)), abs=1e-5)


def _table() -> Calibration:
    # 10 impostor scores 0.0 … 0.9 and 4 genuine scores.
    return Calibration.from_scores("m", np.array([0.5, 0.7, 0.95, 0.99]), np.arange(10) / 10, "hand-made")


def test_fmr_table_by_hand() -> None:
    table = _table()
    assert table.fmr_at(0.85) == pytest.approx(0.1)  # only 0.9 is >= 0.85
    assert table.fmr_at(0.9) == pytest.approx(0.1)
    assert table.fmr_at(0.91) == pytest.approx(0.0)
    assert table.fmr_at(-1.0) == pytest.approx(1.0)
    assert table.fnmr_at(0.8) == pytest.approx(0.5)  # 0.5 and 0.7 fall below
    # The lowest threshold with FMR <= 0.1 lies just above 0.8 (0.8 itself would let 2 of 10 through).
    t = table.threshold_for(0.1)
    assert 0.8 < t <= 0.9 and table.fmr_at(t) <= 0.1


def test_fmr_below_resolution_is_refused() -> None:
    with pytest.raises(FaceprintError, match="resolve"):
        _table().threshold_for(1e-3)


def test_save_and_load(tmp_path: Path) -> None:
    table = _table()
    table.save(tmp_path / "t.json")
    assert Calibration.load(tmp_path / "t.json") == table


def test_decide_semantics() -> None:
    table = _table()
    a = Faceprint(np.array([1.0, 0.0], dtype=np.float32), "m")
    b = Faceprint(np.array([0.6, 0.8], dtype=np.float32), "m")
    d = decide(a, b, threshold=0.6, calibration=table)
    assert d.same_person and d.score == pytest.approx(0.6) and d.threshold == 0.6
    assert d.distance == pytest.approx(np.sqrt(0.8))
    assert d.fmr == pytest.approx(0.4)  # impostors 0.6, 0.7, 0.8, 0.9
    assert not decide(a, b, threshold=0.61, calibration=table).same_person
    with pytest.raises(IncompatibleFaceprints, match="different models"):
        decide(a, Faceprint(b.vector, "other"), threshold=0.5, calibration=table)
    # One threshold rule for verification as for identification: at most one of fmr, fpir and threshold.
    for two in ({"fmr": 0.1, "threshold": 0.5}, {"fmr": 0.1, "fpir": 0.1}, {"fpir": 0.1, "threshold": 0.5}):
        with pytest.raises(FaceprintError, match="at most one of fmr, fpir and threshold"):
            decide(a, b, calibration=table, **two)
    assert (d.rule, d.fpir) == ("threshold", None)
    # An FPIR over one comparison is that FMR: the same threshold, reported as the rule that chose it.
    by_fpir, by_fmr = decide(a, b, fpir=0.4, calibration=table), decide(a, b, fmr=0.4, calibration=table)
    assert by_fpir.threshold == by_fmr.threshold and (by_fpir.rule, by_fpir.fpir) == ("fpir", 0.4)
    assert by_fmr.rule == "fmr" and by_fmr.to_dict()["rule"] == "fmr"
