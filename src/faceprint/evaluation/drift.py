"""Input drift: rolling distributions of what the cameras send, compared with a baseline window.

For each collection and each *source* (a camera id the client names; bounded, see :data:`MAX_SOURCES`) the
monitor keeps, per feature, a **baseline** window (the first :attr:`DriftMonitor.window` values, frozen until
the operator re-baselines) and a **current** window (the latest ``window`` values, rolling). Features:

``face_size``
    width of the detected face box in pixels of the photo;
``quality`` / ``sharpness``
    the enrolment quality score in [0, 1] and the variance of the Laplacian on the aligned chip
    (:mod:`faceprint.quality`);
``liveness``
    P(live) of a face, when liveness was checked;
``best_score``
    the top candidate's cosine score of an identification (whether or not it matched).

Comparisons use SciPy: the two-sample Kolmogorov-Smirnov test (:func:`scipy.stats.ks_2samp`) and the
population stability index, ``Σ (c − b) ln(c / b)`` over ten baseline-quantile bins, which is the symmetric
Kullback-Leibler divergence ``Σ rel_entr(c, b) + rel_entr(b, c)`` (:func:`scipy.special.rel_entr`).
Conventional PSI readings: below 0.1 stable, 0.1–0.25 moderate, above 0.25 a major shift.

Only these numbers are kept (never images, vectors or subject names); the windows persist as one JSON file
(``drift.json`` beside the service database) that ``faceprint drift`` reads.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import rel_entr
from scipy.stats import ks_2samp

from faceprint.errors import FaceprintError

FEATURES = ("face_size", "quality", "sharpness", "liveness", "best_score")
DEFAULT_SOURCE = "default"
OTHER_SOURCE = "other"
MAX_SOURCES = 32  # per collection; further sources are pooled under "other" (bounded metric labels)
DEFAULT_WINDOW = 500
MIN_SAMPLES = 20  # per side, before a comparison is made
PSI_BINS = 10
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
KS_ALPHA = 0.01
FILE_VERSION = 1
_SOURCE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


class DriftError(FaceprintError):
    """A drift file or a source name that cannot be used."""


def check_source(source: str | None) -> str:
    """The source name, or :data:`DEFAULT_SOURCE`; at most 64 letters, digits, ``_ . : -``."""
    if source is None or source == "":
        return DEFAULT_SOURCE
    if len(source) > 64 or not set(source) <= _SOURCE_CHARS:
        raise DriftError(f"source {source[:80]!r}: use at most 64 letters, digits, '_', '.', ':' or '-'")
    return source


# -- statistics ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One feature of one (collection, source): current window against the baseline."""

    feature: str
    baseline_n: int
    current_n: int
    psi: float
    ks_statistic: float
    ks_pvalue: float
    baseline_median: float
    current_median: float

    @property
    def change(self) -> float | None:
        """Relative change of the median (−0.4: 40 % lower); None when the baseline median is 0."""
        if self.baseline_median == 0:
            return None
        return self.current_median / self.baseline_median - 1.0

    @property
    def drifted(self) -> bool:
        return self.psi >= PSI_MAJOR or (self.psi >= PSI_MODERATE and self.ks_pvalue < KS_ALPHA)

    def to_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "baseline_n": self.baseline_n,
            "current_n": self.current_n,
            "psi": round(self.psi, 4),
            "ks_statistic": round(self.ks_statistic, 4),
            "ks_pvalue": float(f"{self.ks_pvalue:.4g}"),
            "baseline_median": round(self.baseline_median, 4),
            "current_median": round(self.current_median, 4),
            "change": None if self.change is None else round(self.change, 4),
            "drifted": self.drifted,
        }


