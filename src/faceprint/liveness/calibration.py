"""Liveness thresholds stated as error rates (ISO/IEC 30107-3 terms).

A table of thresholds with, for each, the APCER (attack presentation classification error rate: attacks
scored at or above the threshold, i.e. passed as live) and the BPCER (bona fide presentation classification
error rate: live faces scored below it, i.e. refused) measured on labelled frames. The default threshold is
the lowest one whose APCER is at most :data:`DEFAULT_APCER`; a table is shipped per model like the
recognition tables (``models/calibration/<model_id>.json``), and ``faceprint calibrate liveness`` makes one
for your own cameras.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from faceprint.errors import FaceprintError, InvalidArgument

#: The attack acceptance rate the default threshold is chosen for.
DEFAULT_APCER = 0.01
#: The threshold used when a model has no table (then APCER/BPCER are unknown and reported as such).
UNCALIBRATED_THRESHOLD = 0.5


class LivenessCalibrationError(FaceprintError):
    """A liveness table cannot be read, belongs to another model, or cannot resolve the APCER asked for."""


@dataclass(frozen=True)
class LivenessCalibration:
    model_id: str
    thresholds: tuple[float, ...]  # ascending
    apcer: tuple[float, ...]  # at each threshold: share of attacks with score >= threshold
    bpcer: tuple[float, ...]  # at each threshold: share of live faces with score < threshold
    bona_fide: int
    attacks: int
    source: str

    @classmethod
    def from_scores(cls, model_id: str, live: np.ndarray, attack: np.ndarray, source: str) -> LivenessCalibration:
        """The table for these scores (P(live) of live and of attack faces): every distinct score is a
        threshold, plus one above all scores (APCER 0)."""
        live = np.sort(np.asarray(live, dtype=np.float64).ravel())
        attack = np.sort(np.asarray(attack, dtype=np.float64).ravel())
        if live.size == 0 or attack.size == 0:
            raise InvalidArgument("a liveness table needs scores of both live and attack faces")
        if not (np.isfinite(live).all() and np.isfinite(attack).all()):
            raise InvalidArgument("liveness scores contain NaN or infinity")
        thresholds = np.unique(np.round(np.concatenate([live, attack, [1.000001]]), 6))
        # counts over sizes (not 1 − a fraction), so a rate of k/n is exactly k/n and compares as such
        apcer = (attack.size - np.searchsorted(attack, thresholds, side="left")) / attack.size
        bpcer = np.searchsorted(live, thresholds, side="left") / live.size
        return cls(
            model_id,
            tuple(float(t) for t in thresholds),
            tuple(float(a) for a in apcer),
            tuple(float(b) for b in bpcer),
            int(live.size),
            int(attack.size),
            source,
        )

    def threshold_for(self, apcer: float = DEFAULT_APCER) -> float:
        """The lowest threshold whose measured APCER is at most ``apcer``."""
        if not 0 <= apcer < 1:
            raise InvalidArgument(f"apcer must be in [0, 1), got {apcer}")
        resolution = 1.0 / self.attacks
        if 0 < apcer < resolution:
            raise LivenessCalibrationError(
                f"the liveness table of {self.model_id} has {self.attacks} attack samples: it cannot resolve an "
                f"APCER below {resolution:.2g} (asked for {apcer:g}); calibrate on more attacks"
            )
        ok = np.flatnonzero(np.asarray(self.apcer) <= apcer)
        return float(self.thresholds[int(ok[0])])

    def default_threshold(self) -> float:
        """The threshold used when none is asked for: the one for :data:`DEFAULT_APCER`, but never below
        :data:`UNCALIBRATED_THRESHOLD`. Why the floor: a table made on one kind of attack (the shipped one:
        printed photos, which score ~0) puts the 1 % point very low (0.05), where attacks it never saw (a screen,
        a mask) would pass; a face is called live only when the model finds it more likely live than not. The
        APCER/BPCER stated with each answer are those measured at the threshold actually used."""
        return max(self.threshold_for(DEFAULT_APCER), UNCALIBRATED_THRESHOLD)

    def rates_at(self, threshold: float) -> tuple[float, float]:
        """(APCER, BPCER) measured at ``threshold`` (the table's nearest threshold at or above it)."""
        i = int(np.searchsorted(np.asarray(self.thresholds), threshold, side="left"))
        i = min(i, len(self.thresholds) - 1)
        return self.apcer[i], self.bpcer[i]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> LivenessCalibration:
        try:
            data = json.loads(Path(path).read_text())
            for key in ("thresholds", "apcer", "bpcer"):
                data[key] = tuple(data[key])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise LivenessCalibrationError(f"liveness table {path}: cannot read it: {exc}") from None


@cache
def shipped_liveness_calibration(model_id: str) -> LivenessCalibration | None:
    """The liveness table shipped for ``model_id``, or ``None``."""
    ref = resources.files("faceprint.models") / "calibration" / f"{model_id}.json"
    if not ref.is_file():
        return None
    with resources.as_file(ref) as path:
        return LivenessCalibration.load(path)
