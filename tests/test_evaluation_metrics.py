"""Metric functions: hand-computed cases and scikit-learn as the reference on random scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from faceprint.evaluation import metrics as m

GEN = [0.9, 0.8, 0.7, 0.4]
IMP = [0.6, 0.5, 0.3, 0.2]


def _random(seed: int, n_gen: int = 300, n_imp: int = 700, rounded: bool = False):
    rng = np.random.default_rng(seed)
    gen = rng.normal(0.6, 0.15, n_gen)
    imp = rng.normal(0.2, 0.15, n_imp)
    if rounded:  # many ties
        gen, imp = gen.round(2), imp.round(2)
    return gen, imp


def test_hand_computed_rates() -> None:
    assert m.equal_error_rate(GEN, IMP) == (0.25, 0.6)
    acc, t = m.best_accuracy(GEN, IMP)
    assert acc == 0.875 and t == pytest.approx(0.65)
    assert m.accuracy_at(GEN, IMP, 0.65) == 0.875
    assert m.error_rates_at(GEN, IMP, 0.55) == (0.25, 0.25)
    assert m.roc_auc(GEN, IMP) == 14 / 16  # 0.4 loses to 0.6 and 0.5


def test_eer_interpolates_between_points() -> None:
    eer, t = m.equal_error_rate([0.9, 0.8, 0.5], [0.6, 0.1])
    assert eer == pytest.approx(1 / 3)
    assert t == pytest.approx(0.8 - 2 / 3 * 0.2)


def test_tar_at_far_and_its_limits() -> None:
    imp = np.arange(10) / 10
    point = m.tar_at_far([0.85, 0.95, 0.5], imp, 0.1)
    assert point.supported and point.fmr == 0.1 and point.tar == pytest.approx(2 / 3)
    assert 0.8 < point.threshold <= 0.8 + 1e-9
    assert m.fnmr_at_fmr([0.85, 0.95, 0.5], imp, 0.1) == pytest.approx(1 / 3)
    too_few = m.tar_at_far([0.85], imp, 0.01)
    assert not too_few.supported and too_few.tar is None
    assert "100 impostor pairs" in too_few.reason
    assert m.min_pairs_for(1e-4) == 10_000


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounded", [False, True])
def test_roc_and_auc_match_scikit_learn(seed: int, rounded: bool) -> None:
    gen, imp = _random(seed, rounded=rounded)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    s = np.r_[gen, imp]
    fpr, tpr, thr = sk_roc_curve(y, s, drop_intermediate=False)
    roc = m.roc_curve(gen, imp)
    np.testing.assert_allclose(roc.fmr, fpr)
    np.testing.assert_allclose(roc.tar, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], thr[1:])
    assert m.roc_auc(gen, imp) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_eer_and_tar_agree_with_scikit_learn_curve(seed: int) -> None:
    gen, imp = _random(seed, 2000, 5000)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    fpr, tpr, _ = sk_roc_curve(y, np.r_[gen, imp])
    eer, _ = m.equal_error_rate(gen, imp)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert eer == pytest.approx((fpr[i] + 1 - tpr[i]) / 2, abs=2e-3)
    for far in (1e-1, 1e-2, 1e-3):
        point = m.tar_at_far(gen, imp, far)
        # scikit-learn: the best TPR among ROC points with FPR <= far.
        assert point.tar == pytest.approx(tpr[fpr <= far].max(), abs=1e-12)
        assert point.fmr <= far


def test_kfold_picks_thresholds_on_other_folds() -> None:
    rng = np.random.default_rng(5)
    folds = np.repeat(np.arange(10), 60)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(same, rng.normal(0.7, 0.1, 600), rng.normal(0.3, 0.1, 600))
    res = m.kfold_accuracy(scores, same, folds)
    assert len(res.accuracies) == 10 and all(n == 60 for n in res.pairs)
    for k in range(10):
        train = folds != k
        _, t = m.best_accuracy(scores[train & same], scores[train & ~same])
        assert res.thresholds[k] == t
        test = folds == k
        assert res.accuracies[k] == np.mean((scores[test] >= t) == same[test])
    assert res.std == pytest.approx(np.std(res.accuracies, ddof=1))
    assert 0.95 < res.mean <= 1.0


def test_cmc_hand_computed() -> None:
    scores = np.array([[0.9, 0.2, 0.1], [0.5, 0.4, 0.6], [0.3, 0.8, 0.7]])
    curve = m.cmc(scores, ["a", "b", "c"], ["a", "b", "c"], max_rank=3)
    np.testing.assert_allclose(curve, [1 / 3, 2 / 3, 1.0])


def test_open_set_fnir_at_fpir() -> None:
    nonmated = np.arange(100) / 100  # FPIR 0.01 allows one: threshold just above 0.98
    point = m.fnir_at_fpir(np.array([0.995, 0.999, 0.5]), np.array([True, False, True]), nonmated, 0.01)
    assert point.supported and point.fpir == 0.01
    assert point.fnir == pytest.approx(2 / 3)  # one wrong at rank 1, one below threshold
    assert not m.fnir_at_fpir(np.array([0.9]), np.array([True]), nonmated, 1e-3).supported


def test_detection_matching_and_ap_match_scikit_learn() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 40, 40]])
    pred = np.array([[1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [21, 19, 41, 39]])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    tp, matched = m.match_detections(truth, pred, scores)
    assert tp.tolist() == [True, False, False, True]  # the duplicate counts as a false positive
    assert matched.all()
    pr = m.precision_recall(scores, tp, n_truth=2)
    assert pr.average_precision == pytest.approx(0.5 + 0.5 * 0.5)
    # When every truth box is found, VOC all-point AP equals scikit-learn's step AP.
    rng = np.random.default_rng(0)
    s = rng.random(200)
    y = rng.random(200) < s
    assert m.precision_recall(s, y, int(y.sum())).average_precision == pytest.approx(
        average_precision_score(y, s), abs=0.02
    )
    rows = m.miss_rate_by_size(np.array([10.0, 30.0, 35.0, 200.0]), np.array([False, True, False, True]))
    assert rows[0]["miss_rate"] == 1.0 and rows[1]["miss_rate"] == 0.5 and rows[-1]["miss_rate"] == 0.0


def test_cohort_ratio() -> None:
    scores = np.array([0.9, 0.4, 0.8, 0.7, 0.2, 0.6])
    same = np.array([True, True, True, False, False, False])
    out = m.cohort_error_rates(scores, same, ["x", "x", "y", "x", "y", "x"], ["x", "x", "y", "x", "y", "y"], 0.5)
    rows = {r["cohort"]: r for r in out["cohorts"]}
    assert rows["x"]["fnmr"] == 0.5 and rows["y"]["fnmr"] == 0.0
    assert rows["x"]["fmr"] == 1.0 and rows["y"]["fmr"] == 0.0 and rows["(mixed)"]["fmr"] == 1.0
    assert out["fnmr_ratio"] == float("inf")