def psi(baseline: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``baseline`` over baseline-quantile bins."""
    inner = np.unique(np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1]))
    if inner.size == 1 and np.all(baseline == inner[0]):  # a constant baseline: below, at, above its value
        inner = np.array([inner[0], np.nextafter(inner[0], np.inf)])
    b = np.bincount(np.searchsorted(inner, baseline, side="right"), minlength=inner.size + 1)
    c = np.bincount(np.searchsorted(inner, current, side="right"), minlength=inner.size + 1)
    eps = 1e-4  # an empty bin would make the index infinite
    pb = np.clip(b / max(1, b.sum()), eps, None)
    pc = np.clip(c / max(1, c.sum()), eps, None)
    return float(np.sum(rel_entr(pc, pb) + rel_entr(pb, pc)))


def compare(feature: str, baseline: np.ndarray, current: np.ndarray) -> Comparison | None:
    """PSI and KS of ``current`` against ``baseline``; None with fewer than :data:`MIN_SAMPLES` on a side."""
    if baseline.size < MIN_SAMPLES or current.size < MIN_SAMPLES:
        return None
    ks = ks_2samp(baseline, current)
    return Comparison(
        feature=feature,
        baseline_n=int(baseline.size),
        current_n=int(current.size),
        psi=psi(baseline, current),
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        baseline_median=float(np.median(baseline)),
        current_median=float(np.median(current)),
    )


# -- the windows --------------------------------------------------------------------------------------------
@dataclass
class _Series:
    baseline: list[tuple[float, float]] = field(default_factory=list)  # (unix time, value), frozen when full
    current: deque[tuple[float, float]] = field(default_factory=deque)


@dataclass(frozen=True)
class Observation:
    """What one face contributes; None for a feature the request did not measure."""

    face_size: float | None = None
    quality: float | None = None
    sharpness: float | None = None
    liveness: float | None = None
    best_score: float | None = None

    def items(self) -> Iterable[tuple[str, float]]:
        for name in FEATURES:
            value = getattr(self, name)
            if value is not None and math.isfinite(value):
                yield name, float(value)


class DriftMonitor:
    """Baseline and current windows per (collection, source, feature); thread-safe.

    ``path``: where :meth:`save` writes (and the constructor reads) the windows; ``None`` keeps them in memory.
    """

    def __init__(self, path: Path | None = None, *, window: int = DEFAULT_WINDOW) -> None:
        if window < MIN_SAMPLES:
            raise DriftError(f"the drift window must hold at least {MIN_SAMPLES} values, got {window}")
        self.path = path
        self.window = window
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of the file at a time
        self._unsaved = 0
        if path is not None and path.is_file():
            self._load(path)

    # -- recording -------------------------------------------------------------------------------------
    def source_label(self, collection: str, source: str) -> str:
        """``source``, or ``"other"`` once the collection already has :data:`MAX_SOURCES` sources."""
        with self._lock:
            return self._source_label(collection, source)

    def _source_label(self, collection: str, source: str) -> str:
        known = {s for c, s, _ in self._series if c == collection}
        if source in known or len(known) < MAX_SOURCES - 1:
            return source
        return OTHER_SOURCE

    def observe(
        self, collection: str, source: str, observations: Iterable[Observation], at: float | None = None
    ) -> None:
        now = time.time() if at is None else at
        with self._lock:
            label = self._source_label(collection, source)
            for obs in observations:
                for feature, value in obs.items():
                    series = self._series.setdefault((collection, label, feature), _Series())
                    if len(series.baseline) < self.window:
                        series.baseline.append((now, value))
                    else:
                        series.current.append((now, value))
                        while len(series.current) > self.window:
                            series.current.popleft()
                    self._unsaved += 1

    def rebaseline(self, collection: str | None = None, source: str | None = None) -> int:
        """Make the current windows the new baselines (after a deliberate change); returns how many."""
        n = 0
        with self._lock:
            for (coll, src, _), series in self._series.items():
                wanted = (collection is None or coll == collection) and (source is None or src == source)
                if wanted and series.current:
                    series.baseline = list(series.current)[-self.window :]
                    series.current.clear()
                    n += 1
            self._unsaved += n
        return n

    # -- comparing -------------------------------------------------------------------------------------
    def streams(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted({(c, s) for c, s, _ in self._series})

    def samples(
        self, collection: str, source: str, feature: str, since: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(baseline, current) values; ``since``: only current values recorded at or after that unix time."""
        with self._lock:
            series = self._series.get((collection, source, feature))
            if series is None:
                return np.empty(0), np.empty(0)
            base = np.array([v for _, v in series.baseline], dtype=np.float64)
            cur = np.array([v for t, v in series.current if since is None or t >= since], dtype=np.float64)
        return base, cur

    def compare(self, collection: str, source: str, since: float | None = None) -> list[Comparison]:
        out = []
        for feature in FEATURES:
            result = compare(feature, *self.samples(collection, source, feature, since))
            if result is not None:
                out.append(result)
        return out

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, *, force: bool = True) -> None:
        """Write the windows (atomically); with ``force=False`` only when something was recorded since."""
        if self.path is None:
            return
        with self._lock:
            if not force and not self._unsaved:
                return
            data = {
                "version": FILE_VERSION,
                "window": self.window,
                "series": [
                    {
                        "collection": c,
                        "source": s,
                        "feature": f,
                        "baseline": [[round(t, 3), v] for t, v in series.baseline],
                        "current": [[round(t, 3), v] for t, v in series.current],
                    }
                    for (c, s, f), series in sorted(self._series.items())
                ],
            }
            self._unsaved = 0
        with self._save_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("version") != FILE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {FILE_VERSION}")
            for row in data["series"]:
                series = _Series(
                    baseline=[(float(t), float(v)) for t, v in row["baseline"]][: self.window],
                    current=deque((float(t), float(v)) for t, v in row["current"][-self.window :]),
                )
                self._series[(str(row["collection"]), str(row["source"]), str(row["feature"]))] = series
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DriftError(f"{path}: not a faceprint drift file ({exc})") from None


# -- the report ---------------------------------------------------------------------------------------------
_NOUN = {
    "face_size": "faces",
    "quality": "quality",
    "sharpness": "sharpness",
    "liveness": "liveness scores",
    "best_score": "best-match scores",
}
_UNIT = {"face_size": "px", "quality": "", "sharpness": "", "liveness": "", "best_score": ""}


