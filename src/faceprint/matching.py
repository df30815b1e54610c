"""Scores, distances, calibrated thresholds and the verification decision.

Semantics used everywhere (library, CLI, API):
- ``score`` is the cosine similarity of two L2-normalised faceprints (higher = more alike);
- ``threshold`` applies to ``score``; ``same_person`` is ``score >= threshold``;
- ``distance`` is the Euclidean distance of the normalised vectors (``sqrt(2 - 2·score)``);
- ``fmr`` is the false-match rate of that threshold according to the model's calibration table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from faceprint.errors import CalibrationMissing, FaceprintError, IncompatibleFaceprints, InvalidArgument
from faceprint.types import Faceprint

DEFAULT_FMR = 1e-3


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_scores(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Q×R matrix of cosine similarities (inputs are normalised here, so raw vectors are fine)."""
    return normalise(np.atleast_2d(queries)) @ normalise(np.atleast_2d(references)).T


def score_to_distance(score: float | np.ndarray) -> float | np.ndarray:
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(score, dtype=np.float64)))


@dataclass(frozen=True)
class Calibration:
    """A model's score → false-match-rate table, measured on impostor pairs.

    ``thresholds`` ascend; ``fmr[i]`` is the fraction of impostor pairs with score ``>= thresholds[i]``;
    ``fnmr[i]`` the fraction of genuine pairs with score ``< thresholds[i]`` on the same data.
    """

    model_id: str
    thresholds: tuple[float, ...]
    fmr: tuple[float, ...]
    fnmr: tuple[float, ...]
    genuine_pairs: int
    impostor_pairs: int
    source: str

    def threshold_for(self, fmr: float) -> float:
        """The lowest threshold whose measured false-match rate is at most ``fmr``."""
        if not 0 < fmr <= 1:
            raise FaceprintError(f"fmr must be in (0, 1], got {fmr}")
        resolvable = 1.0 / self.impostor_pairs
        if fmr < resolvable:
            raise FaceprintError(
                f"fmr {fmr:g} is below what the {self.model_id} calibration can resolve "
                f"({self.impostor_pairs:,} impostor pairs → {resolvable:.1e}); recalibrate on more data "
                "(`faceprint calibrate`) or pass an explicit threshold"
            )
        fmrs = np.asarray(self.fmr)
        ok = np.nonzero(fmrs <= fmr)[0]
        return float(self.thresholds[ok[0]]) if len(ok) else float(self.thresholds[-1])

    def fmr_at(self, threshold: float) -> float:
        """Measured false-match rate at ``threshold`` (step function of the table, conservative side)."""
        idx = int(np.searchsorted(np.asarray(self.thresholds), threshold, side="right")) - 1
        if idx < 0:
            return 1.0
        return float(self.fmr[idx])

    def fnmr_at(self, threshold: float) -> float:
        idx = int(np.searchsorted(np.asarray(self.thresholds), threshold, side="right")) - 1
        return 0.0 if idx < 0 else float(self.fnmr[idx])

    @classmethod
    def from_scores(
        cls, model_id: str, genuine: np.ndarray, impostor: np.ndarray, source: str, points: int = 2001
    ) -> Calibration:
        genuine = np.sort(np.asarray(genuine, dtype=np.float64))
        impostor = np.sort(np.asarray(impostor, dtype=np.float64))
        if len(genuine) == 0 or len(impostor) == 0:
            raise FaceprintError("calibration needs at least one genuine and one impostor pair")
        # Thresholds: every distinct score in the impostor tail (where FMR is small), a uniform grid, and the
        # impostor scores at log-spaced FMR levels (50 per decade down to 1/N). The last keep `threshold_for`
        # within a few percent of any target FMR: real models' scores crowd into a narrow range (dlib's
        # impostors mostly sit in 0.75–0.95), where one grid step can change the FMR by 10%.
        n = len(impostor)
        tail = impostor[-min(n, 1000) :]
        grid = np.linspace(-1.0, 1.0, points)
        levels = np.logspace(0.0, -np.log10(n), max(2, int(50 * np.log10(n)) + 1))
        quantiles = impostor[np.clip(n - np.ceil(levels * n).astype(np.int64), 0, n - 1)]
        # Rounded before counting, so the stored table is exactly the one the counts describe.
        thresholds = np.unique(np.round(np.concatenate([grid, tail, quantiles, [1.000001]]), 6))
        fmr = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
        fnmr = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
        return cls(
            model_id,
            tuple(float(t) for t in thresholds),
            tuple(float(f) for f in fmr),
            tuple(float(f) for f in fnmr),
            len(genuine),
            len(impostor),
            source,
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=None, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        data = json.loads(Path(path).read_text())
        for key in ("thresholds", "fmr", "fnmr"):
            data[key] = tuple(data[key])
        return cls(**data)


@cache
def shipped_calibration(model_id: str) -> Calibration:
    """The calibration table shipped with faceprint for ``model_id``."""
    name = f"{model_id}.json"
    ref = resources.files("faceprint.models") / "calibration" / name
    if not ref.is_file():
        raise CalibrationMissing(model_id)
    with resources.as_file(ref) as path:
        return Calibration.load(path)


class InvalidThresholdRule(InvalidArgument):
    """The threshold of an identification was asked for in a way that cannot be honoured: more than one of
    ``fmr``/``fpir``/``threshold``, or an ``fpir`` outside (0, 1)."""


def fmr_for_fpir(fpir: float, subjects: int) -> float:
    """The per-comparison FMR that gives a false-positive identification rate ``fpir`` in a gallery of
    ``subjects``: a non-mated probe is compared with every subject, so ``FPIR = 1 - (1 - FMR)^N`` (≈ N·FMR),
    assuming independent comparisons (optimistic when one person resembles several subjects)."""
    if not 0 < fpir < 1:
        raise InvalidThresholdRule(f"fpir must be in (0, 1), got {fpir}")
    return float(-np.expm1(np.log1p(-fpir) / max(1, int(subjects))))


def check_one_rule(*, fmr: float | None, fpir: float | None, threshold: float | None) -> None:
    """At most one of ``fmr``, ``fpir`` and ``threshold`` may be given (none: ``DEFAULT_FMR``)."""
    if sum(v is not None for v in (fmr, fpir, threshold)) > 1:
        raise InvalidThresholdRule("give at most one of fmr, fpir and threshold")


@dataclass(frozen=True)
class ThresholdRule:
    """How an identification threshold was set — the one rule every gallery backend and interface uses.

    An explicit ``threshold`` (``fmr`` and ``fpir`` are ``None``: a raw score), a per-comparison ``fmr``
    (default ``DEFAULT_FMR``), or an ``fpir`` for a gallery of ``subjects`` (then ``fmr`` is the
    per-comparison rate it was turned into, ``FMR = 1 - (1 - FPIR)^(1/N)``).
    """

    threshold: float
    fmr: float | None
    fpir: float | None = None
    subjects: int | None = None

    @classmethod
    def choose(
        cls,
        model_id: str,
        *,
        fmr: float | None = None,
        fpir: float | None = None,
        threshold: float | None = None,
        subjects: int | None = None,
        calibration: Calibration | None = None,
    ) -> ThresholdRule:
        """At most one of ``fmr``/``fpir``/``threshold`` (none: ``DEFAULT_FMR``); ``fpir`` needs ``subjects``.

        ``calibration`` defaults to the table shipped for ``model_id`` (:class:`CalibrationMissing` without one,
        unless an explicit ``threshold`` needs no table).
        """
        check_one_rule(fmr=fmr, fpir=fpir, threshold=threshold)
        if threshold is not None:
            return cls(float(threshold), None)
        table = calibration or shipped_calibration(model_id)
        if fpir is not None:
            if subjects is None:
                raise InvalidThresholdRule("an fpir needs the number of subjects in the gallery")
            per_comparison = fmr_for_fpir(fpir, subjects)
            return cls(table.threshold_for(per_comparison), per_comparison, fpir, subjects)
        target = DEFAULT_FMR if fmr is None else fmr
        return cls(table.threshold_for(target), target)

    def describe(self) -> str:
        """The rule in words, for people: "FMR 1.0e-03", "FPIR 0.01 (FMR 9.5e-05 per comparison, 105 subjects)"
        or "explicit threshold"."""
        if self.fpir is not None:
            assert self.fmr is not None
            size = "" if self.subjects is None else f", {self.subjects} subjects"
            return f"FPIR {self.fpir:g} (FMR {self.fmr:.1e} per comparison{size})"
        if self.fmr is not None:
            return f"FMR {self.fmr:.1e}"
        return "explicit threshold"


def rule_kind(*, fmr: float | None = None, fpir: float | None = None, threshold: float | None = None) -> str:
    """What chose a threshold, as answers state it: ``"threshold"`` (a raw score), ``"fpir"`` or ``"fmr"``
    (also when nothing was given: the default FMR)."""
    return "threshold" if threshold is not None else ("fpir" if fpir is not None else "fmr")


@dataclass(frozen=True)
class Decision:
    """A 1:1 decision. ``rule`` says what chose the threshold: ``"fmr"`` (a target false-match rate),
    ``"fpir"`` (a false-positive identification rate; for one comparison it equals the FMR) or
    ``"threshold"`` (a raw score); ``fmr`` is the calibrated FMR at the threshold (``None``: no table)."""

    same_person: bool
    score: float
    distance: float
    threshold: float
    fmr: float | None  # None: an explicit threshold and no calibration table to rate it
    model: str
    rule: str = "fmr"
    fpir: float | None = None

    def to_dict(self) -> dict:
        return {
            "same_person": self.same_person,
            "score": round(self.score, 6),
            "distance": round(self.distance, 6),
            "threshold": round(self.threshold, 6),
            "rule": self.rule,
            "fmr": self.fmr,
            "fpir": self.fpir,
            "model": self.model,
        }


def check_compatible(a: Faceprint, b: Faceprint) -> None:
    if a.model_id != b.model_id:
        raise IncompatibleFaceprints(
            f"faceprints from different models cannot be compared: {a.model_id!r} vs {b.model_id!r}"
        )
    if a.dim != b.dim:
        raise IncompatibleFaceprints(f"faceprints of different dimension: {a.dim} vs {b.dim}")


def decide(
    a: Faceprint,
    b: Faceprint,
    *,
    fmr: float | None = None,
    fpir: float | None = None,
    threshold: float | None = None,
    calibration: Calibration | None = None,
) -> Decision:
    """Compare two faceprints under the one threshold rule (:class:`ThresholdRule`: at most one of ``fmr``,
    ``fpir`` — one comparison, so it equals an FMR — and ``threshold``; none: FMR 1e-3). ``calibration``
    defaults to the table shipped for the model; with neither, only an explicit threshold works."""
    check_compatible(a, b)
    table = calibration
    if table is None:
        try:
            table = shipped_calibration(a.model_id)
        except CalibrationMissing:
            if threshold is None:
                raise
    rule = ThresholdRule.choose(a.model_id, fmr=fmr, fpir=fpir, threshold=threshold, subjects=1, calibration=table)
    score = float(cosine_scores(a.vector, b.vector)[0, 0])
    return Decision(
        same_person=score >= rule.threshold,
        score=score,
        distance=float(score_to_distance(score)),
        threshold=float(rule.threshold),
        fmr=None if table is None else table.fmr_at(rule.threshold),
        model=a.model_id,
        rule=rule_kind(fmr=fmr, fpir=fpir, threshold=threshold),
        fpir=fpir,
    )
