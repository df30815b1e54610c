"""Drift statistics and windows (issue 17): PSI and SciPy's KS test, baseline and rolling windows, sources,
persistence and the report's words. The service end of it (real photos, a real server): test_operations.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from faceprint.evaluation.drift import (
    MAX_SOURCES,
    DriftError,
    DriftMonitor,
    Observation,
    check_source,
    compare,
    psi,
    report_text,
    summary,
)


def test_psi_and_ks() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(100, 10, 500)
    assert psi(base, rng.normal(100, 10, 500)) < 0.1
    assert psi(base, rng.normal(60, 8, 500)) > 1.0
    assert psi(np.ones(50), np.ones(50)) == pytest.approx(0.0)
    assert psi(np.ones(50), np.zeros(50)) > 1.0  # a constant baseline still compares
    c = compare("face_size", base, base * 0.6)
    assert c is not None and c.drifted and c.change == pytest.approx(-0.4, abs=0.02)
    assert c.ks_statistic == pytest.approx(ks_2samp(base, base * 0.6).statistic)
    assert compare("face_size", base[:10], base[:10]) is None  # too few to say


def test_windows_sources_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "drift.json"
    mon = DriftMonitor(path, window=20)
    mon.observe("c", "cam1", [Observation(face_size=100.0 + i % 7, sharpness=200.0 + i) for i in range(20)], at=1000)
    mon.observe("c", "cam1", [Observation(face_size=60.0 + i % 5, sharpness=20.0 + i) for i in range(30)], at=2000)
    base, cur = mon.samples("c", "cam1", "face_size")
    assert base.size == 20 and cur.size == 20 and cur.max() < 70  # the current window rolls
    assert mon.samples("c", "cam1", "face_size", since=3000)[1].size == 0
    mon.save()
    again = DriftMonitor(path, window=20)
    assert [c.to_dict() for c in again.compare("c", "cam1")] == [c.to_dict() for c in mon.compare("c", "cam1")]
    assert summary(again.compare("c", "cam1")).endswith("a camera moved or lost focus")
    # Sources are bounded: beyond MAX_SOURCES a collection's further cameras share "other".
    for i in range(MAX_SOURCES + 5):
        mon.observe("c", f"extra{i}", [Observation(face_size=1.0)])
    assert {s for c, s in mon.streams()} >= {"other"} and len(mon.streams()) == MAX_SOURCES
    assert again.rebaseline("c", "cam1") == 2 and again.compare("c", "cam1") == []
    path.write_text("{broken")
    with pytest.raises(DriftError, match="not a faceprint drift file"):
        DriftMonitor(path)


def test_source_names() -> None:
    assert check_source(None) == "default" and check_source("gate-2:cam.1") == "gate-2:cam.1"
    for bad in ("a b", "x" * 65, "cam/1"):
        with pytest.raises(DriftError, match="at most 64 letters"):
            check_source(bad)


def test_report_without_data() -> None:
    assert "no drift data" in report_text(DriftMonitor(None, window=20))