def describe_change(c: Comparison) -> str:
    """One feature's move in words: "faces 40 % smaller", "sharpness down 85 %"."""
    change = c.change
    if c.feature == "face_size" and change is not None:
        return f"faces {abs(change):.0%} {'smaller' if change < 0 else 'larger'}".replace("%", " %")
    if change is None:
        direction = "up" if c.current_median > c.baseline_median else "down"
        return f"{_NOUN[c.feature]} {direction}"
    direction = "up" if change > 0 else "down"
    return f"{_NOUN[c.feature]} {direction} {abs(change):.0%}".replace("%", " %")


def likely_cause(drifted: Mapping[str, Comparison]) -> str:
    """What such a combination of moves usually means, for the operator's first look."""

    def down(name: str) -> bool:
        return name in drifted and drifted[name].current_median < drifted[name].baseline_median

    def up(name: str) -> bool:
        return name in drifted and drifted[name].current_median > drifted[name].baseline_median

    if (down("face_size") or up("face_size")) and (down("sharpness") or down("quality")):
        return "a camera moved or lost focus"
    if down("face_size") or up("face_size"):
        return "a camera moved or was zoomed, or people stand elsewhere"
    if down("sharpness") or down("quality"):
        return "a camera lost focus, its lens is dirty, or its compression or lighting changed"
    if down("liveness"):
        return "lighting or the camera changed, or presentation attacks increased"
    if down("best_score"):
        return "faces match the gallery less well: new people, a changed camera, or a model that does not fit"
    if drifted:
        return "the inputs changed; compare the histograms below"
    return ""


def summary(comparisons: Iterable[Comparison]) -> str:
    """A sentence: what moved and its likely cause, or that nothing did."""
    drifted = {c.feature: c for c in comparisons if c.drifted}
    if not drifted:
        return "no drift: every feature is within its baseline"
    moves = ", ".join(describe_change(c) for c in drifted.values())
    cause = likely_cause(drifted)
    return f"{moves}: {cause}" if cause else moves


def text_histogram(baseline: np.ndarray, current: np.ndarray, *, bins: int = 10, width: int = 20) -> list[str]:
    """Side-by-side bars (baseline ``#``, current ``=``) over shared bins, as fractions of each window."""
    both = np.concatenate([baseline, current])
    if both.size == 0:
        return []
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    b, _ = np.histogram(baseline, edges)
    c, _ = np.histogram(current, edges)
    pb = b / max(1, b.sum())
    pc = c / max(1, c.sum())
    lines = []
    for i in range(bins):
        label = f"{edges[i]:>9.3g}–{edges[i + 1]:<9.3g}"
        base_bar = "#" * round(pb[i] * width)
        now_bar = "=" * round(pc[i] * width)
        lines.append(f"  {label} base {base_bar:<{width}} {pb[i]:4.0%}  now {now_bar:<{width}} {pc[i]:4.0%}")
    return lines


def report_text(monitor: DriftMonitor, *, since: float | None = None, source: str | None = None) -> str:
    """The ``faceprint drift`` report: per collection and source, a summary line, a table and histograms."""
    out: list[str] = []
    keys = [(c, s) for c, s in monitor.streams() if source is None or s == source]
    if not keys:
        where = f" for source {source!r}" if source is not None else ""
        return f"no drift data{where} yet: the service records it from verify and identify requests\n"
    for coll, src in keys:
        comps = monitor.compare(coll, src, since)
        out.append(f"## collection {coll}, source {src}")
        if not comps:
            base, cur = monitor.samples(coll, src, "face_size", since)
            out.append(
                f"not enough data to compare: {base.size} baseline and {cur.size} current faces "
                f"(at least {MIN_SAMPLES} each; the baseline takes the first {monitor.window})"
            )
            out.append("")
            continue
        out.append(summary(comps))
        out.append("")
        out.append("| feature | baseline median | current median | change | PSI | KS | KS p | verdict |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in comps:
            change = "" if c.change is None else f"{c.change:+.0%}"
            verdict = "DRIFT" if c.drifted else "stable"
            unit = _UNIT[c.feature]
            out.append(
                f"| {c.feature} | {c.baseline_median:.3g}{unit} | {c.current_median:.3g}{unit} | {change} | "
                f"{c.psi:.3f} | {c.ks_statistic:.3f} | {c.ks_pvalue:.2g} | {verdict} |"
            )
        for c in comps:
            base, cur = monitor.samples(coll, src, c.feature, since)
            out.append("")
            out.append(f"{c.feature} (baseline n={base.size}, current n={cur.size}):")
            out.extend(text_histogram(base, cur))
        out.append("")
    return "\n".join(out) + "\n"


def report_dict(
    monitor: DriftMonitor, *, since: float | None = None, source: str | None = None
) -> list[dict[str, object]]:
    return [
        {
            "collection": coll,
            "source": src,
            "summary": summary(comps),
            "features": [c.to_dict() for c in comps],
        }
        for coll, src in monitor.streams()
        if source is None or src == source
        for comps in [monitor.compare(coll, src, since)]
    ]
